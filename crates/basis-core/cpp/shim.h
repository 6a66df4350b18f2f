// What the C shims of this crate share: errors cross into Rust as malloc'ed messages (freed
// by `bc_free_message`), never as C++ exceptions.

#pragma once

#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>

namespace basis_shim {

// A malloc'ed copy of `text` (null if the allocation fails).
inline char* message(const char* text) {
  size_t n = std::strlen(text);
  char* out = static_cast<char*>(std::malloc(n + 1));
  if (out != nullptr) std::memcpy(out, text, n + 1);
  return out;
}

// `body()` (null or a message), with any C++ exception it throws turned into a message;
// `what` names the kernel in the message of an exception of unknown type.
template <class Body>
char* guarded(const char* what, Body&& body) {
  try {
    return body();
  } catch (const std::exception& e) {
    return message(e.what());
  } catch (...) {
    return message((std::string("unknown C++ exception in ") + what).c_str());
  }
}

}  // namespace basis_shim
