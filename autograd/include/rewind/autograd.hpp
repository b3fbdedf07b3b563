#pragma once
// Everything of rewind's autodiff core.

#include "autograd/checked_size.hpp"
#include "autograd/recompute.hpp"
#include "autograd/engine.hpp"
#include "autograd/errors.hpp"
#include "autograd/forward.hpp"
#include "autograd/function.hpp"
#include "autograd/gemm.hpp"
#include "autograd/gradcheck.hpp"
#include "autograd/memory.hpp"
#include "autograd/ops.hpp"
#include "autograd/random.hpp"
#include "autograd/tensor.hpp"
