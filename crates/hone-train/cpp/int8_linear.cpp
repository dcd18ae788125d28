// Dynamic int8 Linear layers through libtorch's fbgemm kernels: what PyTorch's
// `torch.ao.quantization.quantize_dynamic` runs for `nn.Linear`. tch binds only ATen's
// native functions, and the fast int8 Linear is a dispatcher operator
// (`quantized::linear_prepack`) whose packed weights are a custom class, so hone reaches
// it through this file (compiled by hone-train's build script against the same
// libtorch's headers). The Rust side is `src/int8.rs`; tensors cross as `at::Tensor*`,
// as tch's own C API passes them.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/native/quantized/PackedParams.h>

#include <cstdlib>
#include <cstring>
#include <exception>

namespace {

struct Packed {
  c10::intrusive_ptr<LinearPackedParamsBase> params;
};

char* copy_message(const char* what) {
  size_t n = std::strlen(what);
  char* out = static_cast<char*>(std::malloc(n + 1));
  if (out != nullptr) {
    std::memcpy(out, what, n + 1);
  }
  return out;
}

}  // namespace

extern "C" {

// Quantizes `weight` ([out, in], float) per output channel to symmetric int8 and packs it
// with `bias` (may be null) for fbgemm. On failure returns null and sets `*error` (free
// it with hone_int8_free_error).
void* hone_int8_linear_pack(const at::Tensor* weight, const at::Tensor* bias, char** error) {
  try {
    at::Tensor w = weight->detach().to(at::kFloat).contiguous();
    at::Tensor max_abs = std::get<0>(w.abs().max(1));
    at::Tensor scales = (max_abs / 127.0).clamp_min(1e-12).to(at::kDouble);
    at::Tensor zero_points = at::zeros({w.size(0)}, at::kLong);
    at::Tensor qweight = at::quantize_per_channel(w, scales, zero_points, 0, at::kQInt8);
    std::optional<at::Tensor> b;
    if (bias != nullptr) {
      b = bias->detach().to(at::kFloat).contiguous();
    }
    static auto prepack =
        c10::Dispatcher::singleton()
            .findSchemaOrThrow("quantized::linear_prepack", "")
            .typed<c10::intrusive_ptr<LinearPackedParamsBase>(at::Tensor, std::optional<at::Tensor>)>();
    return new Packed{prepack.call(qweight, b)};
  } catch (const std::exception& e) {
    *error = copy_message(e.what());
    return nullptr;
  }
}

// `input @ W^T + b` with the packed int8 weights, the activations quantized per call
// (7-bit, as PyTorch's dynamic quantization does on x86). Returns a new tensor, or null
// with `*error` set.
at::Tensor* hone_int8_linear_forward(const void* packed, const at::Tensor* input, char** error) {
  try {
    const Packed* p = static_cast<const Packed*>(packed);
    at::Tensor x = input->contiguous();
    return new at::Tensor(p->params->apply_dynamic(x, /*reduce_range=*/true));
  } catch (const std::exception& e) {
    *error = copy_message(e.what());
    return nullptr;
  }
}

void hone_int8_linear_free(void* packed) { delete static_cast<Packed*>(packed); }

void hone_int8_free_error(char* error) { std::free(error); }

}  // extern "C"
