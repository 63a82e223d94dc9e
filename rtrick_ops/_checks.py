"""Argument checks shared by the public wrappers; each error names the argument.

A leaf of the package (it imports only kinds): the Triton operators in kernels/
import it, and _library, which imports kernels/, hands it the compiled helper.
"""
import math
import numbers
import operator

import torch
from torch._subclasses.fake_tensor import FakeTensor

from .kinds import POSITIVE_SCALES

# What the C++ fast calls take (csrc/module.cpp: gaussian_fast, loc_scale_fast, gumbel_softmax_fast): plain
# tensors, a sample_shape that is a tuple or a torch.Size (what the distribution classes pass), outside
# torch.compile. is_compiling is bound once: two attribute lookups are a tenth of a fast call.
PLAIN_TENSORS = (torch.Tensor, torch.nn.Parameter)
PLAIN_SHAPES = (tuple, torch.Size)
is_compiling = torch.compiler.is_compiling

# The scale-domain check in C++ (csrc/module.cpp): one pass over a float32/float64 CPU tensor that is
# contiguous, expanded from one, or in rows of at least 4 values (a chunk() view), without allocating:
# about 0.2 us instead of three torch ops and a sync (5-10 us). None without _C.
_scale_domain_violated = None
# torch.distributions' constraints `real` and `positive` checked the same way (the drop-in classes'
# parameter validation): True, False, or None where the tensor is not one it reads. None without _C.
constraint_violated = None
# Uniform's two constraints, low < high everywhere, in one pass over two such tensors of one shape.
order_violated = None
_CUDA_BUILD = torch.version.cuda is not None or torch.version.hip is not None

FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
HALF_DTYPES = FLOAT_DTYPES[2:]  # computed in float32 by every kernel


def use_compiled(compiled):
    """Take the compiled checks from rtrick_ops._C (called by _library once it has loaded and verified _C)."""
    global _scale_domain_violated, constraint_violated, order_violated
    _scale_domain_violated = getattr(compiled, "scale_domain_violated", None)
    constraint_violated = getattr(compiled, "constraint_violated", None)
    order_violated = getattr(compiled, "order_violated", None)


def check_param(value, name):
    """A dense floating-point tensor."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, float64, float16 or bfloat16, got {value.dtype}")
    # Sparse, MKL-DNN and nested tensors reached the dispatcher or torch internals, whose errors name no argument
    # (a nested one's asks the user to file an issue with torch).
    if value.layout != torch.strided or value.is_nested:
        got = "a nested tensor" if value.is_nested else value.layout
        raise TypeError(f"{name} must be a dense (strided) tensor, got {got}")


def check_same_device(**tensors):
    (first_name, first), *rest = tensors.items()
    for name, t in rest:
        if t.device != first.device:
            raise ValueError(f"{first_name} is on {first.device} but {name} is on {t.device}")


def check_rng_state(rng_state, like):
    """rng_state as every operator reads it: an int64 tensor [key, offset] of shape [2] on `like`'s device.

    The Python twin of check_rng_state in csrc/family_common.h: the fake (meta)
    kernels and the Triton operators run this one, the C++ kernels that one, so
    a meta or misshapen state is refused on every path instead of returning
    uninitialised memory."""
    if not isinstance(rng_state, torch.Tensor):
        raise TypeError(f"rng_state must be a torch.Tensor, got {type(rng_state).__name__}")
    if rng_state.dtype != torch.int64 or rng_state.dim() != 1 or rng_state.shape[0] != 2:
        raise ValueError(f"rng_state must be an int64 tensor [key, offset] of shape [2], got {rng_state.dtype} "
                         f"of shape {tuple(rng_state.shape)}")
    if rng_state.device != like.device:
        raise ValueError(f"rng_state is on {rng_state.device} but the inputs are on {like.device}")


def check_op_inputs(rng_state, **tensors):
    """A registered operator's tensor arguments: all on one device, and rng_state (None for
    the operators without one) valid for that device. Called by every fake kernel and
    Triton operator; the wrappers run check_same_device on their parameters and build
    rng_state on the parameters' device themselves (make_rng_state)."""
    check_same_device(**tensors)
    if rng_state is not None:
        check_rng_state(rng_state, next(iter(tensors.values())))


