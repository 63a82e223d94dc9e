// Typed dispatcher handles of the operators that C++ calls itself (the C++
// autograd in autograd.cpp, the fast call in module.cpp): one lookup, one
// signature per operator, found once on first use.
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>

#include <tuple>

namespace rtrick {
namespace ops {

using SampleSig = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, c10::string_view,
                             c10::SymIntArrayRef);
using SampleKlSig = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                       c10::string_view, c10::SymIntArrayRef);
using ScaleBackwardSig = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, c10::string_view);
using KlBackwardSig = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                         c10::string_view);
using SampleKlBackwardSig = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                               const at::Tensor&, const at::Tensor&, c10::string_view);
using SampleTwoKeepingNoiseSig = std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                                const at::Tensor&, c10::string_view,
                                                                                c10::SymIntArrayRef);
using BroadcastBackwardSig = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                                c10::string_view, c10::string_view);
using BroadcastFromNoiseBackwardSig = KlBackwardSig;  // (grad_z, scale_param, noise, scale)
using NormalKlSig = at::Tensor(const at::Tensor&, const at::Tensor&, c10::string_view);
using LocScaleSig = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, c10::string_view,
                               c10::string_view, c10::SymIntArrayRef);
using LocScaleBackwardSig = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, c10::string_view,
                                       c10::string_view);
using RelaxedSig = at::Tensor(const at::Tensor&, const at::Tensor&, double, c10::SymIntArrayRef);
using OneParamSig = at::Tensor(const at::Tensor&, const at::Tensor&, c10::SymIntArrayRef);  // Gamma, Dirichlet
using OneParamBackwardSig = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&);
using BetaSig = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, c10::SymIntArrayRef);
using BetaBackwardSig = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                           const at::Tensor&);
using GumbelSig = at::Tensor(const at::Tensor&, const at::Tensor&, double, bool, int64_t, c10::SymIntArrayRef);
using GumbelBackwardSig = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, double, int64_t);

template <typename Signature>
c10::TypedOperatorHandle<Signature> find(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

#define RT_OP_HANDLE(function, Signature, name)                       \
  inline const c10::TypedOperatorHandle<Signature>& function() {      \
    static const auto handle = find<Signature>("rtrick_ops::" name); \
    return handle;                                                    \
  }
RT_OP_HANDLE(normal_rsample, SampleSig, "normal_rsample")
RT_OP_HANDLE(normal_rsample_and_kl, SampleKlSig, "normal_rsample_and_kl")
RT_OP_HANDLE(normal_rsample_backward, ScaleBackwardSig, "normal_rsample_backward")
RT_OP_HANDLE(normal_kl_backward, KlBackwardSig, "normal_kl_backward")
RT_OP_HANDLE(normal_rsample_and_kl_backward, SampleKlBackwardSig, "normal_rsample_and_kl_backward")
RT_OP_HANDLE(normal_rsample_and_log_prob, SampleKlSig, "normal_rsample_and_log_prob")
RT_OP_HANDLE(normal_kl, NormalKlSig, "normal_kl")
RT_OP_HANDLE(normal_rsample_keeping_noise, SampleKlSig, "_normal_rsample_keeping_noise")
RT_OP_HANDLE(normal_rsample_and_kl_keeping_noise, SampleTwoKeepingNoiseSig, "_normal_rsample_and_kl_keeping_noise")
RT_OP_HANDLE(normal_rsample_and_log_prob_keeping_noise, SampleTwoKeepingNoiseSig,
             "_normal_rsample_and_log_prob_keeping_noise")
RT_OP_HANDLE(normal_rsample_from_noise_backward, ScaleBackwardSig, "_normal_rsample_from_noise_backward")
RT_OP_HANDLE(normal_rsample_and_kl_from_noise_backward, SampleKlBackwardSig,
             "_normal_rsample_and_kl_from_noise_backward")
RT_OP_HANDLE(loc_scale_broadcast_backward, BroadcastBackwardSig, "_loc_scale_broadcast_backward")
RT_OP_HANDLE(normal_broadcast_from_noise_backward, BroadcastFromNoiseBackwardSig,
             "_normal_broadcast_from_noise_backward")
RT_OP_HANDLE(loc_scale_rsample, LocScaleSig, "loc_scale_rsample")
RT_OP_HANDLE(loc_scale_rsample_backward, LocScaleBackwardSig, "loc_scale_rsample_backward")
RT_OP_HANDLE(relaxed_bernoulli_rsample, RelaxedSig, "relaxed_bernoulli_rsample")
RT_OP_HANDLE(gamma_rsample, OneParamSig, "gamma_rsample")
RT_OP_HANDLE(gamma_rsample_backward, OneParamBackwardSig, "gamma_rsample_backward")
RT_OP_HANDLE(dirichlet_rsample, OneParamSig, "dirichlet_rsample")
RT_OP_HANDLE(dirichlet_rsample_backward, OneParamBackwardSig, "dirichlet_rsample_backward")
RT_OP_HANDLE(beta_rsample, BetaSig, "beta_rsample")
RT_OP_HANDLE(beta_rsample_backward, BetaBackwardSig, "beta_rsample_backward")
RT_OP_HANDLE(gumbel_softmax, GumbelSig, "gumbel_softmax")
RT_OP_HANDLE(gumbel_softmax_backward, GumbelBackwardSig, "gumbel_softmax_backward")
RT_OP_HANDLE(gumbel_softmax_sample_backward, GumbelBackwardSig, "gumbel_softmax_sample_backward")
#undef RT_OP_HANDLE

}  // namespace ops
}  // namespace rtrick
