"""One declaration per registered operator, and everything that follows from it.

Each family module declares its operators beside their math, with `declare`:
the tensor arguments in schema order, whether rng_state follows them, the
shape rule of every output, whether a Triton twin exists, the reference
function, and the Python autograd. From that one entry come

  - routing (`Operator.prepare`): the backend a call runs on, refused where the
    operator has no kernels, the callable for it, the promoted tensors and the key;
  - the fake (meta) kernel of the C++ operator: the operators' input checks and
    the outputs' shapes, for torch.compile, FakeTensor and opcheck;
  - the autograd registrations. The C++ library's forward operators have theirs
    in C++ (csrc/autograd.cpp; docs/adding_an_op.md, "Where autograd lives"),
    with the same formulas as the declared one, so the declared autograd is
    registered for the Triton twin of a forward operator, and for both variants
    of a backward operator (their double backward).

The argument checks of the public signatures stay in the wrappers, since they
differ per signature (scale choices, positivity, dims); the tensor checks they
all share are `_checks.check_params`. tests/test_kinds.py checks that the
declarations and csrc/ops.cpp's schemas agree one to one, and that every Triton
twin is declared.
"""
from dataclasses import dataclass, field
from typing import Callable, Optional, Tuple

import torch

from . import _library
from ._backends import implementation, resolve_backend
from ._checks import check_op_inputs
from ._random import make_rng_state

SAMPLE_AND_BATCH = "sample+batch"  # sample_shape + the tensors' broadcast shape
BATCH = "batch"                    # the tensors' broadcast shape
NOISE = "noise"                    # SAMPLE_AND_BATCH in float32: the noise a call used
# Any other output rule names the tensor argument whose shape and dtype the output has.

OPERATORS = {}  # name -> Operator, in declaration order


class Variant:
    """The operators of one implementation, by base name: "" for C++, "_triton" for the Triton twins."""

    def __init__(self, suffix):
        self.suffix = suffix

    def __getattr__(self, name):
        return getattr(torch.ops.rtrick_ops, name + self.suffix)


@dataclass(frozen=True)
class Operator:
    name: str
    tensors: Tuple[str, ...]
    outputs: Tuple[str, ...]
    keyed: bool
    triton: bool
    reference: Optional[str]
    autograd: Optional[Callable]
    check: Optional[Callable]
    _callables: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def is_backward(self):
        return self.name.endswith("_backward")

    @property
    def sampled(self):
        return SAMPLE_AND_BATCH in self.outputs

    def refuse_missing_kernels(self, backend):
        """A backend this operator has no kernels for, refused where it is chosen: here, and in the drop-in
        classes' constructors (which would otherwise keep it and raise at the first rsample)."""
        if backend == "triton" and not self.triton:
            raise ValueError(f"backend='triton': {self.name} has no Triton kernels; use backend='auto', 'cpu', "
                             "'cuda' or 'reference'")

    def route(self, backend, device):
        """The resolved backend for tensors on `device`; a clear error where this operator has no kernels."""
        self.refuse_missing_kernels(backend)
        which = resolve_backend(backend, device)
        if which == "triton" and not self.triton:  # auto on a CUDA tensor with a CPU-only build
            raise RuntimeError(f"{self.name} has no Triton kernels and rtrick_ops._C was built without CUDA; "
                               "use backend='reference' for CUDA tensors, or rebuild with CUDA")
        return which

    def implementation(self, which):
        """The callable that runs this operator on the resolved backend `which` (looked up once per backend:
        the lookup through torch.ops costs a microsecond, as much as the rest of a small call's routing)."""
        if which != "reference" and torch.compiler.is_compiling():
            # not through the cache: a trace that reads or fills it guards on its contents, so a model compiled
            # before any eager call compiled again on its second call (the reference's lookup imports a module,
            # which dynamo refuses to trace: it keeps the cache an eager call fills)
            return implementation(self.name, which, self.reference)
        run = self._callables.get(which)
        if run is None:
            run = self._callables[which] = implementation(self.name, which, self.reference)
        return run

    def prepare(self, backend, tensors, seed=None, generator=None):
        """A checked call's routing: (the callable, the tensors in their promoted dtype, rng_state or None).

        The tensors are the public wrapper's, already checked (check_params): one
        device, broadcastable. rng_state comes from seed or generator for a keyed
        operator, on the tensors' device.
        """
        first = tensors[0]
        device = first.device
        run = self.implementation(self.route(backend, device))
        dtype = first.dtype
        for t in tensors:
            if t.dtype != dtype:  # .to() costs a dispatch even when it returns its input: only where mixed
                for u in tensors:
                    dtype = torch.promote_types(dtype, u.dtype)
                tensors = tuple(u.to(dtype) for u in tensors)
                break
        return run, tensors, (make_rng_state(seed, generator, device) if self.keyed else None)


def _fake_kernel(op):
    """The meta kernel of `op` from its declaration: the operators' checks, then empty outputs by shape rule."""
    count = len(op.tensors)

    def fake(*args):
        named = dict(zip(op.tensors, args[:count]))
        check_op_inputs(args[count] if op.keyed else None, **named)
        if op.check is not None:
            op.check(*args)
        first = args[0]
        outputs = []
        for rule in op.outputs:
            if rule in (SAMPLE_AND_BATCH, BATCH, NOISE):
                batch = list(torch.broadcast_shapes(*(t.shape for t in named.values())))
                shape = batch if rule == BATCH else list(args[-1]) + batch
                outputs.append(first.new_empty(shape, dtype=torch.float32 if rule == NOISE else first.dtype))
            else:
                outputs.append(named[rule].new_empty(named[rule].shape))
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    fake.__name__ = f"{op.name}_fake"
    return fake


def declare(name, tensors, outputs, *, keyed=True, triton=False, reference=None, autograd=None, check=None):
    """Declare the registered operator `name` (a schema of csrc/ops.cpp) and register what follows from it.

    tensors: the tensor arguments before rng_state (or all of them), in schema order.
    outputs: one shape rule per output: SAMPLE_AND_BATCH, BATCH, NOISE, or a tensor argument's name.
    keyed: rng_state follows the tensors. triton: a Triton twin `name + "_triton"` exists (kernels/).
    reference: the function of rtrick_ops.reference that computes it, if not `name`.
    autograd: variant -> (backward, setup_context), the formulas of torch.library.register_autograd;
        `variant` gives that implementation's operators by base name (Variant).
    check: extra argument checks of the fake kernel, called with the operator's arguments.
    """
    if name in OPERATORS:
        raise RuntimeError(f"rtrick_ops::{name} is declared twice")
    op = Operator(name, tuple(tensors), tuple(outputs), keyed, triton, reference, autograd, check)
    OPERATORS[name] = op
    if _library.compiled is not None:
        torch.library.register_fake(f"rtrick_ops::{name}")(_fake_kernel(op))
        if autograd is not None and op.is_backward:
            backward, setup_context = autograd(Variant(""))
            torch.library.register_autograd(f"rtrick_ops::{name}", backward, setup_context=setup_context)
    if triton and autograd is not None and _library.triton_kernels is not None:  # triton_op derives the fakes
        backward, setup_context = autograd(Variant("_triton"))
        torch.library.register_autograd(f"rtrick_ops::{name}_triton", backward, setup_context=setup_context)
    return op
