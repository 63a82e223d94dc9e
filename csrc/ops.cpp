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
  // ---------------------------------------------------------------- Gaussian
  // z = mu + sigma(scale_param) * eps, shape sample_shape + broadcast(mu, scale_param).
  m.def(
      "normal_rsample(Tensor mu, Tensor scale_param, Tensor rng_state, str scale, "
      "SymInt[] sample_shape) -> Tensor");
  // d loss / d scale_param = sigma'(scale_param) * (sum over broadcast dims of grad_z * eps),
  // with eps regenerated from rng_state; the result has scale_param's shape.
  m.def(
      "normal_rsample_backward(Tensor grad_z, Tensor scale_param, Tensor rng_state, str scale) "
      "-> Tensor");

  // ------------------------------------------- location-scale and inverse-CDF
  // z = loc + sigma(scale_param) * g(u), g the family's noise transform
  // (family: normal, uniform, exponential, laplace, cauchy, logistic, gumbel),
  // or z = exp(loc + sigma(scale_param) * eps) for family lognormal. scale
  // adds "rate" (sigma = 1 / x) to normal_rsample's four.
  m.def(
      "loc_scale_rsample(Tensor loc, Tensor scale_param, Tensor rng_state, str family, str scale, "
      "SymInt[] sample_shape) -> Tensor");
  // sigma'(scale_param) * (sum over broadcast dims of grad * g(u)). For
  // lognormal, grad is the gradient with respect to log z (grad_z * z).
  m.def(
      "loc_scale_rsample_backward(Tensor grad, Tensor scale_param, Tensor rng_state, str family, str scale) "
      "-> Tensor");
  // Concrete / relaxed Bernoulli: sigmoid((logits + logistic noise) / tau).
  m.def("relaxed_bernoulli_rsample(Tensor logits, Tensor rng_state, float tau, SymInt[] sample_shape) -> Tensor");

  // -------------------------------------------------------- VAE loss helpers
  // Elementwise KL(N(mu, sigma^2) || N(0, 1)) and its fused backward (grad_mu, grad_scale_param),
  // both at broadcast(mu, scale_param)'s shape.
  m.def("normal_kl(Tensor mu, Tensor scale_param, str scale) -> Tensor");
  m.def("normal_kl_backward(Tensor grad_kl, Tensor mu, Tensor scale_param, str scale) -> (Tensor, Tensor)");
  // (z, kl) in one pass; kl has the batch shape broadcast(mu, scale_param).
  m.def(
      "normal_rsample_and_kl(Tensor mu, Tensor scale_param, Tensor rng_state, str scale, "
      "SymInt[] sample_shape) -> (Tensor, Tensor)");
  // Its backward, (grad_mu, grad_scale_param) of mu's and scale_param's shapes: normal_kl_backward's
  // plus the sample's (grad_z summed to mu's shape, normal_rsample_backward), in one pass where
  // nothing is broadcast. grad_z has z's shape, grad_kl kl's.
  m.def(
      "normal_rsample_and_kl_backward(Tensor grad_z, Tensor grad_kl, Tensor mu, Tensor scale_param, "
      "Tensor rng_state, str scale) -> (Tensor, Tensor)");
  // (z, log N(z; mu, sigma^2)) with log_q from eps in the same pass; both of z's shape.
  m.def(
      "normal_rsample_and_log_prob(Tensor mu, Tensor scale_param, Tensor rng_state, str scale, "
      "SymInt[] sample_shape) -> (Tensor, Tensor)");

  // ------------------------ the noise kept, and broadcast backwards (CPU kernels only)
  // What the C++ autograd calls for small CPU calls (docs/operators.md, "Saved noise"): the
  // forwards above that also return the float32 noise they used (z's shape), and the backwards
  // above with that noise (grad_z's shape) read instead of regenerated. The same bits as the
  // regenerating operators.
  m.def(
      "_normal_rsample_keeping_noise(Tensor mu, Tensor scale_param, Tensor rng_state, str scale, "
      "SymInt[] sample_shape) -> (Tensor, Tensor)");
  m.def(
      "_normal_rsample_and_kl_keeping_noise(Tensor mu, Tensor scale_param, Tensor rng_state, str scale, "
      "SymInt[] sample_shape) -> (Tensor, Tensor, Tensor)");
  m.def(
      "_normal_rsample_and_log_prob_keeping_noise(Tensor mu, Tensor scale_param, Tensor rng_state, str scale, "
      "SymInt[] sample_shape) -> (Tensor, Tensor, Tensor)");
  m.def("_normal_rsample_from_noise_backward(Tensor grad_z, Tensor scale_param, Tensor noise, str scale) -> Tensor");
  m.def(
      "_normal_rsample_and_kl_from_noise_backward(Tensor grad_z, Tensor grad_kl, Tensor mu, Tensor scale_param, "
      "Tensor noise, str scale) -> (Tensor, Tensor)");
  // Both gradients of a sample broadcast from a location and a scale parameter of one shape (sample
  // dimensions), from one pass over grad: (grad_loc, grad_scale_param) = (sum of grad,
  // loc_scale_rsample_backward's value) over the broadcast dimensions, both of scale_param's shape.
  // What the C++ autograd calls for such CPU calls (CPU kernels only).
  m.def(
      "_loc_scale_broadcast_backward(Tensor grad, Tensor scale_param, Tensor rng_state, str family, str scale) "
      "-> (Tensor, Tensor)");
  // ... for the normal family, with the noise a noise-keeping forward returned (grad_z's shape).
  m.def(
      "_normal_broadcast_from_noise_backward(Tensor grad_z, Tensor scale_param, Tensor noise, str scale) "
      "-> (Tensor, Tensor)");

  // ---------------------------------------------------------- Gumbel-Softmax
  // softmax((logits + gumbel noise) / tau) along dim (of logits; sample dims lead),
  // one-hot of its argmax when hard.
  m.def(
      "gumbel_softmax(Tensor logits, Tensor rng_state, float tau, bool hard, int dim, "
      "SymInt[] sample_shape) -> Tensor");
  // d loss / d logits of the soft sample y: y * (grad_y - sum(grad_y * y, dim)) / tau,
  // summed over the sample dims.
  // From the soft sample regenerated from rng_state (hard samples, half types) ...
  m.def(
      "gumbel_softmax_backward(Tensor grad_y, Tensor logits, Tensor rng_state, float tau, int dim) "
      "-> Tensor");
  // ... or from the soft sample y the forward returned (float32 and float64 soft samples): the same bits.
  m.def(
      "gumbel_softmax_sample_backward(Tensor grad_y, Tensor y, Tensor logits, float tau, int dim) "
      "-> Tensor");

  // ------------------------------------- implicit reparameterization (Gamma)
  // Gamma(concentration, 1) by Marsaglia-Tsang in the kernel; shape sample_shape + concentration.
  m.def("gamma_rsample(Tensor concentration, Tensor rng_state, SymInt[] sample_shape) -> Tensor");
  // grad_z * dz/d(alpha), dz/d(alpha) = -(dF/d(alpha)) / p(z), summed to concentration's shape.
  m.def("gamma_rsample_backward(Tensor grad_z, Tensor concentration, Tensor z) -> Tensor");
  // Beta(a, b) from two Gammas; shape sample_shape + broadcast(a, b).
  m.def("beta_rsample(Tensor a, Tensor b, Tensor rng_state, SymInt[] sample_shape) -> Tensor");
  // (grad_a, grad_b) by implicit differentiation of the Beta CDF, summed to a's and b's shapes.
  m.def("beta_rsample_backward(Tensor grad_z, Tensor a, Tensor b, Tensor z) -> (Tensor, Tensor)");
  // Dirichlet(concentration) over the last dim; shape sample_shape + concentration.
  m.def("dirichlet_rsample(Tensor concentration, Tensor rng_state, SymInt[] sample_shape) -> Tensor");
  m.def("dirichlet_rsample_backward(Tensor grad_z, Tensor concentration, Tensor z) -> Tensor");
}
