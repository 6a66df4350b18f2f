// The vectors the shims' kernels compute with (GCC/Clang vector extensions: sixteen floats
// are one AVX-512 register, two AVX2 ones), and bfloat16 read into them and stored from
// them.
//
// Every function a vector passes to or from is always inlined: called apart (unoptimized
// builds), a 64-byte vector would cross from a caller's AVX-512 clone into code built for
// the default target, whose ABI passes it otherwise (wrong values, not a crash).

#pragma once

#include <cstdint>
#include <cstring>

namespace basis_shim {

typedef float Vec16 __attribute__((vector_size(64)));
typedef float Vec8 __attribute__((vector_size(32)));
typedef float Vec4 __attribute__((vector_size(16)));
typedef uint16_t U16x16 __attribute__((vector_size(32)));
typedef uint32_t U32x16 __attribute__((vector_size(64)));

// A bfloat16 as its 16 bits (the upper half of an fp32's; at::BFloat16 holds exactly
// these).
typedef uint16_t Bf16;

inline float to_float(float v) { return v; }
inline float to_float(Bf16 v) {
  const uint32_t bits = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

// `v` to bfloat16, rounding to nearest even, NaN kept a NaN, as PyTorch's conversion does.
inline Bf16 to_bf16(float v) {
  if (v != v) return 0x7FC0u;
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  return static_cast<Bf16>((bits + (((bits >> 16) & 1u) + 0x7FFFu)) >> 16);
}

// `v` into `p` as `p`'s type.
inline void store1(float* p, float v) { *p = v; }
inline void store1(Bf16* p, float v) { *p = to_bf16(v); }

// Sixteen values from `p` as floats.
inline __attribute__((always_inline)) Vec16 load16(const float* p) {
  Vec16 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline __attribute__((always_inline)) Vec16 load16(const Bf16* p) {
  U16x16 h;
  std::memcpy(&h, p, sizeof h);
  const U32x16 bits = __builtin_convertvector(h, U32x16) << 16;
  Vec16 v;
  std::memcpy(&v, &bits, sizeof v);
  return v;
}

// The first `n` (at most 16) lanes of `v` (`sizeof(V)` bytes of `E`s) into `p`.
template <typename E, typename V>
inline __attribute__((always_inline)) void store_lanes(E* p, const V& v, int64_t n) {
  if (n == 16) {
    std::memcpy(p, &v, sizeof v);
    return;
  }
  E lanes[16];
  std::memcpy(lanes, &v, sizeof v);
  for (int64_t i = 0; i < n; i++) p[i] = lanes[i];
}

// The first `n` lanes of `v` into `p`; to bfloat16 as `to_bf16` rounds.
inline __attribute__((always_inline)) void store16(float* p, Vec16 v, int64_t n) {
  store_lanes(p, v, n);
}
inline __attribute__((always_inline)) void store16(Bf16* p, Vec16 v, int64_t n) {
  U32x16 bits;
  std::memcpy(&bits, &v, sizeof bits);
  U32x16 rounded = (bits + (((bits >> 16) & 1u) + 0x7FFFu)) >> 16;
  const U32x16 nan = U32x16{} + 0x7FC0u;
  rounded = (v != v) ? nan : rounded;
  store_lanes(p, __builtin_convertvector(rounded, U16x16), n);
}

// Sum of a vector's sixteen lanes, halving it (two vector adds, then four lanes).
inline __attribute__((always_inline)) float lanes(Vec16 v) {
  Vec8 lo, hi;
  std::memcpy(&lo, &v, sizeof lo);
  std::memcpy(&hi, reinterpret_cast<const char*>(&v) + sizeof lo, sizeof hi);
  const Vec8 s8 = lo + hi;
  Vec4 l4, h4;
  std::memcpy(&l4, &s8, sizeof l4);
  std::memcpy(&h4, reinterpret_cast<const char*>(&s8) + sizeof l4, sizeof h4);
  const Vec4 s4 = l4 + h4;
  return (s4[0] + s4[2]) + (s4[1] + s4[3]);
}

}  // namespace basis_shim
