// Per-sample kernels at inference through libtorch's batch-reduce GEMM.
//
// `bc_pointwise_forward`: the per-sample 1x1 convolution of a basis layer, in one pass per
// block of output channels: each sample's kernel rows are synthesized from the bank (rows
// read from the L2 cache, each read serving four samples) into a thread-local buffer (never written to memory as a
// `[B, Cout, Cin]` tensor), multiplied with the sample's input by libtorch's batch-reduce
// GEMM (`cpublas::brgemm`, oneDNN's micro-kernel where libtorch has it, its own GEMM
// otherwise), and the bias and the activation are applied while the block is in cache.
// Eager libtorch needs three passes over memory for the same layer (synthesis, `baddbmm`,
// activation), and its batched GEMM is MKL's, which runs its AVX2 code on AMD CPUs.
//
// `bc_dense_forward`: a basis layer on one vector per sample (a linear layer, or a 1x1
// convolution on a 1x1 input such as squeeze-excite's): for each block of output features,
// the GEMMs of the N bases accumulate into one `[rows, B]` block whose inputs are each
// sample's vector scaled by its coefficient; the work of running every basis on every
// sample, without writing the `[B, N, Cout]` outputs that are mixed afterwards.
//
// fp32, CPU, contiguous operands (NCHW for the convolution), no gradient: the caller checks
// these and runs the autograd path otherwise. Errors come back as messages (`shim.h`).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/autocast_mode.h>
#include <ATen/native/CPUBlas.h>

#include <algorithm>
#include <string>
#include <vector>

#include "act.h"
#include "shim.h"

