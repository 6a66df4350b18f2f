// The per-sample 1x1 convolution of a basis layer at inference, through libtorch's
// batch-reduce GEMM (`cpublas::brgemm`, oneDNN's micro-kernel where libtorch has it).
//
// `bc_pointwise_forward` runs the layer in one pass per block of output channels: each
// sample's kernel rows are synthesized from the bank (rows read from the L2 cache, each
// read serving four samples) into a thread-local buffer (never written to memory as a
// `[B, Cout, Cin]` tensor), multiplied with the sample's input by the batch-reduce GEMM,
// and the bias and the activation are applied while the block is in cache. Eager libtorch
// needs three passes over memory for the same layer (synthesis, `baddbmm`, activation),
// and its batched GEMM is MKL's, which runs its AVX2 code on AMD CPUs.
//
// fp32, or bf16 where oneDNN's bf16 micro-kernel runs (`bc_bf16_gemm`): the kernel rows
// are then synthesized in fp32 and rounded to bf16, the input is packed in pairs of
// channels (the micro-kernel's VNNI layout), products accumulate in fp32, and the output
// is rounded once at the store. CPU, contiguous NCHW operands, no gradient: the caller
// checks these and runs the autograd path otherwise. Errors come back as messages
// (`shim.h`).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/autocast_mode.h>
#include <ATen/native/CPUBlas.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "act.h"
#include "shim.h"
#include "vec.h"

