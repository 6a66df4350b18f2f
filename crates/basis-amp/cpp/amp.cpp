// libtorch's autocast for any device type: what tch's `autocast` (CUDA only) does not
// reach. Every function catches C++ exceptions and returns non-zero instead.
#include <ATen/autocast_mode.h>
#include <c10/core/DeviceType.h>
#include <c10/core/ScalarType.h>

extern "C" {

// Turn autocast on for `device` (a c10::DeviceType) with `dtype` (a c10::ScalarType),
// writing the previous state to `prev_enabled` and `prev_dtype`.
int basis_amp_enter(int device, int dtype, int* prev_enabled, int* prev_dtype) {
  try {
    auto type = static_cast<c10::DeviceType>(device);
    *prev_enabled = at::autocast::is_autocast_enabled(type) ? 1 : 0;
    *prev_dtype = static_cast<int>(at::autocast::get_autocast_dtype(type));
    at::autocast::set_autocast_enabled(type, true);
    at::autocast::set_autocast_dtype(type, static_cast<c10::ScalarType>(dtype));
    at::autocast::increment_nesting();
    return 0;
  } catch (...) {
    return 1;
  }
}

// Leave the region `basis_amp_enter` opened: restore the previous state; the cache of
// casted weights is cleared when the outermost region ends.
int basis_amp_exit(int device, int prev_enabled, int prev_dtype) {
  try {
    auto type = static_cast<c10::DeviceType>(device);
    if (at::autocast::decrement_nesting() == 0) {
      at::autocast::clear_cache();
    }
    at::autocast::set_autocast_enabled(type, prev_enabled != 0);
    at::autocast::set_autocast_dtype(type, static_cast<c10::ScalarType>(prev_dtype));
    return 0;
  } catch (...) {
    return 1;
  }
}

// Whether autocast is on for `device`.
int basis_amp_is_enabled(int device) {
  try {
    return at::autocast::is_autocast_enabled(static_cast<c10::DeviceType>(device)) ? 1 : 0;
  } catch (...) {
    return 0;
  }
}
}