namespace {

using basis_shim::Act;
using basis_shim::message;
using basis_shim::parse;

// A contiguous fp32 CPU tensor of `dim` dimensions.
bool plain(const at::Tensor& t, int64_t dim) {
  return t.dim() == dim && t.scalar_type() == at::kFloat && t.device().is_cpu() &&
         t.is_contiguous();
}

// No bias, or a plain `[batch, cout]` one.
bool bias_fits(const at::Tensor* bias, int64_t batch, int64_t cout) {
  return bias == nullptr || (plain(*bias, 2) && bias->size(0) == batch && bias->size(1) == cout);
}

// The bank rows one task synthesizes from (`N * rows * Cin` floats) stay within this many
// bytes, so they are read from the core's L2 cache for every sample of the task: 8 rows for
// a 960-channel input with N = 8, 64 rows (the most) for narrow inputs.
constexpr int64_t kBankBytes = 384 * 1024;
constexpr int64_t kMinRows = 8;
constexpr int64_t kMaxRows = 64;
// Output features per task of the dense kernel (each task accumulates N GEMMs of this many
// rows by the batch's columns).
constexpr int64_t kDenseRows = 128;
// Output pixels per GEMM call: the block the epilogue reads back from cache.
constexpr int64_t kColumns = 256;

// Samples whose kernel rows are synthesized together: each bank vector read from the L2
// cache serves this many samples (the read, not the multiply-add, bounds the synthesis).
constexpr int64_t kGroup = 4;

// Sixteen floats: one AVX-512 register, two AVX2 ones (GCC and Clang vector extensions).
typedef float Vec16 __attribute__((vector_size(64)));

// `dst[s * dst_stride + k] = sum_i coef[s * num_bases + i] * bank[i * stride + k]` for
// `k < len` and `s < count` (at most `kGroup`): a group of samples' kernel rows. `coef`
// holds `kGroup` rows of `num_bases` coefficients (rows past `count` are zeros).
__attribute__((target_clones("avx512f", "avx2", "default"))) void synthesize(
    float* dst, int64_t dst_stride, int64_t count, const float* bank, const float* coef,
    int64_t num_bases, int64_t stride, int64_t len) {
  const float* c0 = coef;
  const float* c1 = coef + num_bases;
  const float* c2 = coef + 2 * num_bases;
  const float* c3 = coef + 3 * num_bases;
  int64_t k = 0;
  for (; k + 16 <= len; k += 16) {
    Vec16 acc0 = {}, acc1 = {}, acc2 = {}, acc3 = {};
    for (int64_t i = 0; i < num_bases; i++) {
      Vec16 v;
      __builtin_memcpy(&v, bank + i * stride + k, sizeof v);
      acc0 += c0[i] * v;
      acc1 += c1[i] * v;
      acc2 += c2[i] * v;
      acc3 += c3[i] * v;
    }
    __builtin_memcpy(dst + k, &acc0, sizeof acc0);
    if (count > 1) __builtin_memcpy(dst + dst_stride + k, &acc1, sizeof acc1);
    if (count > 2) __builtin_memcpy(dst + 2 * dst_stride + k, &acc2, sizeof acc2);
    if (count > 3) __builtin_memcpy(dst + 3 * dst_stride + k, &acc3, sizeof acc3);
  }
  for (; k < len; k++) {
    for (int64_t s = 0; s < count; s++) {
      float sum = 0.0f;
      for (int64_t i = 0; i < num_bases; i++) sum += coef[s * num_bases + i] * bank[i * stride + k];
      dst[s * dst_stride + k] = sum;
    }
  }
}

// Batches of at most this many vectors run the dense kernel as a matrix-vector product
// that streams the bank once (memory-bound: libtorch's GEMM, MKL's AVX2 code on AMD CPUs,
// read the bank at a quarter of the memory's speed there); larger ones as batch-reduce
// GEMMs.
constexpr int64_t kStreamBatch = 4;

typedef float Vec8 __attribute__((vector_size(32)));
typedef float Vec4 __attribute__((vector_size(16)));

// Sum of a vector's sixteen lanes, halving it (two vector adds, then four lanes). Always
// inlined: called apart (unoptimized builds), a 64-byte vector would pass from the AVX-512
// clone of its caller to code built for the default target, whose ABI passes it otherwise.
inline __attribute__((always_inline)) float lanes(Vec16 v) {
  Vec8 lo, hi;
  __builtin_memcpy(&lo, &v, sizeof lo);
  __builtin_memcpy(&hi, reinterpret_cast<const char*>(&v) + sizeof lo, sizeof hi);
  const Vec8 s8 = lo + hi;
  Vec4 l4, h4;
  __builtin_memcpy(&l4, &s8, sizeof l4);
  __builtin_memcpy(&h4, reinterpret_cast<const char*>(&s8) + sizeof l4, sizeof h4);
  const Vec4 s4 = l4 + h4;
  return (s4[0] + s4[2]) + (s4[1] + s4[3]);
}

// `t[r * count + b] = dot(rows[r * len ...], x[b * len ...])` for `r < num_rows` and
// `b < count` (at most `kStreamBatch`): each bank row read once for every vector. One
// vector takes four rows at a time (four independent sums: 1.45x one row at a time).
__attribute__((target_clones("avx512f", "avx2", "default"))) void dot_rows(
    float* t, const float* rows, int64_t num_rows, const float* x, int64_t count, int64_t len) {
  int64_t r = 0;
  if (count == 1) {
    for (; r + 4 <= num_rows; r += 4) {
      const float* w = rows + r * len;
      Vec16 acc0 = {}, acc1 = {}, acc2 = {}, acc3 = {};
      int64_t k = 0;
      for (; k + 16 <= len; k += 16) {
        Vec16 u, v0, v1, v2, v3;
        __builtin_memcpy(&u, x + k, sizeof u);
        __builtin_memcpy(&v0, w + k, sizeof u);
        __builtin_memcpy(&v1, w + len + k, sizeof u);
        __builtin_memcpy(&v2, w + 2 * len + k, sizeof u);
        __builtin_memcpy(&v3, w + 3 * len + k, sizeof u);
        acc0 += v0 * u;
        acc1 += v1 * u;
        acc2 += v2 * u;
        acc3 += v3 * u;
      }
      float sums[4] = {lanes(acc0), lanes(acc1), lanes(acc2), lanes(acc3)};
      for (; k < len; k++) {
        for (int64_t q = 0; q < 4; q++) sums[q] += w[q * len + k] * x[k];
      }
      for (int64_t q = 0; q < 4; q++) t[r + q] = sums[q];
    }
  }
  const float* x0 = x;
  const float* x1 = x + (count > 1 ? 1 : 0) * len;
  const float* x2 = x + (count > 2 ? 2 : 0) * len;
  const float* x3 = x + (count > 3 ? 3 : 0) * len;
  for (; r < num_rows; r++) {
    const float* w = rows + r * len;
    Vec16 acc0 = {}, acc1 = {}, acc2 = {}, acc3 = {};
    int64_t k = 0;
    for (; k + 16 <= len; k += 16) {
      Vec16 v, u0, u1, u2, u3;
      __builtin_memcpy(&v, w + k, sizeof v);
      __builtin_memcpy(&u0, x0 + k, sizeof v);
      __builtin_memcpy(&u1, x1 + k, sizeof v);
      __builtin_memcpy(&u2, x2 + k, sizeof v);
      __builtin_memcpy(&u3, x3 + k, sizeof v);
      acc0 += v * u0;
      acc1 += v * u1;
      acc2 += v * u2;
      acc3 += v * u3;
    }
    float sums[kStreamBatch] = {lanes(acc0), lanes(acc1), lanes(acc2), lanes(acc3)};
    for (; k < len; k++) {
      sums[0] += w[k] * x0[k];
      sums[1] += w[k] * x1[k];
      sums[2] += w[k] * x2[k];
      sums[3] += w[k] * x3[k];
    }
    for (int64_t b = 0; b < count; b++) t[r * count + b] = sums[b];
  }
}

// `y = act(y + bias[r])` over `rows` rows of `n` values, `ld` apart.
__attribute__((target_clones("avx512f", "avx2", "default"))) void epilogue(
    float* y, int64_t rows, int64_t n, int64_t ld, const float* bias, Act act, float lower,
    float upper) {
  for (int64_t r = 0; r < rows; r++) {
    const float b = bias == nullptr ? 0.0f : bias[r];
    float* p = y + r * ld;
    switch (act) {
      case Act::kNone:
        for (int64_t j = 0; j < n; j++) p[j] += b;
        break;
      case Act::kRelu:
        for (int64_t j = 0; j < n; j++) p[j] = std::max(p[j] + b, 0.0f);
        break;
      case Act::kClamp:
        for (int64_t j = 0; j < n; j++) p[j] = std::min(std::max(p[j] + b, lower), upper);
        break;
      case Act::kHardswish:
        for (int64_t j = 0; j < n; j++) {
          const float v = p[j] + b;
          p[j] = v * std::min(std::max(v + 3.0f, 0.0f), 6.0f) / 6.0f;
        }
        break;
      case Act::kHardsigmoid:
        for (int64_t j = 0; j < n; j++) {
          p[j] = std::min(std::max(p[j] + b + 3.0f, 0.0f), 6.0f) / 6.0f;
        }
        break;
    }
  }
}

}  // namespace

