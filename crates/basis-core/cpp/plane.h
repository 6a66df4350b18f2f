// A depthwise plane in cache: one channel of one sample copied into a zero-padded fp32
// buffer, for stride 2 split into its even and odd padded columns, so that every tap of a
// kernel reads sixteen consecutive floats for sixteen consecutive outputs. The forward
// kernel (depthwise.cpp) and the weight gradient (depthwise_grad.cpp) read planes so.

#pragma once

#include <cstdint>
#include <cstring>

#include "vec.h"

namespace basis_shim {

// One padded row's floats in the buffer: the columns the taps read for every block of
// sixteen outputs (for stride 2, each of the even and odd halves).
inline int64_t row_width(int64_t k, int64_t s, int64_t wo) {
  const int64_t need = s == 1 ? wo + k - 1 : wo + (k - 1) / 2;
  return (need + 15) / 16 * 16 + 16;
}

inline void store_zeros(float* dst, int64_t n) {
  const Vec16 zero = {};
  for (int64_t i = 0; i < n; i += 16) std::memcpy(dst + i, &zero, sizeof zero);
}

// The plane `in` (`h x w`, fp32 or bf16) into `buf` with `p` zero rows and columns on
// every side: row `j` of the padded plane at `buf + j * S * wb`, for stride 2 its even
// padded columns first and its odd ones `wb` floats after (`wb = row_width(k, S, wo)`).
template <int S, typename T>
inline __attribute__((always_inline)) void pad_plane(const T* in, int64_t h, int64_t w,
                                                     int64_t p, int64_t wb, float* buf) {
  const int64_t stride_row = S * wb;
  for (int64_t j = 0; j < h + 2 * p; j++) {
    float* dst = buf + j * stride_row;
    store_zeros(dst, stride_row);
    const int64_t y = j - p;
    if (y < 0 || y >= h) continue;
    const T* src = in + y * w;
    if (S == 1) {
      int64_t x = 0;
      for (; x + 16 <= w; x += 16) store16(dst + p + x, load16(src + x), 16);
      for (; x < w; x++) dst[p + x] = to_float(src[x]);
      continue;
    }
    // Padded column q = x + p goes to the even half at q / 2 (q even) or the odd half.
    float* even = dst;
    float* odd = dst + wb;
    int64_t x = 0;
    if (p % 2 == 1) {
      odd[p / 2] = to_float(src[0]);
      x = 1;
    }
    for (; x + 32 <= w; x += 32) {
      const Vec16 a = load16(src + x);
      const Vec16 b = load16(src + x + 16);
#if defined(__clang__)
      const Vec16 e = __builtin_shufflevector(a, b, 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22,
                                              24, 26, 28, 30);
      const Vec16 o = __builtin_shufflevector(a, b, 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23,
                                              25, 27, 29, 31);
#else
      typedef int Index16 __attribute__((vector_size(64)));
      const Index16 evens = {0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30};
      const Index16 odds = {1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31};
      const Vec16 e = __builtin_shuffle(a, b, evens);
      const Vec16 o = __builtin_shuffle(a, b, odds);
#endif
      std::memcpy(even + (x + p) / 2, &e, sizeof e);
      std::memcpy(odd + (x + p) / 2, &o, sizeof o);
    }
    for (; x < w; x++) {
      const int64_t q = x + p;
      (q % 2 == 0 ? even : odd)[q / 2] = to_float(src[x]);
    }
  }
}

}  // namespace basis_shim
