#pragma once
// Everything of rewind's neural-network layer.

#include "nn/cell.hpp"
#include "nn/cells.hpp"
#include "nn/init.hpp"
#include "nn/module.hpp"
#include "nn/recurrent.hpp"
#include "nn/safetensors.hpp"
#include "nn/state_dict.hpp"