extern "C" {

// 1 while CPU autocast is on for this thread: the kernels step aside (autocast would run
// the eager layers' GEMMs in its own dtype), checked before their arguments are built.
int bc_cpu_autocast_enabled() { return at::autocast::is_autocast_enabled(at::kCPU) ? 1 : 0; }

// `act(W_b x_b + bias_b)` for every sample `b` of `input` `[B, Cin, H, W]`, with
// `W_b = sum_i alpha[b, i] * bank[i]` (`alpha` `[B, N]`, `bank` `[N, Cout, Cin, 1, 1]`,
// `bias` `[B, Cout]` or null), written into a new `[B, Cout, H, W]` tensor `*out`. The
// activation `attr` is named as for the fused convolution ("none", "relu", "hardtanh"
// with `lower`/`upper`, "hardswish", "hardsigmoid"). Every tensor must be fp32, on the
// CPU and contiguous; the caller checks (a mismatch is an error here, not a fallback).
// Under CPU autocast `*out` stays null (autocast would run the GEMM in its own dtype) and
// the caller runs the eager layers.
char* bc_pointwise_forward(at::Tensor* input, at::Tensor* alpha, at::Tensor* bank,
                           at::Tensor* bias, const char* attr, double lower, double upper,
                           at::Tensor** out) {
  return basis_shim::guarded("the per-sample 1x1 kernel", [&]() -> char* {
    *out = nullptr;
    if (at::autocast::is_autocast_enabled(at::kCPU)) return nullptr;
    const at::Tensor& x = *input;
    const at::Tensor& a = *alpha;
    const at::Tensor& w = *bank;
    Act act;
    if (!parse(attr, &act)) return message("the per-sample 1x1 kernel got an unknown activation");
    if (!(plain(x, 4) && plain(a, 2) && plain(w, 5))) return message("the per-sample 1x1 kernel needs contiguous fp32 CPU operands of 4, 2 and 5 dimensions");
    const int64_t batch = x.size(0), cin = x.size(1), hw = x.size(2) * x.size(3);
    const int64_t num_bases = w.size(0), cout = w.size(1);
    const bool fits = a.size(0) == batch && a.size(1) == num_bases && w.size(2) == cin &&
                      w.size(3) == 1 && w.size(4) == 1 && bias_fits(bias, batch, cout);
    if (!fits) return message("the per-sample 1x1 kernel got operands whose shapes do not match");
    at::Tensor y = at::empty({batch, cout, x.size(2), x.size(3)}, x.options());
    const float* xs = x.data_ptr<float>();
    const float* as = a.data_ptr<float>();
    const float* ws = w.data_ptr<float>();
    const float* bs = bias == nullptr ? nullptr : bias->data_ptr<float>();
    float* ys = y.data_ptr<float>();
    // Tasks: a block of output channels for a run of samples (and, where that gives fewer
    // than two tasks per thread, as at batch 1, a range of output pixels). Each task
    // synthesizes each of its samples' rows from the same bank rows (kept in L2).
    const int64_t per_row = num_bases * cin * static_cast<int64_t>(sizeof(float));
    const int64_t rows = std::min(std::max(kBankBytes / per_row / kMinRows * kMinRows, kMinRows),
                                  std::min(kMaxRows, cout));
    const int64_t blocks = (cout + rows - 1) / rows;
    const int64_t wanted = 2 * static_cast<int64_t>(at::get_num_threads());
    const int64_t runs = std::max<int64_t>(1, std::min(batch, (wanted + blocks - 1) / blocks));
    const int64_t per_run = (batch + runs - 1) / runs;
    const int64_t column_blocks = (hw + kColumns - 1) / kColumns;
    const int64_t splits =
        std::max<int64_t>(1, std::min(column_blocks, (wanted + blocks * runs - 1) / (blocks * runs)));
    const int64_t per_split = (column_blocks + splits - 1) / splits * kColumns;
    const auto lo = static_cast<float>(lower), hi = static_cast<float>(upper);
    at::parallel_for(0, blocks * runs * splits, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> kernel(static_cast<size_t>(kGroup * rows * cin));
      std::vector<float> coef(static_cast<size_t>(kGroup * num_bases));
      for (int64_t task = begin; task < end; task++) {
        const int64_t split = task % splits, run = task / splits % runs;
        const int64_t r0 = task / splits / runs * rows;
        const int64_t m = std::min(rows, cout - r0);
        const int64_t j_end = std::min(hw, (split + 1) * per_split);
        const int64_t b_end = std::min(batch, (run + 1) * per_run);
        for (int64_t g = run * per_run; g < b_end; g += kGroup) {
          const int64_t count = std::min(kGroup, b_end - g);
          std::fill(coef.begin(), coef.end(), 0.0f);
          std::copy(as + g * num_bases, as + (g + count) * num_bases, coef.begin());
          synthesize(kernel.data(), rows * cin, count, ws + r0 * cin, coef.data(), num_bases,
                     cout * cin, m * cin);
          for (int64_t s = 0; s < count; s++) {
            const int64_t b = g + s;
            const float* xb = xs + b * cin * hw;
            float* yb = ys + (b * cout + r0) * hw;
            const float* bb = bs == nullptr ? nullptr : bs + b * cout + r0;
            for (int64_t j = split * per_split; j < j_end; j += kColumns) {
              const int64_t n = std::min(kColumns, j_end - j);
              at::native::cpublas::brgemm(m, n, cin, cin, hw, hw, false,
                                          kernel.data() + s * rows * cin, xb + j, yb + j, false);
              epilogue(yb + j, m, n, hw, bb, act, lo, hi);
            }
          }
        }
      }
      at::native::cpublas::brgemm_release(false);
    });
    *out = new at::Tensor(std::move(y));
    return nullptr;
  });
}