namespace {

using basis_shim::Act;
using basis_shim::activate;
using basis_shim::Bf16;
using basis_shim::load16;
using basis_shim::message;
using basis_shim::parse;
using basis_shim::store1;
using basis_shim::store16;
using basis_shim::to_float;
using basis_shim::Vec16;

// A contiguous CPU tensor of `dim` dimensions and type `type`.
bool plain(const at::Tensor& t, int64_t dim, at::ScalarType type) {
  return t.dim() == dim && t.scalar_type() == type && t.device().is_cpu() && t.is_contiguous();
}

// The bank rows one task synthesizes from (`N * rows * Cin` values) stay within this many
// bytes, so they are read from the core's L2 cache for every sample of the task: 8 rows for
// a 960-channel fp32 input with N = 8, 64 rows (the most) for narrow inputs.
constexpr int64_t kBankBytes = 384 * 1024;
constexpr int64_t kMinRows = 8;
constexpr int64_t kMaxRows = 64;
// Output pixels per GEMM call: the block the epilogue reads back from cache.
constexpr int64_t kColumns = 256;

// Samples whose kernel rows are synthesized together: each bank vector read from the L2
// cache serves this many samples (the read, not the multiply-add, bounds the synthesis).
constexpr int64_t kGroup = 4;

// `dst[s * dst_stride + k] = sum_i coef[s * num_bases + i] * bank[i * stride + k]` for
// `k < len` and `s < count` (at most `kGroup`): a group of samples' kernel rows, summed in
// fp32. `coef` holds `kGroup` rows of `num_bases` coefficients (rows past `count` are
// zeros).
template <typename T>
inline __attribute__((always_inline)) void synthesize_rows(T* dst, int64_t dst_stride,
                                                           int64_t count, const T* bank,
                                                           const float* coef, int64_t num_bases,
                                                           int64_t stride, int64_t len) {
  const float* c0 = coef;
  const float* c1 = coef + num_bases;
  const float* c2 = coef + 2 * num_bases;
  const float* c3 = coef + 3 * num_bases;
  int64_t k = 0;
  for (; k + 16 <= len; k += 16) {
    Vec16 acc0 = {}, acc1 = {}, acc2 = {}, acc3 = {};
    for (int64_t i = 0; i < num_bases; i++) {
      const Vec16 v = load16(bank + i * stride + k);
      acc0 += c0[i] * v;
      acc1 += c1[i] * v;
      acc2 += c2[i] * v;
      acc3 += c3[i] * v;
    }
    store16(dst + k, acc0, 16);
    if (count > 1) store16(dst + dst_stride + k, acc1, 16);
    if (count > 2) store16(dst + 2 * dst_stride + k, acc2, 16);
    if (count > 3) store16(dst + 3 * dst_stride + k, acc3, 16);
  }
  for (; k < len; k++) {
    for (int64_t s = 0; s < count; s++) {
      float sum = 0.0f;
      for (int64_t i = 0; i < num_bases; i++) {
        sum += coef[s * num_bases + i] * to_float(bank[i * stride + k]);
      }
      store1(dst + s * dst_stride + k, sum);
    }
  }
}

__attribute__((target_clones("avx512f", "avx2", "default"))) void synthesize(
    float* dst, int64_t dst_stride, int64_t count, const float* bank, const float* coef,
    int64_t num_bases, int64_t stride, int64_t len) {
  synthesize_rows(dst, dst_stride, count, bank, coef, num_bases, stride, len);
}

__attribute__((target_clones("avx512f", "avx2", "default"))) void synthesize(
    Bf16* dst, int64_t dst_stride, int64_t count, const Bf16* bank, const float* coef,
    int64_t num_bases, int64_t stride, int64_t len) {
  synthesize_rows(dst, dst_stride, count, bank, coef, num_bases, stride, len);
}

// `y = act(y + bias[r])` over `rows` rows of `n` values, `ld` apart (fp32, in place).
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

// `y = act(c + bias[r])` rounded to bf16, over `rows` rows of `n` values (`c` `ldc` apart,
// `y` `ldy` apart), for one activation `A` (its branch out of the loop).
template <Act A>
inline __attribute__((always_inline)) void store_rows(Bf16* y, int64_t ldy, const float* c,
                                                      int64_t ldc, int64_t rows, int64_t n,
                                                      const float* bias, float lower,
                                                      float upper) {
  for (int64_t r = 0; r < rows; r++) {
    const float b = bias == nullptr ? 0.0f : bias[r];
    const float* src = c + r * ldc;
    Bf16* dst = y + r * ldy;
    int64_t j = 0;
    for (; j + 16 <= n; j += 16) store16(dst + j, activate(load16(src + j) + b, A, lower, upper), 16);
    if (j < n) {
      Vec16 v = {};
      for (int64_t q = 0; q < n - j; q++) v[q] = src[j + q];
      store16(dst + j, activate(v + b, A, lower, upper), n - j);
    }
  }
}

__attribute__((target_clones("avx512f", "avx2", "default"))) void epilogue_bf16(
    Bf16* y, int64_t ldy, const float* c, int64_t ldc, int64_t rows, int64_t n,
    const float* bias, Act act, float lower, float upper) {
  switch (act) {
    case Act::kNone:
      return store_rows<Act::kNone>(y, ldy, c, ldc, rows, n, bias, lower, upper);
    case Act::kRelu:
      return store_rows<Act::kRelu>(y, ldy, c, ldc, rows, n, bias, lower, upper);
    case Act::kClamp:
      return store_rows<Act::kClamp>(y, ldy, c, ldc, rows, n, bias, lower, upper);
    case Act::kHardswish:
      return store_rows<Act::kHardswish>(y, ldy, c, ldc, rows, n, bias, lower, upper);
    case Act::kHardsigmoid:
      return store_rows<Act::kHardsigmoid>(y, ldy, c, ldc, rows, n, bias, lower, upper);
  }
}

// Channels `2 * pair` and `2 * pair + 1` of one sample's `[cin, hw]` bf16 input as the
// micro-kernel's pairs: `out[j] = (x[2 pair, j], x[2 pair + 1, j])`, zeros past `cin`.
__attribute__((target_clones("avx512f", "avx2", "default"))) void pack_pair(
    uint32_t* out, const Bf16* x, int64_t cin, int64_t hw, int64_t pair) {
  const Bf16* r0 = x + 2 * pair * hw;
  if (2 * pair + 1 < cin) {
    const Bf16* r1 = r0 + hw;
    for (int64_t j = 0; j < hw; j++) {
      out[j] = static_cast<uint32_t>(r0[j]) | (static_cast<uint32_t>(r1[j]) << 16);
    }
  } else {
    for (int64_t j = 0; j < hw; j++) out[j] = r0[j];
  }
}

// Whether libtorch's bf16 batch-reduce GEMM runs oneDNN's micro-kernel here and gives the
// right product: tried once on a small problem of exact values (it needs AVX-512; without
// it libtorch refuses pairs-packed operands).
bool bf16_gemm_works() {
  static const bool works = [] {
    try {
      constexpr int64_t m = 3, n = 16, k = 4;
      std::vector<Bf16> a(m * k), b(k * n);
      std::vector<float> c(m * n, -1.0f);
      for (int64_t i = 0; i < m * k; i++) a[i] = basis_shim::to_bf16(static_cast<float>(i % 5) - 2.0f);
      // b[kk][j] = kk - j % 3, stored as pairs: element (kk, j) at ((kk / 2) * n + j) * 2 + kk % 2.
      for (int64_t kk = 0; kk < k; kk++) {
        for (int64_t j = 0; j < n; j++) {
          b[((kk / 2) * n + j) * 2 + kk % 2] = basis_shim::to_bf16(static_cast<float>(kk - j % 3));
        }
      }
      at::native::cpublas::brgemm(m, n, k, k, n, n, false,
                                  reinterpret_cast<const at::BFloat16*>(a.data()),
                                  reinterpret_cast<const at::BFloat16*>(b.data()), c.data(), true);
      at::native::cpublas::brgemm_release(true);
      for (int64_t i = 0; i < m; i++) {
        for (int64_t j = 0; j < n; j++) {
          float want = 0.0f;
          for (int64_t kk = 0; kk < k; kk++) {
            want += to_float(a[i * k + kk]) * static_cast<float>(kk - j % 3);
          }
          if (c[i * n + j] != want) return false;
        }
      }
      return true;
    } catch (...) {
      return false;
    }
  }();
  return works;
}

// How a task splits the work: blocks of `rows` output channels, runs of `per_run` samples,
// and column ranges of `per_split` pixels.
struct Tiling {
  int64_t rows, blocks, runs, per_run, splits, per_split;
};

// Tasks: a block of output channels for a run of samples (and, where that gives fewer than
// two tasks per thread, as at batch 1, a range of output pixels). Each task synthesizes
// each of its samples' rows from the same bank rows (kept in L2).
Tiling tiling(int64_t batch, int64_t cin, int64_t cout, int64_t hw, int64_t num_bases,
              int64_t element) {
  Tiling t{};
  const int64_t per_row = num_bases * cin * element;
  t.rows = std::min(std::max(kBankBytes / per_row / kMinRows * kMinRows, kMinRows),
                    std::min(kMaxRows, cout));
  t.blocks = (cout + t.rows - 1) / t.rows;
  const int64_t wanted = 2 * static_cast<int64_t>(at::get_num_threads());
  t.runs = std::max<int64_t>(1, std::min(batch, (wanted + t.blocks - 1) / t.blocks));
  t.per_run = (batch + t.runs - 1) / t.runs;
  const int64_t column_blocks = (hw + kColumns - 1) / kColumns;
  t.splits = std::max<int64_t>(
      1, std::min(column_blocks, (wanted + t.blocks * t.runs - 1) / (t.blocks * t.runs)));
  t.per_split = (column_blocks + t.splits - 1) / t.splits * kColumns;
  return t;
}

// The products of one sample's block: `m` kernel rows (`k` apart) by `n` columns of its
// input from column `j` (fp32: the input itself, `[cin, hw]`; bf16: the input packed in
// pairs of channels, `[cin / 2, hw, 2]`), with the bias and the activation, into `y`'s
// rows (`hw` apart) from column `j`. fp32 accumulates in `y` itself, bf16 in `block`.
void block_product(int64_t m, int64_t n, int64_t k, int64_t hw, const float* a,
                   const float* input, int64_t j, float* y, float* /*block*/,
                   const float* bias, Act act, float lo, float hi) {
  at::native::cpublas::brgemm(m, n, k, k, hw, hw, false, a, input + j, y + j, false);
  epilogue(y + j, m, n, hw, bias, act, lo, hi);
}
void block_product(int64_t m, int64_t n, int64_t k, int64_t hw, const Bf16* a,
                   const Bf16* packed, int64_t j, Bf16* y, float* block, const float* bias,
                   Act act, float lo, float hi) {
  at::native::cpublas::brgemm(m, n, k, k, hw, n, false, reinterpret_cast<const at::BFloat16*>(a),
                              reinterpret_cast<const at::BFloat16*>(packed + 2 * j), block, true);
  epilogue_bf16(y + j, hw, block, n, m, n, bias, act, lo, hi);
}

// The layer (see `bc_pointwise_forward`) on fp32 (`T` float) or bf16 (`T` `Bf16`) input
// and bank. For bf16 the kernel rows have `cin` rounded up to even columns (a zero column
// for an odd `cin`) and the input is packed in pairs of channels first.
template <typename T>
at::Tensor forward(const at::Tensor& x, const float* as, const at::Tensor& w, const float* bs,
                   Act act, float lo, float hi) {
  constexpr bool kPairs = std::is_same_v<T, Bf16>;
  const int64_t batch = x.size(0), cin = x.size(1), hw = x.size(2) * x.size(3);
  const int64_t num_bases = w.size(0), cout = w.size(1);
  const int64_t kp = kPairs ? (cin + 1) / 2 * 2 : cin;
  at::Tensor y = at::empty({batch, cout, x.size(2), x.size(3)}, x.options());
  const auto* xs = static_cast<const T*>(x.data_ptr());
  const auto* ws = static_cast<const T*>(w.data_ptr());
  auto* ys = static_cast<T*>(y.data_ptr());
  // The GEMMs' input: fp32 reads `x`, bf16 its pairs-packed copy.
  at::Tensor packed = kPairs ? at::empty({batch, kp / 2, hw, 2}, x.options()) : x;
  const auto* ps = static_cast<const T*>(packed.data_ptr());
  if constexpr (kPairs) {
    auto* out = static_cast<uint32_t*>(packed.data_ptr());
    at::parallel_for(0, batch * kp / 2, 1, [&](int64_t begin, int64_t end) {
      for (int64_t q = begin; q < end; q++) {
        pack_pair(out + q * hw, xs + q / (kp / 2) * cin * hw, cin, hw, q % (kp / 2));
      }
    });
  }
  const Tiling t = tiling(batch, cin, cout, hw, num_bases, sizeof(T));
  at::parallel_for(0, t.blocks * t.runs * t.splits, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> kernel(static_cast<size_t>(kGroup * t.rows * kp), T{});
    std::vector<float> coef(static_cast<size_t>(kGroup * num_bases));
    std::vector<float> block(kPairs ? static_cast<size_t>(t.rows * kColumns) : 0);
    for (int64_t task = begin; task < end; task++) {
      const int64_t split = task % t.splits, run = task / t.splits % t.runs;
      const int64_t r0 = task / t.splits / t.runs * t.rows;
      const int64_t m = std::min(t.rows, cout - r0);
      const int64_t j_end = std::min(hw, (split + 1) * t.per_split);
      const int64_t b_end = std::min(batch, (run + 1) * t.per_run);
      for (int64_t g = run * t.per_run; g < b_end; g += kGroup) {
        const int64_t count = std::min(kGroup, b_end - g);
        std::fill(coef.begin(), coef.end(), 0.0f);
        std::copy(as + g * num_bases, as + (g + count) * num_bases, coef.begin());
        if (kp == cin) {
          synthesize(kernel.data(), t.rows * kp, count, ws + r0 * cin, coef.data(), num_bases,
                     cout * cin, m * cin);
        } else {
          for (int64_t r = 0; r < m; r++) {
            synthesize(kernel.data() + r * kp, t.rows * kp, count, ws + (r0 + r) * cin,
                       coef.data(), num_bases, cout * cin, cin);
          }
        }
        for (int64_t s = 0; s < count; s++) {
          const int64_t b = g + s;
          const float* bb = bs == nullptr ? nullptr : bs + b * cout + r0;
          for (int64_t j = split * t.per_split; j < j_end; j += kColumns) {
            block_product(m, std::min(kColumns, j_end - j), kp, hw,
                          kernel.data() + s * t.rows * kp, ps + b * kp * hw, j,
                          ys + (b * cout + r0) * hw, block.data(), bb, act, lo, hi);
          }
        }
      }
    }
    at::native::cpublas::brgemm_release(kPairs);
  });
  return y;
}

}  // namespace

