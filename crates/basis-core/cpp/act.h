// The activations the shims apply after a convolution, named as for oneDNN's fused
// convolution ("none", "relu", "hardtanh" with lower/upper bounds, "hardswish",
// "hardsigmoid"), on a float or on a GCC/Clang vector of floats.

#pragma once

#include <string>

namespace basis_shim {

enum class Act { kNone, kRelu, kClamp, kHardswish, kHardsigmoid };

// The activation named `attr`; false for an unknown name.
inline bool parse(const char* attr, Act* act) {
  const std::string a(attr);
  if (a == "none") *act = Act::kNone;
  else if (a == "relu") *act = Act::kRelu;
  else if (a == "hardtanh") *act = Act::kClamp;
  else if (a == "hardswish") *act = Act::kHardswish;
  else if (a == "hardsigmoid") *act = Act::kHardsigmoid;
  else return false;
  return true;
}

// `act(v)` lane by lane (`V` a float or a vector of floats); `lower`/`upper` bound
// "hardtanh". Hard swish and hard sigmoid multiply by 1/6 where PyTorch divides by 6
// (the same within a rounding). Always inlined, like every function a vector passes to
// or from (see `lanes` in pointwise.cpp).
template <typename V>
inline __attribute__((always_inline)) V activate(V v, Act act, float lower, float upper) {
  const V zero = {};
  const V six = zero + 6.0f;
  switch (act) {
    case Act::kNone:
      return v;
    case Act::kRelu:
      return v > zero ? v : zero;
    case Act::kClamp: {
      const V lo = zero + lower, hi = zero + upper;
      v = v > lo ? v : lo;
      return v < hi ? v : hi;
    }
    case Act::kHardswish: {
      V g = v + 3.0f;
      g = g > zero ? g : zero;
      g = g < six ? g : six;
      return v * g * (1.0f / 6.0f);
    }
    case Act::kHardsigmoid: {
      V g = v + 3.0f;
      g = g > zero ? g : zero;
      g = g < six ? g : six;
      return g * (1.0f / 6.0f);
    }
  }
  return v;
}

}  // namespace basis_shim
