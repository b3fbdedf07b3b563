#pragma once
// The one door from engine bookkeeping back to the public handle: record_op's outputs and
// BackwardContext::output() wrap a detail::TensorImpl in a Tensor. Private to autograd/src, so
// user code can neither build a Tensor around engine state nor reach it through one.

#include <memory>
#include <utility>

#include "rewind/autograd/tensor.hpp"

namespace rw::detail {

template <class T>
struct TensorAccess {
    static Tensor<T> wrap(std::shared_ptr<TensorImpl<T>> impl) { return Tensor<T>(std::move(impl)); }
};

}  // namespace rw::detail
