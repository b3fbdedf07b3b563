#pragma once
// Data-parallel training over MPI (rewind::dist): everything of it.

#include "dist/communicator.hpp"
#include "dist/reducer.hpp"
#include "dist/replicas.hpp"
#include "dist/shard.hpp"
