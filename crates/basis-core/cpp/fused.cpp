// A C interface over oneDNN's fused convolution as libtorch registers it
// (`mkldnn::_convolution_pointwise`, the op PyTorch's compiler emits on the CPU): one
// convolution with its bias and activation in a single pass over the output. The op is
// not in tch's generated API, so it is called through the dispatcher. Every function
// catches C++ exceptions and returns them as a malloc'ed message.

#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/GradMode.h>

#include "shim.h"

#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>

namespace {

using basis_shim::message;

using Pointwise = at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                             at::IntArrayRef, at::IntArrayRef, at::IntArrayRef, int64_t,
                             c10::string_view, c10::List<std::optional<at::Scalar>>,
                             std::optional<c10::string_view>);

// The in-place binary form: `other += conv(X, W, B)` (oneDNN's sum post-op), then an
// optional activation.
using PointwiseAdd = at::Tensor&(at::Tensor&, const at::Tensor&, const at::Tensor&,
                                 const std::optional<at::Tensor>&, at::IntArrayRef,
                                 at::IntArrayRef, at::IntArrayRef, int64_t, c10::string_view,
                                 std::optional<at::Scalar>, std::optional<c10::string_view>,
                                 c10::List<std::optional<at::Scalar>>,
                                 std::optional<c10::string_view>);

const c10::TypedOperatorHandle<PointwiseAdd>* find_add_op() {
  static const std::optional<c10::OperatorHandle> handle =
      c10::Dispatcher::singleton().findOp({"mkldnn::_convolution_pointwise_", "binary"});
  if (!handle.has_value()) return nullptr;
  static const c10::TypedOperatorHandle<PointwiseAdd> typed = handle->typed<PointwiseAdd>();
  return &typed;
}

const c10::TypedOperatorHandle<Pointwise>* find_op() {
  static const std::optional<c10::OperatorHandle> handle =
      c10::Dispatcher::singleton().findOp({"mkldnn::_convolution_pointwise", ""});
  if (!handle.has_value()) return nullptr;
  static const c10::TypedOperatorHandle<Pointwise> typed = handle->typed<Pointwise>();
  return &typed;
}

// The dtype the fused op runs in for input `x`: its own, or CPU autocast's.
at::ScalarType run_kind(const at::Tensor& x) {
  at::ScalarType kind = x.scalar_type();
  if (at::autocast::is_autocast_enabled(at::kCPU)) {
    at::ScalarType target = at::autocast::get_autocast_dtype(at::kCPU);
    if (kind == at::kFloat || kind == target) kind = target;
  }
  return kind;
}

}  // namespace

