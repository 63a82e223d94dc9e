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
RT_OP_HANDLE(gumbel_softmax, GumbelSig, "gumbel_softmax")
RT_OP_HANDLE(gumbel_softmax_backward, GumbelBackwardSig, "gumbel_softmax_backward")
#undef RT_OP_HANDLE

}  // namespace ops
}  // namespace rtrick