def check_rsample_and_kl_grads(grad_z, grad_kl, mu, scale_param, *_):
    """normal_rsample_and_kl_backward's gradients: grad_kl of kl's shape (the batch shape), grad_z of z's
    (sample_shape + the batch shape), as the C++ operator checks them."""
    batch = torch.broadcast_shapes(mu.shape, scale_param.shape)
    if grad_kl.shape != batch:
        raise ValueError(f"grad_kl must have shape {tuple(batch)}, got {tuple(grad_kl.shape)}")
    if grad_z.dim() < len(batch) or grad_z.shape[grad_z.dim() - len(batch):] != batch:
        raise ValueError(f"grad_z must have shape sample_shape + {tuple(batch)} (z's shape), got {tuple(grad_z.shape)}")


def _broadcast_int_shapes(shapes):
    """torch.broadcast_shapes of shapes whose sizes are plain ints, in a few Python steps: torch's takes about
    6 us, as long as a small kernel, and a 0-d parameter (a Python-number scale, HalfNormal's location) made
    every such call pay it. None where the shapes do not broadcast."""
    ndim = max(len(shape) for shape in shapes)
    out = [1] * ndim
    for shape in shapes:
        skip = ndim - len(shape)
        for i, size in enumerate(shape, skip):
            if size != out[i] and size != 1:
                if out[i] != 1:
                    return None
                out[i] = size
    return torch.Size(out)


def check_broadcast(**tensors):
    """The tensors' shapes broadcast; returns the broadcast shape."""
    shapes = [t.shape for t in tensors.values()]
    if all(s == shapes[0] for s in shapes):
        return shapes[0]
    if is_compiling():  # symbolic sizes: torch's rule guards on them as dynamo expects
        try:
            return torch.broadcast_shapes(*shapes)
        except RuntimeError:
            broadcast = None
    else:
        broadcast = _broadcast_int_shapes(shapes)
    if broadcast is None:
        described = " and ".join(f"{name} of shape {tuple(t.shape)}" for name, t in tensors.items())
        raise ValueError(f"{described} do not broadcast")
    return broadcast


def check_params(**tensors):
    """A public wrapper's tensor parameters: floating-point tensors on one device whose shapes
    broadcast. Returns the broadcast shape."""
    for name, value in tensors.items():
        check_param(value, name)
    first, *rest = tensors.values()
    shape, device = first.shape, first.device
    same_shape = True
    for t in rest:  # the common case in one loop; the checks below name the argument where it differs
        if t.device != device:
            check_same_device(**tensors)
        same_shape = same_shape and t.shape == shape
    return shape if same_shape else check_broadcast(**tensors)


def check_sample_shape(sample_shape):
    """A tuple of non-negative ints (an int is a 1-d sample_shape)."""
    if isinstance(sample_shape, numbers.Integral) and not isinstance(sample_shape, bool):
        sample_shape = (operator.index(sample_shape),)
    try:
        sizes = tuple(sample_shape)
    except TypeError:
        raise TypeError(f"sample_shape must be a sequence of ints, got {type(sample_shape).__name__}") from None
    checked = []
    for size in sizes:
        if isinstance(size, bool) or not isinstance(size, (numbers.Integral, torch.SymInt)):
            raise TypeError(f"sample_shape must be a sequence of ints, got {sample_shape!r}")
        size = size if isinstance(size, torch.SymInt) else operator.index(size)  # NumPy integers, as torch accepts
        if size < 0:
            raise ValueError(f"sample_shape must not contain negative sizes, got {sample_shape!r}")
        if not isinstance(size, torch.SymInt) and size >= 2**63:  # torch's schema would say the tuple has a wrong type
            raise ValueError(f"sample_shape's sizes must be less than 2**63, got {sample_shape!r}")
        checked.append(size)
    return tuple(checked)


