// Every operator of rtrick_ops, in one place. Backends only implement them
// (cpu/*.cpp with TORCH_LIBRARY_IMPL(rtrick_ops, CPU, m), cuda/*.cu likewise);
// fake kernels are registered from Python (rtrick_ops/normal.py), autograd in
// csrc/autograd.cpp (forward) and rtrick_ops/normal.py (double backward).
//
// rng_state is an int64 tensor [key, offset] on the inputs' device: the
// stream's 64-bit key and counter offset (docs/stream.md). Keeping it in a
// tensor lets a GPU read it on the device, so captured graphs draw fresh keys.
#include <torch/library.h>

TORCH_LIBRARY(rtrick_ops, m) {
  // z = mu + sigma(scale_param) * eps, shape sample_shape + broadcast(mu, scale_param).
  m.def(
      "normal_rsample(Tensor mu, Tensor scale_param, Tensor rng_state, str scale, "
      "SymInt[] sample_shape) -> Tensor");
  // d loss / d scale_param = sigma'(scale_param) * (sum over broadcast dims of grad_z * eps),
  // with eps regenerated from rng_state; the result has scale_param's shape.
  m.def(
      "normal_rsample_backward(Tensor grad_z, Tensor scale_param, Tensor rng_state, str scale) "
      "-> Tensor");
}