extern "C" {

// The dtype the fused op would run in for these operands (as c10::ScalarType), in `*out`;
// -1 where it would not run (a gradient needed, not the CPU, another dtype, no oneDNN).
char* bc_fused_kind(at::Tensor* input, at::Tensor* weight, at::Tensor* bias, int64_t* out) {
  try {
    const at::Tensor& x = *input;
    const at::Tensor& w = *weight;
    bool grad = c10::GradMode::is_enabled() &&
                (x.requires_grad() || w.requires_grad() || (bias && bias->requires_grad()));
    at::ScalarType kind = run_kind(x);
    bool runs = !grad && x.device().is_cpu() && w.device().is_cpu() && x.dim() == 4 &&
                (kind == at::kFloat || kind == at::kBFloat16) && at::hasMKLDNN();
    *out = runs ? static_cast<int64_t>(kind) : -1;
    return nullptr;
  } catch (const std::exception& e) {
    return message(e.what());
  }
}

// `weight` in dtype `kind`, reordered once into the blocked layout oneDNN picks for an
// input of `input_size` (4 values), as an opaque oneDNN tensor `bc_fused_conv2d` takes.
char* bc_fused_pack(at::Tensor* weight, const int64_t* stride, const int64_t* padding,
                    const int64_t* dilation, int64_t groups, const int64_t* input_size,
                    int64_t kind, at::Tensor** out) {
  try {
    *out = nullptr;
    at::Tensor w = weight->to(static_cast<at::ScalarType>(kind)).contiguous().to_mkldnn();
    at::Tensor packed = at::mkldnn_reorder_conv2d_weight(
        w, at::IntArrayRef(padding, 2), at::IntArrayRef(stride, 2),
        at::IntArrayRef(dilation, 2), groups, at::IntArrayRef(input_size, 4));
    *out = new at::Tensor(std::move(packed));
    return nullptr;
  } catch (const std::exception& e) {
    return message(e.what());
  }
}

// 1 when autograd records operations on this thread (libtorch's grad mode), 0 under
// `no_grad`.
int bc_grad_enabled() { return c10::GradMode::is_enabled() ? 1 : 0; }

// 1 when libtorch has oneDNN and registers the fused op.
int bc_fused_available() {
  try {
    return at::hasMKLDNN() && find_op() != nullptr ? 1 : 0;
  } catch (...) {
    return 0;
  }
}

// conv2d(input, weight, bias) then the activation `attr` ("none", "relu", "hardswish",
// "hardsigmoid", "hardtanh" with `lower`/`upper`) in one oneDNN primitive. With
// `accumulate` (a residual), the convolution is added into it in place before the
// activation (oneDNN's sum post-op) and `*out` is that tensor; an `accumulate` that is not
// dense in the input's layout and the run dtype, or needs a gradient, leaves `*out` null. `*out` stays null when the
// fused op does not apply (no oneDNN, not a CPU tensor, a gradient would be needed, a
// dtype other than fp32/bf16): the caller then runs the unfused layers. Under CPU autocast
// the operands are cast to the autocast dtype first, as autocast casts `conv2d`'s.
char* bc_fused_conv2d(at::Tensor* input, at::Tensor* weight, at::Tensor* bias,
                      const int64_t* stride, const int64_t* padding, const int64_t* dilation,
                      int64_t groups, const char* attr, double lower, double upper,
                      at::Tensor* accumulate, at::Tensor** out) {
  try {
    *out = nullptr;
    const auto* op = find_op();
    if (op == nullptr || !at::hasMKLDNN()) return nullptr;
    at::Tensor x = *input;
    at::Tensor w = *weight;
    std::optional<at::Tensor> b;
    if (bias != nullptr) b = *bias;
    bool grad = c10::GradMode::is_enabled() &&
                (x.requires_grad() || w.requires_grad() || (b && b->requires_grad()));
    if (grad || !x.device().is_cpu() || !w.device().is_cpu() || x.dim() != 4) return nullptr;
    at::ScalarType kind = run_kind(x);
    if (kind != at::kFloat && kind != at::kBFloat16) return nullptr;
    if (w.is_mkldnn() && w.scalar_type() != kind) return nullptr;
    // The autocast state stays as it is: the op below has no autocast kernel, and the
    // operands already have the dtype autocast would give them.
    // Dense operands: oneDNN reads raw memory (an expanded bias, stride 0, would be read
    // past its one value); the input keeps its layout (NCHW or channels_last).
    x = x.to(kind).contiguous(x.suggest_memory_format());
    // One pixel per channel (a squeeze-excite gate): both layouts hold the same memory;
    // channels_last strides let oneDNN read it as it is (NCHW picks a blocked layout and
    // reorders the input and output around the convolution).
    if (x.size(2) * x.size(3) == 1) {
      int64_t c = x.size(1);
      x = x.as_strided(x.sizes(), {c, 1, c, c});
    }
    if (!w.is_mkldnn()) w = w.to(kind).contiguous();  // a prepacked weight is used as it is
    if (b) b = b->to(kind).contiguous();
    std::string act(attr);
    c10::List<std::optional<at::Scalar>> scalars;
    if (act == "hardtanh") {
      scalars.push_back(at::Scalar(lower));
      scalars.push_back(at::Scalar(upper));
    }
    if (accumulate != nullptr) {
      const auto* add = find_add_op();
      at::Tensor other = *accumulate;
      bool fits = add != nullptr && other.device().is_cpu() && other.scalar_type() == kind &&
                  !(c10::GradMode::is_enabled() && other.requires_grad()) &&
                  other.is_contiguous(x.suggest_memory_format());
      if (!fits) return nullptr;
      std::optional<c10::string_view> unary;
      if (act != "none") unary = c10::string_view(act);
      add->call(other, x, w, b, at::IntArrayRef(padding, 2), at::IntArrayRef(stride, 2),
                at::IntArrayRef(dilation, 2), groups, "add", std::nullopt, unary, scalars,
                std::nullopt);
      *out = new at::Tensor(std::move(other));
      return nullptr;
    }
    at::Tensor y = op->call(x, w, b, at::IntArrayRef(padding, 2), at::IntArrayRef(stride, 2),
                            at::IntArrayRef(dilation, 2), groups, act, scalars, std::nullopt);
    *out = new at::Tensor(std::move(y));
    return nullptr;
  } catch (const std::exception& e) {
    return message(e.what());
  } catch (...) {
    return message("unknown C++ exception in the fused convolution");
  }
}

void bc_free_message(char* text) { std::free(text); }

}  // extern "C"