def check_choice(value, name, choices):
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not valid; valid: {', '.join(map(repr, choices))}")


def check_bool(value, name):
    """value if it is a bool (NumPy's too, as bool); a TypeError naming the argument otherwise (bool() of the
    string 'no' is True)."""
    if isinstance(value, bool):
        return value
    kind = type(value)
    if kind.__module__ == "numpy" and kind.__name__ in ("bool", "bool_"):  # numpy.bool_ (named bool in NumPy 2)
        return bool(value)
    raise TypeError(f"{name} must be a bool, got {kind.__name__}")


def check_count(value, name, minimum=1):
    """value as an int (NumPy integers too) if it is one >= minimum; a TypeError (not an int, as for every other
    argument's type) or ValueError (below minimum) naming the argument otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int >= {minimum}, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return operator.index(value)


def check_real(value, name, finite=True):
    """value as a float if it is a real number (NumPy scalars too; not a bool), finite unless finite=False;
    a TypeError or ValueError naming the argument otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if finite and not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def check_seed(seed):
    """seed as an int in [0, 2**64) (NumPy integers too, as torch.manual_seed takes them), or None."""
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an int in [0, 2**64) or None, got {type(seed).__name__}")
    seed = operator.index(seed)
    if not 0 <= seed < 2**64:
        raise ValueError(f"seed must be in [0, 2**64), got {seed}")
    return seed


def check_tau(tau):
    """A positive finite temperature, as a Python float (NumPy scalars and one-element tensors accepted; under
    torch.compile the number as traced, checked when the graph runs).

    A tensor that requires grad is refused rather than silently detached: the
    fused ops do not differentiate in tau (rt.distributions' relaxed classes take
    a trainable temperature through torch ops)."""
    if isinstance(tau, torch.Tensor):
        if tau.requires_grad:
            raise ValueError("tau requires grad, but the fused samplers do not differentiate in tau; pass "
                             "tau.detach() (or use rt.distributions.RelaxedBernoulli / RelaxedOneHotCategorical, "
                             "which differentiate a trainable temperature through torch ops)")
        if tau.numel() != 1:
            raise ValueError(f"tau must be a number or a one-element tensor, got shape {tuple(tau.shape)}")
        if tau.device.type == "meta":
            raise ValueError("tau is a meta tensor, which has no value; pass a number")
        if is_compiling():
            raise TypeError("under torch.compile pass tau as a Python number: the fused samplers take the "
                            "temperature as a number, and a tensor's value (tau.item()) cannot be traced")
        tau = tau.item()
    if isinstance(tau, bool) or not isinstance(tau, numbers.Real):
        raise TypeError(f"tau must be a positive float, got {type(tau).__name__}")
    if is_compiling():
        # torch.compile traces a changed float as a symbol, and math.isfinite of one breaks the graph: the same
        # check, asserted when the graph runs (the operators take tau as a number, so each value is a graph).
        # A float dynamo specialized (every float before torch 2.12) compares to a plain bool, which torch
        # 2.11's dynamo cannot pass to torch._check_value: that case is checked here, as in eager.
        for holds in (tau > 0, tau < math.inf):
            if isinstance(holds, bool):
                if not holds:
                    raise ValueError(f"tau must be a positive finite temperature, got {tau}")
            else:
                torch._check_value(holds, lambda: "tau must be a positive finite temperature")
        return tau
    if not (tau > 0 and math.isfinite(tau)):
        raise ValueError(f"tau must be a positive finite temperature, got {tau}")
    return float(tau)


def fast_call_may_try(sample_shape, generator, backend, first, second=None):
    """Whether a C++ fast call (csrc/module.cpp) may try: plain tensors (first, and second unless None), a
    sample_shape that is a tuple or a torch.Size, no generator, the default backend, outside torch.compile.
    The call declines the rest itself (and the Python path then raises with its messages). One expression,
    with is_compiling() last: this runs on every call, and a loop over *tensors cost 60 ns of a 2.2 us
    one-element call."""
    return (generator is None and backend == "auto" and type(sample_shape) in PLAIN_SHAPES
            and type(first) in PLAIN_TENSORS and (second is None or type(second) in PLAIN_TENSORS)
            and not is_compiling())


