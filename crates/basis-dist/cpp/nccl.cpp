// The NCCL backend, built when libtorch has CUDA and the NCCL and CUDA headers are found
// (the PyTorch wheel's nvidia packages carry both).

#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>

#include "c10d.h"

extern "C" {

char* bd_group_new_nccl(bd_store* store, int rank, int size, int64_t timeout_ms, int64_t* out) {
  return bd_guarded([&] {
    auto& s = *reinterpret_cast<c10::intrusive_ptr<c10d::Store>*>(store);
    auto options = c10d::ProcessGroupNCCL::Options::create();
    options->timeout = std::chrono::milliseconds(timeout_ms);
    c10::intrusive_ptr<c10d::Backend> group =
        c10::make_intrusive<c10d::ProcessGroupNCCL>(s, rank, size, options);
    *out = bd_register(std::move(group));
  });
}

}  // extern "C"
