// The C interface of c10d.cpp and nccl.cpp (see src/ffi.rs for the Rust side).
#pragma once

#include <cstddef>
#include <cstdint>

#include <ATen/core/Tensor.h>
#include <c10/util/intrusive_ptr.h>
#include <torch/csrc/distributed/c10d/Backend.hpp>

#include <cstdlib>
#include <cstring>

struct bd_store;
struct bd_work;
struct bd_overlap;

// A malloc'ed copy of `text`, for Rust to read and free with bd_free_message.
inline char* bd_copy_message(const char* text) {
  char* out = static_cast<char*>(std::malloc(std::strlen(text) + 1));
  if (out != nullptr) {
    std::strcpy(out, text);
  }
  return out;
}

// Run `body`; nullptr on success, else the exception's message (without c10's backtrace).
template <typename F>
char* bd_guarded(F&& body) {
  try {
    body();
    return nullptr;
  } catch (const c10::Error& e) {
    return bd_copy_message(e.what_without_backtrace());
  } catch (const std::exception& e) {
    return bd_copy_message(e.what());
  } catch (...) {
    return bd_copy_message("unknown C++ exception");
  }
}

// Registers a backend; the id is what Rust holds.
int64_t bd_register(c10::intrusive_ptr<c10d::Backend> backend);
