import os

import torch

# Without a GPU, Triton kernels run in Triton's interpreter on CPU tensors (how
# CI checks them). This must be set before rtrick_ops imports Triton.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
