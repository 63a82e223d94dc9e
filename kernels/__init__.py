"""Triton kernels of rtrick_ops, installed as the subpackage rtrick_ops.kernels."""
from rtrick_ops._library import triton_interpreted  # defined before _library imports these modules


def launchable(kernel):
    """The kernel as a launcher calls it: wrap_triton(kernel), so that torch.compile traces the launch; the
    kernel itself under Triton's interpreter (TRITON_INTERPRET=1, read when the kernel is decorated), where
    there is nothing to trace and torch before 2.13 refuses to wrap it."""
    if triton_interpreted():
        return kernel
    from torch.library import wrap_triton  # here, not at the top: kernels.stream alone needs no torch.library

    return wrap_triton(kernel)
