// libtorch's deterministic mode (PyTorch's `torch.use_deterministic_algorithms` and
// `torch.backends.cudnn.deterministic`), which tch does not reach. Every function catches
// C++ exceptions and returns non-zero instead.
#include <ATen/Context.h>

extern "C" {

// Deterministic algorithms on or off: operations without a deterministic implementation
// raise instead of running; cuDNN picks deterministic algorithms and stops benchmarking.
int basis_amp_set_deterministic(int on) {
  try {
    auto& ctx = at::globalContext();
    ctx.setDeterministicAlgorithms(on != 0, /*warn_only=*/false);
    ctx.setDeterministicCuDNN(on != 0);
    if (on != 0) {
      ctx.setBenchmarkCuDNN(false);
    }
    return 0;
  } catch (...) {
    return 1;
  }
}

// Whether deterministic algorithms are on.
int basis_amp_is_deterministic() {
  try {
    return at::globalContext().deterministicAlgorithms() ? 1 : 0;
  } catch (...) {
    return 0;
  }
}
}
