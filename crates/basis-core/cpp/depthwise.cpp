// The depthwise convolution of a basis layer at inference, per image plane, on NCHW input.
//
// libtorch runs a per-sample depthwise layer as one grouped convolution over `[1, B*C, H,
// W]`; oneDNN then reorders the NCHW planes into its blocked layout and back around the
// convolution, three passes over memory where one is needed. Here each plane (one channel
// of one sample, with that sample's kernel) is copied once into a zero-padded buffer in
// cache (for stride 2, split into its even and odd columns, so that every tap reads
// consecutive floats), and four output rows at a time are computed sixteen columns at a
// time, each input row read once for the four, with the bias (a folded batch norm's shift)
// and the activation applied before the row is stored. On wide planes (28 columns and up)
// this runs 1.1x to 2.4x oneDNN's grouped convolution; on narrow ones oneDNN's blocked
// layout wins, and the caller keeps it there.
//
// fp32 or bf16 (read into fp32 in the padded copy, accumulated in fp32, rounded once at
// the store), CPU, contiguous operands, no gradient: the caller checks these.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "act.h"
#include "plane.h"
#include "vec.h"
#include "shim.h"

namespace {

using basis_shim::Act;
using basis_shim::activate;
using basis_shim::message;
using basis_shim::pad_plane;
using basis_shim::row_width;
using basis_shim::parse;
using basis_shim::Bf16;
using basis_shim::store16;
using basis_shim::to_float;
using basis_shim::Vec16;

// Rows `oy .. oy + R` of the output plane `out` (`wo` wide) from the padded plane `buf`.
template <int K, int S, int R, typename T>
inline __attribute__((always_inline)) void output_rows(const float* buf, int64_t stride_row,
                                                       int64_t wb, int64_t oy, int64_t wo,
                                                       T* out, const float* wk, float bias,
                                                       Act act, float lower, float upper) {
  constexpr int J = (R - 1) * S + K;
  for (int64_t ox = 0; ox < wo; ox += 16) {
    Vec16 acc[R];
#pragma GCC unroll 8
    for (int r = 0; r < R; r++) acc[r] = Vec16{} + bias;
#pragma GCC unroll 16
    for (int j = 0; j < J; j++) {
      const float* row = buf + (oy * S + j) * stride_row + ox;
      Vec16 v[K];
#pragma GCC unroll 8
      for (int kx = 0; kx < K; kx++) {
        std::memcpy(&v[kx], S == 1 ? row + kx : row + (kx % 2) * wb + kx / 2, sizeof(Vec16));
      }
#pragma GCC unroll 8
      for (int r = 0; r < R; r++) {
        const int ky = j - r * S;
        if (ky < 0 || ky >= K) continue;
#pragma GCC unroll 8
        for (int kx = 0; kx < K; kx++) acc[r] += wk[ky * K + kx] * v[kx];
      }
    }
    const int64_t n = std::min<int64_t>(16, wo - ox);
#pragma GCC unroll 8
    for (int r = 0; r < R; r++) {
      store16(out + (oy + r) * wo + ox, activate(acc[r], act, lower, upper), n);
    }
  }
}

// One plane: `in` `h x w` into `out` `ho x wo`, kernel `wt` `K x K`, stride `S`, padding
// `p`; `buf` holds `(h + 2p) * row_width(K, S, wo) * S` floats.
template <int K, int S, typename T>
inline __attribute__((always_inline)) void plane(const T* in, int64_t h, int64_t w, T* out,
                                                 int64_t ho, int64_t wo, const float* weights,
                                                 int64_t p, float bias, Act act, float lower,
                                                 float upper, float* buf) {
  // A local copy: the stores to an fp32 `out` could alias `weights`, which the compiler
  // would then reload on every tap (0.93x in the network).
  float wk[K * K];
  for (int i = 0; i < K * K; i++) wk[i] = weights[i];
  const int64_t wb = row_width(K, S, wo);
  const int64_t stride_row = S * wb;
  pad_plane<S>(in, h, w, p, wb, buf);
  int64_t oy = 0;
  for (; oy + 4 <= ho; oy += 4) {
    output_rows<K, S, 4>(buf, stride_row, wb, oy, wo, out, wk, bias, act, lower, upper);
  }
  for (; oy < ho; oy++) {
    output_rows<K, S, 1>(buf, stride_row, wb, oy, wo, out, wk, bias, act, lower, upper);
  }
}

// The planes `begin .. end` of the batch (`channels` per sample); each plane's kernel and
// bias at its index (`shared`: at its channel's).
template <typename T>
inline __attribute__((always_inline)) void planes(const T* in, int64_t h, int64_t w, T* out,
                                                  int64_t ho, int64_t wo, const T* weight,
                                                  const T* bias, int64_t begin, int64_t end,
                                                  int64_t channels, bool shared, int64_t k,
                                                  int64_t s, int64_t p, Act act, float lower,
                                                  float upper, float* buf) {
  float wk[49];
  for (int64_t i = begin; i < end; i++) {
    const int64_t wi = shared ? i % channels : i;
    const float b = bias == nullptr ? 0.0f : to_float(bias[wi]);
    for (int64_t t = 0; t < k * k; t++) wk[t] = to_float(weight[wi * k * k + t]);
    const T* x = in + i * h * w;
    T* y = out + i * ho * wo;
    switch (k * 10 + s) {
      case 31: plane<3, 1>(x, h, w, y, ho, wo, wk, p, b, act, lower, upper, buf); break;
      case 32: plane<3, 2>(x, h, w, y, ho, wo, wk, p, b, act, lower, upper, buf); break;
      case 51: plane<5, 1>(x, h, w, y, ho, wo, wk, p, b, act, lower, upper, buf); break;
      case 52: plane<5, 2>(x, h, w, y, ho, wo, wk, p, b, act, lower, upper, buf); break;
      case 71: plane<7, 1>(x, h, w, y, ho, wo, wk, p, b, act, lower, upper, buf); break;
      default: plane<7, 2>(x, h, w, y, ho, wo, wk, p, b, act, lower, upper, buf); break;
    }
  }
}

__attribute__((target_clones("avx512f", "avx2", "default"))) void planes_f32(
    const float* in, int64_t h, int64_t w, float* out, int64_t ho, int64_t wo,
    const float* weight, const float* bias, int64_t begin, int64_t end, int64_t channels,
    bool shared, int64_t k, int64_t s, int64_t p, Act act, float lower, float upper,
    float* buf) {
  planes(in, h, w, out, ho, wo, weight, bias, begin, end, channels, shared, k, s, p, act,
         lower, upper, buf);
}

__attribute__((target_clones("avx512f", "avx2", "default"))) void planes_bf16(
    const Bf16* in, int64_t h, int64_t w, Bf16* out, int64_t ho, int64_t wo,
    const Bf16* weight, const Bf16* bias, int64_t begin, int64_t end, int64_t channels,
    bool shared, int64_t k, int64_t s, int64_t p, Act act, float lower, float upper,
    float* buf) {
  planes(in, h, w, out, ho, wo, weight, bias, begin, end, channels, shared, k, s, p, act,
         lower, upper, buf);
}

// A contiguous CPU tensor of `dim` dimensions and dtype `dtype`.
bool plain(const at::Tensor& t, int64_t dim, at::ScalarType dtype) {
  return t.dim() == dim && t.scalar_type() == dtype && t.device().is_cpu() && t.is_contiguous();
}

}  // namespace