extern "C" {

// 1 while CPU autocast is on for this thread: the kernels step aside (autocast would run
// the eager layers' GEMMs in its own dtype), checked before their arguments are built.
int bc_cpu_autocast_enabled() { return at::autocast::is_autocast_enabled(at::kCPU) ? 1 : 0; }

// 1 where the kernels take bf16 operands: libtorch's bf16 batch-reduce GEMM runs oneDNN's
// micro-kernel and gave the right product on a first try (needs AVX-512).
int bc_bf16_gemm() { return bf16_gemm_works() ? 1 : 0; }

// `act(W_b x_b + bias_b)` for every sample `b` of `input` `[B, Cin, H, W]`, with
// `W_b = sum_i alpha[b, i] * bank[i]` (`alpha` `[B, N]`, `bank` `[N, Cout, Cin, 1, 1]`,
// `bias` `[B, Cout]` or null), written into a new `[B, Cout, H, W]` tensor `*out`. The
// activation `attr` is named as for the fused convolution ("none", "relu", "hardtanh"
// with `lower`/`upper`, "hardswish", "hardsigmoid"). `input` and `bank` are both fp32, or
// both bf16 where `bc_bf16_gemm` is 1; `alpha` and `bias` are read in fp32; all on the CPU
// and contiguous. The caller checks (a mismatch is an error here, not a fallback). Under
// CPU autocast `*out` stays null (autocast would run the GEMM in its own dtype) and the
// caller runs the eager layers.
char* bc_pointwise_forward(at::Tensor* input, at::Tensor* alpha, at::Tensor* bank,
                           at::Tensor* bias, const char* attr, double lower, double upper,
                           at::Tensor** out) {
  return basis_shim::guarded("the per-sample 1x1 kernel", [&]() -> char* {
    *out = nullptr;
    if (at::autocast::is_autocast_enabled(at::kCPU)) return nullptr;
    const at::Tensor& x = *input;
    const at::Tensor& w = *bank;
    Act act;
    if (!parse(attr, &act)) return message("the per-sample 1x1 kernel got an unknown activation");
    const at::ScalarType type = x.scalar_type();
    const bool typed = type == at::kFloat || (type == at::kBFloat16 && bf16_gemm_works());
    if (!(typed && plain(x, 4, type) && plain(w, 5, type) && alpha->dim() == 2 &&
          alpha->device().is_cpu())) {
      return message("the per-sample 1x1 kernel needs contiguous CPU input and bank of 4 and 5 dimensions, both fp32 or both bf16 (where the bf16 GEMM runs), and coefficients of 2");
    }
    const at::Tensor a = alpha->to(at::kFloat).contiguous();
    const at::Tensor bf = bias == nullptr ? at::Tensor() : bias->to(at::kFloat).contiguous();
    const int64_t batch = x.size(0), cin = x.size(1);
    const int64_t num_bases = w.size(0), cout = w.size(1);
    const bool fits = a.size(0) == batch && a.size(1) == num_bases && w.size(2) == cin &&
                      w.size(3) == 1 && w.size(4) == 1 &&
                      (!bf.defined() ||
                       (bf.dim() == 2 && bf.size(0) == batch && bf.size(1) == cout));
    if (!fits) return message("the per-sample 1x1 kernel got operands whose shapes do not match");
    const float* as = a.data_ptr<float>();
    const float* bs = bf.defined() ? bf.data_ptr<float>() : nullptr;
    const auto lo = static_cast<float>(lower), hi = static_cast<float>(upper);
    at::Tensor y = type == at::kFloat ? forward<float>(x, as, w, bs, act, lo, hi)
                                      : forward<Bf16>(x, as, w, bs, act, lo, hi);
    *out = new at::Tensor(std::move(y));
    return nullptr;
  });
}

}  // extern "C"
