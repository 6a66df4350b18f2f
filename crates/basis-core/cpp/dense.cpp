// A basis layer on one vector per sample at inference (a linear layer, or a 1x1
// convolution on a 1x1 input such as squeeze-excite's), in one pass.
//
// `bc_dense_forward`: for batches of one to four, memory-bound, the bank streams once
// through dot products with every sample's vector on all threads (libtorch's
// matrix-vector product, MKL's AVX2 code on AMD CPUs, read it at a quarter of the memory's
// speed there), and each sample's N results are mixed after; a bf16 bank is read as bf16
// (half the bytes) into fp32 sums. For larger batches (fp32), the GEMMs of the N bases
// accumulate into one `[rows, B]` block per block of output features, whose inputs are
// each sample's vector scaled by its coefficient: the work of running every basis on
// every sample, without writing the `[B, N, Cout]` outputs that are mixed afterwards.
//
// CPU, contiguous operands, no gradient: the caller checks these and runs the autograd
// path otherwise. Errors come back as messages (`shim.h`).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/autocast_mode.h>
#include <ATen/native/CPUBlas.h>

#include <algorithm>
#include <vector>

#include "shim.h"
#include "vec.h"

namespace {

using basis_shim::Bf16;
using basis_shim::lanes;
using basis_shim::load16;
using basis_shim::message;
using basis_shim::to_float;
using basis_shim::Vec16;

// Output features per task of the GEMM form (each task accumulates N GEMMs of this many
// rows by the batch's columns).
constexpr int64_t kDenseRows = 128;

// Batches of at most this many vectors stream the bank (as `STREAM_BATCH` in
// `src/pointwise.rs`); larger ones run batch-reduce GEMMs.
constexpr int64_t kStreamBatch = 4;

// `t[r * count + b] = dot(rows[r * len ...], x[b * len ...])` for `r < num_rows` and
// `b < count` (at most `kStreamBatch`): each bank row read once for every vector. One
// vector takes four rows at a time (four independent sums: 1.45x one row at a time).
template <typename T>
inline __attribute__((always_inline)) void dot_rows_of(float* t, const T* rows,
                                                       int64_t num_rows, const float* x,
                                                       int64_t count, int64_t len) {
  int64_t r = 0;
  if (count == 1) {
    for (; r + 4 <= num_rows; r += 4) {
      const T* w = rows + r * len;
      Vec16 acc0 = {}, acc1 = {}, acc2 = {}, acc3 = {};
      int64_t k = 0;
      for (; k + 16 <= len; k += 16) {
        const Vec16 u = load16(x + k);
        acc0 += load16(w + k) * u;
        acc1 += load16(w + len + k) * u;
        acc2 += load16(w + 2 * len + k) * u;
        acc3 += load16(w + 3 * len + k) * u;
      }
      float sums[4] = {lanes(acc0), lanes(acc1), lanes(acc2), lanes(acc3)};
      for (; k < len; k++) {
        for (int64_t q = 0; q < 4; q++) sums[q] += to_float(w[q * len + k]) * x[k];
      }
      for (int64_t q = 0; q < 4; q++) t[r + q] = sums[q];
    }
  }
  const float* x0 = x;
  const float* x1 = x + (count > 1 ? 1 : 0) * len;
  const float* x2 = x + (count > 2 ? 2 : 0) * len;
  const float* x3 = x + (count > 3 ? 3 : 0) * len;
  for (; r < num_rows; r++) {
    const T* w = rows + r * len;
    Vec16 acc0 = {}, acc1 = {}, acc2 = {}, acc3 = {};
    int64_t k = 0;
    for (; k + 16 <= len; k += 16) {
      const Vec16 v = load16(w + k);
      acc0 += v * load16(x0 + k);
      acc1 += v * load16(x1 + k);
      acc2 += v * load16(x2 + k);
      acc3 += v * load16(x3 + k);
    }
    float sums[kStreamBatch] = {lanes(acc0), lanes(acc1), lanes(acc2), lanes(acc3)};
    for (; k < len; k++) {
      const float v = to_float(w[k]);
      sums[0] += v * x0[k];
      sums[1] += v * x1[k];
      sums[2] += v * x2[k];
      sums[3] += v * x3[k];
    }
    for (int64_t b = 0; b < count; b++) t[r * count + b] = sums[b];
  }
}

__attribute__((target_clones("avx512f", "avx2", "default"))) void dot_rows(
    float* t, const float* rows, int64_t num_rows, const float* x, int64_t count, int64_t len) {
  dot_rows_of(t, rows, num_rows, x, count, len);
}

__attribute__((target_clones("avx512f", "avx2", "default"))) void dot_rows(
    float* t, const Bf16* rows, int64_t num_rows, const float* x, int64_t count, int64_t len) {
  dot_rows_of(t, rows, num_rows, x, count, len);
}

// The streamed form: `y` fp32 `[B, Cout]` from `x` fp32 `[B, Cin]` and the bank `ws`.
template <typename T>
at::Tensor stream(const at::Tensor& x, const float* as, const T* ws, const float* bs,
                  int64_t num_bases, int64_t cout) {
  const int64_t batch = x.size(0), cin = x.size(1);
  // t[i * cout + o, b] = bank[i, o] . x[b]; y[b, o] = sum_i alpha[b, i] t[i * cout + o, b].
  at::Tensor t = at::empty({num_bases * cout, batch}, x.options());
  at::Tensor y = at::empty({batch, cout}, x.options());
  const float* xs = x.data_ptr<float>();
  float* ts = t.data_ptr<float>();
  float* ys = y.data_ptr<float>();
  at::parallel_for(0, num_bases * cout, 64, [&](int64_t begin, int64_t end) {
    dot_rows(ts + begin * batch, ws + begin * cin, end - begin, xs, batch, cin);
  });
  for (int64_t b = 0; b < batch; b++) {
    for (int64_t o = 0; o < cout; o++) {
      float sum = bs == nullptr ? 0.0f : bs[b * cout + o];
      for (int64_t i = 0; i < num_bases; i++) {
        sum += as[b * num_bases + i] * ts[(i * cout + o) * batch + b];
      }
      ys[b * cout + o] = sum;
    }
  }
  return y;
}

// The GEMM form (fp32): see the file's notes.
at::Tensor gemms(const at::Tensor& x, const at::Tensor& a, const float* ws, const float* bs,
                 int64_t num_bases, int64_t cout) {
  const int64_t batch = x.size(0), cin = x.size(1);
  // scaled[i, k, b] = alpha[b, i] * x[b, k]: basis i's GEMM input, samples as columns.
  at::Tensor scaled = (a.t().unsqueeze(1) * x.t().unsqueeze(0)).contiguous();
  at::Tensor y = at::empty({batch, cout}, x.options());
  const float* ss = scaled.data_ptr<float>();
  float* ys = y.data_ptr<float>();
  const int64_t rows = std::min(kDenseRows, cout);
  const int64_t blocks = (cout + rows - 1) / rows;
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> block(static_cast<size_t>(rows * batch));
    for (int64_t task = begin; task < end; task++) {
      const int64_t o0 = task * rows, m = std::min(rows, cout - o0);
      for (int64_t i = 0; i < num_bases; i++) {
        at::native::cpublas::brgemm(m, batch, cin, cin, batch, batch, i > 0,
                                    ws + (i * cout + o0) * cin, ss + i * cin * batch,
                                    block.data(), false);
      }
      for (int64_t b = 0; b < batch; b++) {
        float* yb = ys + b * cout + o0;
        for (int64_t r = 0; r < m; r++) {
          yb[r] = block[r * batch + b] + (bs == nullptr ? 0.0f : bs[b * cout + o0 + r]);
        }
      }
    }
    at::native::cpublas::brgemm_release(false);
  });
  return y;
}

}  // namespace

