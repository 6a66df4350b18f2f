// Squeeze-and-excitation's squeeze (global average pool) for inference on the CPU, on
// `channels_last` fp32 and bf16 tensors: one vectorized pass summing in fp32, split over
// images and blocks of channels. libtorch's generic pool took 1.6-4x as long in bf16.
// Every function catches C++ exceptions and returns them as a malloc'ed message (freed
// with `bc_free_message`, in fused.cpp).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/GradMode.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>

namespace basis_squeeze {

char* message(const char* text) {
  size_t n = std::strlen(text);
  char* out = static_cast<char*>(std::malloc(n + 1));
  if (out != nullptr) std::memcpy(out, text, n + 1);
  return out;
}

// Channels handled together by one task.
constexpr int64_t BLOCK = 64;

inline float widen(uint16_t v) {
  uint32_t u = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// acc[k] += sum over pixels of x[pixel * stride + k], k < width (at most BLOCK): a full
// block keeps its BLOCK sums in registers.
__attribute__((target_clones("avx512f", "avx2", "default"))) void sum_f32(
    const float* x, float* acc, int64_t pixels, int64_t stride, int64_t width) {
  float local[BLOCK] = {};
  if (width == BLOCK) {
    for (int64_t p = 0; p < pixels; ++p) {
      const float* row = x + p * stride;
#pragma omp simd
      for (int64_t k = 0; k < BLOCK; ++k) local[k] += row[k];
    }
  } else {
    for (int64_t p = 0; p < pixels; ++p) {
      const float* row = x + p * stride;
      for (int64_t k = 0; k < width; ++k) local[k] += row[k];
    }
  }
  for (int64_t k = 0; k < width; ++k) acc[k] += local[k];
}

__attribute__((target_clones("avx512f", "avx2", "default"))) void sum_bf16(
    const uint16_t* x, float* acc, int64_t pixels, int64_t stride, int64_t width) {
  float local[BLOCK] = {};
  if (width == BLOCK) {
    for (int64_t p = 0; p < pixels; ++p) {
      const uint16_t* row = x + p * stride;
#pragma omp simd
      for (int64_t k = 0; k < BLOCK; ++k) local[k] += widen(row[k]);
    }
  } else {
    for (int64_t p = 0; p < pixels; ++p) {
      const uint16_t* row = x + p * stride;
      for (int64_t k = 0; k < width; ++k) local[k] += widen(row[k]);
    }
  }
  for (int64_t k = 0; k < width; ++k) acc[k] += local[k];
}

// A 4-D CPU tensor in fp32 or bf16, dense in channels_last, that needs no gradient.
bool fits(const at::Tensor& x) {
  bool grad = c10::GradMode::is_enabled() && x.requires_grad();
  return !grad && x.defined() && x.device().is_cpu() && x.dim() == 4 &&
         (x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16) &&
         x.is_contiguous(at::MemoryFormat::ChannelsLast);
}

// Run `task(image, first channel, channels)` over every (image, block of channels).
template <typename Task>
void over_blocks(int64_t images, int64_t channels, const Task& task) {
  int64_t blocks = (channels + BLOCK - 1) / BLOCK;
  at::parallel_for(0, images * blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      int64_t b = t / blocks, first = (t % blocks) * BLOCK;
      task(b, first, std::min(BLOCK, channels - first));
    }
  });
}

}  // namespace basis_squeeze

extern "C" {

// The global average pool `[B, C, 1, 1]` of `input` `[B, C, H, W]`, in its dtype, where it
// applies (see `fits`); `*out` stays null elsewhere (the caller runs libtorch's pool).
char* bc_squeeze(at::Tensor* input, at::Tensor** out) {
  using namespace basis_squeeze;
  try {
    *out = nullptr;
    const at::Tensor& x = *input;
    if (!fits(x)) return nullptr;
    int64_t n = x.size(0), c = x.size(1), pixels = x.size(2) * x.size(3);
    at::Tensor sums = at::zeros({n, c}, x.options().dtype(at::kFloat));
    float* acc = sums.data_ptr<float>();
    bool half = x.scalar_type() == at::kBFloat16;
    const void* data = x.data_ptr();
    over_blocks(n, c, [&](int64_t b, int64_t first, int64_t width) {
      float* a = acc + b * c + first;
      int64_t offset = b * pixels * c + first;
      if (half) {
        sum_bf16(static_cast<const uint16_t*>(data) + offset, a, pixels, c, width);
      } else {
        sum_f32(static_cast<const float*>(data) + offset, a, pixels, c, width);
      }
    });
    at::Tensor mean = sums.div_(static_cast<double>(pixels)).to(x.scalar_type());
    *out = new at::Tensor(mean.view({n, c, 1, 1}));
    return nullptr;
  } catch (const std::exception& e) {
    return message(e.what());
  } catch (...) {
    return message("unknown C++ exception in the squeeze");
  }
}

}  // extern "C"
