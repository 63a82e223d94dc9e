"""Which implementation runs a call: backend='auto' | 'cpu' | 'cuda' | 'triton' | 'reference'."""
import warnings

from . import _library

BACKENDS = ("auto", "cpu", "cuda", "triton", "reference")


def resolve_backend(backend, device):
    """The concrete backend for tensors on `device`, or a clear error."""
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not a valid backend; valid: {', '.join(map(repr, BACKENDS))}")
    kind = device.type
    if backend == "reference":
        return "reference"
    if backend == "auto":
        if kind == "cpu":
            if _library.compiled is not None:
                return "cpu"
            warnings.warn("rtrick_ops._C is not built, so backend='auto' runs the slow reference backend. "
                          + _library.BUILD_HINT, RuntimeWarning, stacklevel=3)
            return "reference"
        raise NotImplementedError(f"rtrick_ops has no kernels for {kind} tensors yet; use backend='reference'")
    if backend == "cpu":
        if kind != "cpu":
            raise ValueError(f"backend='cpu' needs CPU tensors, but the inputs are on {device}")
        _library.require_compiled("backend='cpu'")
        return "cpu"
    raise NotImplementedError(
        f"backend={backend!r} is not available in this version of rtrick_ops; available: 'auto', 'cpu', 'reference'")