extern "C" {

// `y[b] = sum_i alpha[b, i] * bank[i] x[b] + bias[b]` for `x` `[B, Cin]`, `alpha` `[B, N]`,
// `bank` `[N, Cout, Cin]` and `bias` `[B, Cout]` or null, into a new `[B, Cout]` tensor
// `*out` of `x`'s type. `x` and `bank` are both fp32, or both bf16 for batches of at most
// four; `alpha`, `x` and `bias` are read in fp32; all on the CPU, the bank contiguous. The
// caller checks (a mismatch is an error here, not a fallback). Under CPU autocast `*out`
// stays null and the caller runs the eager layers.
char* bc_dense_forward(at::Tensor* input, at::Tensor* alpha, at::Tensor* bank, at::Tensor* bias,
                       at::Tensor** out) {
  return basis_shim::guarded("the per-sample dense kernel", [&]() -> char* {
    *out = nullptr;
    if (at::autocast::is_autocast_enabled(at::kCPU)) return nullptr;
    const at::Tensor& w = *bank;
    const at::ScalarType type = input->scalar_type();
    const bool typed = type == at::kFloat || (type == at::kBFloat16 && input->size(0) <= kStreamBatch);
    const bool shaped = input->dim() == 2 && alpha->dim() == 2 && w.dim() == 3;
    const bool cpu = input->device().is_cpu() && alpha->device().is_cpu() && w.device().is_cpu();
    if (!(typed && shaped && cpu && w.scalar_type() == type && w.is_contiguous())) {
      return message("the per-sample dense kernel needs CPU operands of 2, 2 and 3 dimensions, input and bank both fp32 (or both bf16 for batches of at most four), the bank contiguous");
    }
    const at::Tensor x = input->to(at::kFloat).contiguous();
    const at::Tensor a = alpha->to(at::kFloat).contiguous();
    const at::Tensor bf = bias == nullptr ? at::Tensor() : bias->to(at::kFloat).contiguous();
    const int64_t batch = x.size(0), cin = x.size(1), num_bases = w.size(0), cout = w.size(1);
    const bool fits = a.size(0) == batch && a.size(1) == num_bases && w.size(2) == cin &&
                      (!bf.defined() ||
                       (bf.dim() == 2 && bf.size(0) == batch && bf.size(1) == cout));
    if (!fits) return message("the per-sample dense kernel got operands whose shapes do not match");
    const float* as = a.data_ptr<float>();
    const float* bs = bf.defined() ? bf.data_ptr<float>() : nullptr;
    at::Tensor y;
    if (type == at::kBFloat16) {
      y = stream(x, as, static_cast<const Bf16*>(w.data_ptr()), bs, num_bases, cout)
              .to(at::kBFloat16);
    } else if (batch <= kStreamBatch) {
      y = stream(x, as, w.data_ptr<float>(), bs, num_bases, cout);
    } else {
      y = gemms(x, a, w.data_ptr<float>(), bs, num_bases, cout);
    }
    *out = new at::Tensor(std::move(y));
    return nullptr;
  });
}

}  // extern "C"