// `y[b] = sum_i alpha[b, i] * bank[i] x[b] + bias[b]` for `x` `[B, Cin]`, `alpha` `[B, N]`,
// `bank` `[N, Cout, Cin]` and `bias` `[B, Cout]` or null, into a new `[B, Cout]` tensor
// `*out`. Requirements as for `bc_pointwise_forward` (null `*out` under CPU autocast).
char* bc_dense_forward(at::Tensor* input, at::Tensor* alpha, at::Tensor* bank, at::Tensor* bias,
                       at::Tensor** out) {
  return basis_shim::guarded("the per-sample dense kernel", [&]() -> char* {
    *out = nullptr;
    if (at::autocast::is_autocast_enabled(at::kCPU)) return nullptr;
    const at::Tensor& x = *input;
    const at::Tensor& a = *alpha;
    const at::Tensor& w = *bank;
    if (!(plain(x, 2) && plain(a, 2) && plain(w, 3))) return message("the per-sample dense kernel needs contiguous fp32 CPU operands of 2, 2 and 3 dimensions");
    const int64_t batch = x.size(0), cin = x.size(1), num_bases = w.size(0), cout = w.size(1);
    const bool fits = a.size(0) == batch && a.size(1) == num_bases && w.size(2) == cin &&
                      bias_fits(bias, batch, cout);
    if (!fits) return message("the per-sample dense kernel got operands whose shapes do not match");
    const float* ws = w.data_ptr<float>();
    const float* bs = bias == nullptr ? nullptr : bias->data_ptr<float>();
    if (batch <= kStreamBatch) {
      // t[i * cout + o, b] = bank[i, o] . x[b]; y[b, o] = sum_i alpha[b, i] t[i * cout + o, b].
      at::Tensor t = at::empty({num_bases * cout, batch}, x.options());
      at::Tensor y = at::empty({batch, cout}, x.options());
      const float* xs = x.data_ptr<float>();
      const float* as = a.data_ptr<float>();
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
      *out = new at::Tensor(std::move(y));
      return nullptr;
    }
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
    *out = new at::Tensor(std::move(y));
    return nullptr;
  });
}

}  // extern "C"