def validating(validate_args):
    """Whether validate_args asks for value checks: None follows torch.distributions' global default, as
    torch's classes do. Otherwise a bool, as every other flag (bool('no') is True: a user trial's
    validate_args='no' validated)."""
    if validate_args is None:
        return torch.distributions.Distribution._validate_args
    if validate_args is True or validate_args is False:
        return validate_args
    return check_bool(validate_args, "validate_args")


def holds_values(tensor):
    """False for meta and fake tensors (FakeTensorMode): they carry a shape and no values to check."""
    return tensor.device.type != "meta" and not isinstance(unwrapped(tensor), FakeTensor)


def validation_enabled(validate_args, *values):
    """Whether to check parameter values (a device sync): validate_args=None follows
    torch.distributions.Distribution's global default, as torch's classes do. Never while
    torch.compile traces or a CUDA graph is being captured, where a sync cannot happen, nor
    for meta and fake tensors (FakeTensorMode), which have no values (the output is one too)."""
    # Cheapest test first: most calls stop at the first.
    if not validating(validate_args):
        return False
    if torch.compiler.is_compiling():  # before unwrapped(), whose functorch calls dynamo refuses to trace
        return False
    if not all(holds_values(v) for v in values):
        return False
    if _CUDA_BUILD and torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
        return False
    return True


def unwrapped(tensor):
    """The tensor under vmap's and torch.func.grad's wrappers, which holds every batch member's values:
    bool() of a wrapped tensor is data-dependent control flow to functorch, and raises. Not under
    functionalize's, whose inner tensor may predate an in-place update (bool() works there)."""
    while _is_batched(tensor) or _is_grad_tracking(tensor):
        tensor = _functorch_unwrap(tensor)
    return tensor


_is_batched = torch._C._functorch.is_batchedtensor
_is_grad_tracking = torch._C._functorch.is_gradtrackingtensor
_functorch_unwrap = torch._C._functorch.get_unwrapped


def check_positive(value, name, validate_args):
    """value > 0 or NaN everywhere, when argument validation is on (a device sync, as in torch.distributions).

    NaN is not an error: it propagates to the result (docs/usage.md, value policy)."""
    if validation_enabled(validate_args, value) and value.numel() > 0:
        if _scale_domain_violated is not None and _scale_domain_violated(value, True) is False:
            return  # checked in C++ (None: not a tensor it checks; True: the torch ops below find the value)
        value = unwrapped(value)
        bad = value <= 0
        if bool(bad.any()):
            raise ValueError(f"{name} must be positive everywhere, got {value[bad].min().item()}")


def check_scale_param(value, name, scale, validate_args):
    """value inside the domain of its scale transform, when validation is on (one pass, a device sync):
    sigma > 0 for "sigma" and "rate"; above -inf for "log_sigma", "logvar", "softplus" (-inf gives sigma = 0).
    NaN is not an error: it propagates. A finite value whose sigma underflows to 0 is in the domain."""
    if not validation_enabled(validate_args, value) or value.numel() == 0:
        return
    if _scale_domain_violated is not None and _scale_domain_violated(value, scale in POSITIVE_SCALES) is False:
        return  # checked in C++ (None: not a tensor it checks; True: the torch ops below find the value)
    value = unwrapped(value)
    if scale in POSITIVE_SCALES:
        bad = value <= 0
        if bool(bad.any()):
            raise ValueError(f"{name} must be positive everywhere under scale={scale!r}, got "
                             f"{value[bad].min().item()}")
    elif bool((value == -math.inf).any()):
        raise ValueError(f"{name} must be above -inf under scale={scale!r} (it would give sigma = 0), got -inf")
