#pragma once
// Everything of rewind's neural-network layer, and the autodiff core it is written with.

#include <rewind/autograd.hpp>
// The README's examples slice arrays with xt::view; a user of this header should not need to know
// which xtensor header that is.
#include <xtensor/xview.hpp>

#include "nn/analysis/curves.hpp"
#include "nn/analysis/gradient_flow.hpp"
#include "nn/analysis/path_bench.hpp"
#include "nn/layers/cell.hpp"
#include "nn/layers/cell_table.hpp"
#include "nn/layers/cells.hpp"
#include "nn/train/checkpoint.hpp"
#include "nn/train/clip.hpp"
#include "nn/fused/cell_rules.hpp"
#include "nn/fused/check.hpp"
#include "nn/fused/lanes.hpp"
#include "nn/layers/init.hpp"
#include "nn/layers/layer_check.hpp"
#include "nn/layers/layers.hpp"
#include "nn/module.hpp"
#include "nn/train/constraint.hpp"
#include "nn/train/optim.hpp"
#include "nn/train/optimizers.hpp"
#include "nn/layers/recurrent.hpp"
#include "nn/io/safetensors.hpp"
#include "nn/train/schedule.hpp"
#include "nn/io/state_dict.hpp"
#include "nn/train/tbptt.hpp"
