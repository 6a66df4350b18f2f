// The per-sample depthwise convolution of a basis layer in training: forward, and a
// backward whose kernel gradient is computed here per plane.
//
// libtorch runs a per-sample depthwise layer as one grouped convolution over `[1, B*C, H,
// W]`, and its weight gradient through oneDNN's im2col and a GEMM per group: for 5x5
// kernels that took 10 to 15 times the forward convolution (a 28x28 plane with 3840
// groups: 31 against 2.1 ms). Here each plane is copied once into the zero-padded buffer
// the forward kernel reads (plane.h), and the k*k taps' sums over the plane are kept in
// vector registers (one per tap, sixteen output columns per lane set), so the output
// gradient and the padded input are each read once per kernel row; the lanes are summed
// at the end. The input gradient stays libtorch's (oneDNN's, as fast as the forward).
//
// fp32, CPU, contiguous NCHW input `[B, C, H, W]` and kernels `[B, C, k, k]`, k in {3, 5,
// 7}, stride 1 or 2, padding below k: the caller checks.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "plane.h"
#include "shim.h"
#include "vec.h"

namespace {

using basis_shim::lanes;
using basis_shim::message;
using basis_shim::pad_plane;
using basis_shim::row_width;
using basis_shim::Vec16;

// Taps of kernel rows `ky0 .. ky0 + KR` (those below K) of one plane's weight gradient:
// `gw[ky][kx] = sum_{oy, ox} gy[oy][ox] * x_padded[S*oy + ky][S*ox + kx]`, from the padded
// plane `buf` (rows `S * wb` floats apart) and the output gradient `gy` (`ho x wo`).
template <int K, int S, int KR>
inline __attribute__((always_inline)) void tap_rows(const float* buf, int64_t wb,
                                                    const float* gy, int64_t ho, int64_t wo,
                                                    int ky0, float* gw) {
  constexpr int R = KR;
  Vec16 acc[R * K];
#pragma GCC unroll 64
  for (int t = 0; t < R * K; t++) acc[t] = Vec16{};
  const int64_t stride_row = S * wb;
  for (int64_t oy = 0; oy < ho; oy++) {
    for (int64_t ox = 0; ox < wo; ox += 16) {
      // Lanes past the plane's last column are zero, so they add nothing.
      Vec16 g = {};
      const int64_t n = std::min<int64_t>(16, wo - ox);
      std::memcpy(&g, gy + oy * wo + ox, static_cast<size_t>(n) * sizeof(float));
#pragma GCC unroll 8
      for (int r = 0; r < R; r++) {
        if (ky0 + r >= K) break;
        const float* row = buf + (oy * S + ky0 + r) * stride_row + ox;
#pragma GCC unroll 8
        for (int kx = 0; kx < K; kx++) {
          Vec16 v;
          std::memcpy(&v, S == 1 ? row + kx : row + (kx % 2) * wb + kx / 2, sizeof v);
          acc[r * K + kx] += g * v;
        }
      }
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; r++) {
    if (ky0 + r >= K) break;
#pragma GCC unroll 8
    for (int kx = 0; kx < K; kx++) gw[(ky0 + r) * K + kx] = lanes(acc[r * K + kx]);
  }
}

// One plane's `K x K` weight gradient into `gw`; `buf` holds `(h + 2p) * S * wb` floats.
// At most 25 sums are live at once (AVX-512 has 32 vector registers): 7x7 kernels take
// three passes of three, three and one kernel rows.
template <int K, int S>
inline __attribute__((always_inline)) void plane_grad(const float* x, int64_t h, int64_t w,
                                                      const float* gy, int64_t ho, int64_t wo,
                                                      int64_t p, float* buf, float* gw) {
  const int64_t wb = row_width(K, S, wo);
  pad_plane<S>(x, h, w, p, wb, buf);
  if (K <= 5) {
    tap_rows<K, S, K>(buf, wb, gy, ho, wo, 0, gw);
  } else {
    for (int ky0 = 0; ky0 < K; ky0 += 3) tap_rows<K, S, 3>(buf, wb, gy, ho, wo, ky0, gw);
  }
}

// The weight gradients of planes `begin .. end`.
__attribute__((target_clones("avx512f", "avx2", "default"))) void weight_grad_planes(
    const float* x, int64_t h, int64_t w, const float* gy, int64_t ho, int64_t wo,
    float* gw, int64_t begin, int64_t end, int64_t k, int64_t s, int64_t p, float* buf) {
  for (int64_t i = begin; i < end; i++) {
    const float* xi = x + i * h * w;
    const float* gi = gy + i * ho * wo;
    float* wi = gw + i * k * k;
    switch (k * 10 + s) {
      case 31: plane_grad<3, 1>(xi, h, w, gi, ho, wo, p, buf, wi); break;
      case 32: plane_grad<3, 2>(xi, h, w, gi, ho, wo, p, buf, wi); break;
      case 51: plane_grad<5, 1>(xi, h, w, gi, ho, wo, p, buf, wi); break;
      case 52: plane_grad<5, 2>(xi, h, w, gi, ho, wo, p, buf, wi); break;
      case 71: plane_grad<7, 1>(xi, h, w, gi, ho, wo, p, buf, wi); break;
      default: plane_grad<7, 2>(xi, h, w, gi, ho, wo, p, buf, wi); break;
    }
  }
}

// `[B, C, k, k]` kernel gradients of the convolution of `x` `[B, C, H, W]` whose output
// gradient is `gy` `[B, C, Ho, Wo]` (both contiguous fp32).
at::Tensor weight_grad(const at::Tensor& x, const at::Tensor& gy, int64_t k, int64_t s,
                       int64_t p) {
  const int64_t batch = x.size(0), channels = x.size(1), h = x.size(2), w = x.size(3);
  const int64_t ho = gy.size(2), wo = gy.size(3);
  at::Tensor gw = at::empty({batch, channels, k, k}, x.options());
  const int64_t buffer = (h + 2 * p) * s * row_width(k, s, wo);
  const float* xs = x.const_data_ptr<float>();
  const float* gs = gy.const_data_ptr<float>();
  float* ws = gw.mutable_data_ptr<float>();
  at::parallel_for(0, batch * channels, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> buf(static_cast<size_t>(buffer));
    weight_grad_planes(xs, h, w, gs, ho, wo, ws, begin, end, k, s, p, buf.data());
  });
  return gw;
}

// The grouped convolution that runs `x` `[B, C, H, W]` with kernels `[B or 1, C, k, k]`:
// each sample's kernels, `[1, B*C, H, W]` with `B*C` groups; one kernel per channel for
// the batch, `C` groups.
struct Grouped {
  at::Tensor x, w;
  int64_t groups;
};

Grouped grouped(const at::Tensor& x, const at::Tensor& w) {
  const int64_t k = w.size(2);
  if (w.size(0) == 1) return {x, w.reshape({x.size(1), 1, k, k}), x.size(1)};
  const int64_t planes = x.size(0) * x.size(1);
  return {x.reshape({1, planes, x.size(2), x.size(3)}), w.reshape({planes, 1, k, k}), planes};
}

struct PerSampleDepthwise : public torch::autograd::Function<PerSampleDepthwise> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                            const at::Tensor& w, int64_t stride, int64_t padding) {
    ctx->save_for_backward({x, w});
    ctx->saved_data["stride"] = stride;
    ctx->saved_data["padding"] = padding;
    const Grouped g = grouped(x, w);
    const at::Tensor y = at::conv2d(g.x, g.w, {}, stride, padding, 1, g.groups);
    return y.reshape({x.size(0), x.size(1), y.size(2), y.size(3)});
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& x = saved[0];
    const at::Tensor& w = saved[1];
    const int64_t s = ctx->saved_data["stride"].toInt();
    const int64_t p = ctx->saved_data["padding"].toInt();
    const int64_t k = w.size(2);
    const at::Tensor gy = grads[0].contiguous();
    at::Tensor gx, gw;
    if (ctx->needs_input_grad(0)) {
      const Grouped g = grouped(x, w);
      const at::Tensor gyg = gy.reshape({g.x.size(0), g.x.size(1), gy.size(2), gy.size(3)});
      gx = std::get<0>(at::convolution_backward(gyg, g.x, g.w, std::nullopt, {s, s}, {p, p},
                                                {1, 1}, false, {0, 0}, g.groups,
                                                {true, false, false}))
               .reshape(x.sizes());
    }
    if (ctx->needs_input_grad(1)) {
      gw = weight_grad(x, gy, k, s, p);
      if (w.size(0) == 1) gw = gw.sum(0, true);
    }
    return {gx, gw, at::Tensor(), at::Tensor()};
  }
};

