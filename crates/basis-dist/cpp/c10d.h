// The C interface of c10d.cpp and nccl.cpp (see src/ffi.rs for the Rust side).
#pragma once

#include <cstddef>
#include <cstdint>

#include <ATen/core/Tensor.h>
#include <c10/util/intrusive_ptr.h>
#include <torch/csrc/distributed/c10d/Backend.hpp>

struct bd_store;
struct bd_work;

// Registers a backend; the id is what Rust holds.
int64_t bd_register(c10::intrusive_ptr<c10d::Backend> backend);
