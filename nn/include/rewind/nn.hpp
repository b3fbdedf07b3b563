#pragma once
// Everything of rewind's neural-network layer, and the autodiff core it is written with.

#include <rewind/autograd.hpp>

#include "nn/cell.hpp"
#include "nn/cells.hpp"
#include "nn/checkpoint.hpp"
#include "nn/clip.hpp"
#include "nn/fused.hpp"
#include "nn/init.hpp"
#include "nn/layer_check.hpp"
#include "nn/layers.hpp"
#include "nn/module.hpp"
#include "nn/optim.hpp"
#include "nn/recurrent.hpp"
#include "nn/safetensors.hpp"
#include "nn/schedule.hpp"
#include "nn/state_dict.hpp"
#include "nn/tbptt.hpp"