extern "C" {

// `act(conv(x_b, w_b) + bias_b)` for every plane of `input` `[B, C, H, W]` (NCHW,
// contiguous): a depthwise convolution with square `k x k` kernels, k in {3, 5, 7}, stride
// 1 or 2 and padding `padding` (0 <= padding < k) on both axes, `weight` `[B, C, k, k]`
// (each sample's kernels) or `[1, C, k, k]` (one kernel for the batch), `bias` of the same
// leading shape `[B or 1, C]` or null, into a new `[B, C, Ho, Wo]` tensor `*out`. The
// activation `attr` is named as for the fused convolution. Every tensor fp32 (or every one
// bf16), on the CPU and contiguous; the caller checks (a mismatch is an error here, not a
// fallback).
char* bc_depthwise_forward(at::Tensor* input, at::Tensor* weight, at::Tensor* bias,
                           int64_t stride, int64_t padding, const char* attr, double lower,
                           double upper, at::Tensor** out) {
  return basis_shim::guarded("the depthwise kernel", [&]() -> char* {
    *out = nullptr;
    const at::Tensor& x = *input;
    const at::Tensor& wt = *weight;
    Act act;
    if (!parse(attr, &act)) return message("the depthwise kernel got an unknown activation");
    const at::ScalarType dtype = x.scalar_type();
    const bool typed = dtype == at::kFloat || dtype == at::kBFloat16;
    if (!(typed && plain(x, 4, dtype) && plain(wt, 4, dtype))) return message("the depthwise kernel needs contiguous CPU input and weight of 4 dimensions, both fp32 or both bf16");
    const int64_t batch = x.size(0), channels = x.size(1), h = x.size(2), w = x.size(3);
    const int64_t k = wt.size(2);
    const bool shared = wt.size(0) == 1;
    const bool kernel_fits = (k == 3 || k == 5 || k == 7) && wt.size(3) == k &&
                             (stride == 1 || stride == 2) && padding >= 0 && padding < k;
    if (!kernel_fits) return message("the depthwise kernel takes square 3x3, 5x5 or 7x7 kernels, stride 1 or 2, padding below the kernel size");
    const bool fits = (shared || wt.size(0) == batch) && wt.size(1) == channels &&
                      (bias == nullptr || (plain(*bias, 2, dtype) && bias->size(0) == wt.size(0) &&
                                           bias->size(1) == channels));
    if (!fits) return message("the depthwise kernel got operands whose shapes do not match");
    const int64_t ho = (h + 2 * padding - k) / stride + 1;
    const int64_t wo = (w + 2 * padding - k) / stride + 1;
    if (ho < 1 || wo < 1) return message("the depthwise kernel got an input smaller than its kernel");
    at::Tensor y = at::empty({batch, channels, ho, wo}, x.options());
    const int64_t buffer = (h + 2 * padding) * stride * row_width(k, stride, wo);
    const auto lo = static_cast<float>(lower), hi = static_cast<float>(upper);
    const bool bf16 = dtype == at::kBFloat16;
    // bf16 data as its bits (`Bf16`): at::BFloat16 holds exactly those 16 bits.
    const void* xs = x.data_ptr();
    const void* ws = wt.data_ptr();
    const void* bs = bias == nullptr ? nullptr : bias->data_ptr();
    void* ys = y.data_ptr();
    at::parallel_for(0, batch * channels, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> buf(static_cast<size_t>(buffer));
      if (bf16) {
        planes_bf16(static_cast<const Bf16*>(xs), h, w, static_cast<Bf16*>(ys), ho, wo,
                    static_cast<const Bf16*>(ws), static_cast<const Bf16*>(bs), begin, end,
                    channels, shared, k, stride, padding, act, lo, hi, buf.data());
      } else {
        planes_f32(static_cast<const float*>(xs), h, w, static_cast<float*>(ys), ho, wo,
                   static_cast<const float*>(ws), static_cast<const float*>(bs), begin, end,
                   channels, shared, k, stride, padding, act, lo, hi, buf.data());
      }
    });
    *out = new at::Tensor(std::move(y));
    return nullptr;
  });
}

}  // extern "C"