bool plain(const at::Tensor& t) {
  return t.dim() == 4 && t.scalar_type() == at::kFloat && t.device().is_cpu() &&
         t.is_contiguous();
}

}  // namespace

extern "C" {

// The depthwise convolution of `input` `[B, C, H, W]` with `weight` `[B, C, k, k]` (sample
// b's channel c with kernel `weight[b, c]`) or `[1, C, k, k]` (one kernel per channel for
// the batch), stride and padding on both axes,
// into a new `[B, C, Ho, Wo]` tensor `*out` that records its backward (this file's kernel
// gradient). fp32, CPU, contiguous; k in {3, 5, 7}, stride 1 or 2, 0 <= padding < k.
char* bc_depthwise_train(at::Tensor* input, at::Tensor* weight, int64_t stride,
                         int64_t padding, at::Tensor** out) {
  return basis_shim::guarded("the depthwise training kernel", [&]() -> char* {
    *out = nullptr;
    const at::Tensor& x = *input;
    const at::Tensor& w = *weight;
    if (!(plain(x) && plain(w))) return message("the depthwise training kernel needs contiguous fp32 CPU input and weight of 4 dimensions");
    const int64_t k = w.size(2);
    const bool fits = (k == 3 || k == 5 || k == 7) && w.size(3) == k &&
                      (stride == 1 || stride == 2) && padding >= 0 && padding < k &&
                      (w.size(0) == x.size(0) || w.size(0) == 1) && w.size(1) == x.size(1);
    if (!fits) return message("the depthwise training kernel got operands whose shapes do not match (kernels [B or 1, C, k, k], k 3, 5 or 7, stride 1 or 2, padding below k)");
    if ((x.size(2) + 2 * padding - k) < 0 || (x.size(3) + 2 * padding - k) < 0) return message("the depthwise training kernel got an input smaller than its kernel");
    *out = new at::Tensor(PerSampleDepthwise::apply(x, w, stride, padding));
    return nullptr;
  });
}

}  // extern "C"
