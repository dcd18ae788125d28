//! Dynamic int8 Linear layers for CPU inference: the weights quantized once per output
//! channel (symmetric int8) and packed for fbgemm, the activations quantized on each call,
//! as PyTorch's `quantize_dynamic` does for `nn.Linear`. The kernels are libtorch's own,
//! reached through `cpp/int8_linear.cpp` because tch binds only ATen's native functions
//! (BENCHMARKS.md, "Lever: int8": the natives tch binds are 25–40× slower than fp32 here,
//! fbgemm's about 2× faster). Results differ from fp32 by the quantization error, about
//! 1–2 % of a layer's output; a model's accuracy change is measured, never assumed.
//!
//! The one module of hone with `unsafe`: the calls into that C++, each with the
//! pointer contract it relies on.
#![allow(unsafe_code)]

use std::ffi::{c_char, c_void, CStr};
use std::ptr::NonNull;

use tch::{Device, Kind, TchError, Tensor};
use torch_sys::C_tensor;

extern "C" {
    fn hone_int8_linear_pack(
        weight: *const C_tensor,
        bias: *const C_tensor,
        error: *mut *mut c_char,
    ) -> *mut c_void;
    fn hone_int8_linear_forward(
        packed: *const c_void,
        input: *const C_tensor,
        error: *mut *mut c_char,
    ) -> *mut C_tensor;
    fn hone_int8_linear_free(packed: *mut c_void);
    fn hone_int8_free_error(error: *mut c_char);
}

/// Takes the C++ side's error message (and frees it).
fn take_error(error: *mut c_char) -> TchError {
    if error.is_null() {
        return TchError::Torch("int8 Linear: no result and no error".into());
    }
    // SAFETY: a non-null `error` is a NUL-terminated string the C++ side allocated with
    // malloc for this call; it is read once and freed once.
    let message = unsafe { CStr::from_ptr(error) }
        .to_string_lossy()
        .into_owned();
    unsafe { hone_int8_free_error(error) };
    TchError::Torch(message)
}

/// One Linear layer's packed int8 weights and fp32 bias.
pub(crate) struct PackedLinear {
    packed: NonNull<c_void>,
}

// SAFETY: the packed weights are written once, by `new`, and only read afterwards
// (fbgemm's `apply_dynamic` takes them as const); the layer moves between threads with
// the model that owns it (loaded on a loader thread, served on the inference thread).
unsafe impl Send for PackedLinear {}
unsafe impl Sync for PackedLinear {}

impl std::fmt::Debug for PackedLinear {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PackedLinear")
    }
}

impl PackedLinear {
    /// Quantizes and packs `weight` (`[out, in]`, as `nn.Linear` lays it out) with
    /// `bias`; CPU only.
    pub(crate) fn new(weight: &Tensor, bias: Option<&Tensor>) -> Result<Self, TchError> {
        if weight.device() != Device::Cpu || weight.dim() != 2 {
            return Err(TchError::Torch(format!(
                "int8 Linear: a 2-d CPU weight is needed, not {:?} on {:?}",
                weight.size(),
                weight.device()
            )));
        }
        let mut error: *mut c_char = std::ptr::null_mut();
        let bias = bias.map_or(std::ptr::null(), Tensor::as_ptr);
        // SAFETY: both pointers are live tensors for the duration of the call (or null
        // for no bias); the C++ side copies what it keeps.
        let packed = unsafe { hone_int8_linear_pack(weight.as_ptr(), bias, &mut error) };
        match NonNull::new(packed) {
            Some(packed) => Ok(Self { packed }),
            None => Err(take_error(error)),
        }
    }

    /// `xs @ W^T + b` in int8 (any leading dimensions, float input).
    pub(crate) fn forward(&self, xs: &Tensor) -> Result<Tensor, TchError> {
        let xs = if xs.kind() == Kind::Float {
            xs.shallow_clone()
        } else {
            xs.f_to_kind(Kind::Float)?
        };
        let mut error: *mut c_char = std::ptr::null_mut();
        // SAFETY: `self.packed` lives as long as `self`, `xs` for the call; the result is
        // a new `at::Tensor*` that `Tensor::from_ptr` takes ownership of (tch frees it).
        let out =
            unsafe { hone_int8_linear_forward(self.packed.as_ptr(), xs.as_ptr(), &mut error) };
        if out.is_null() {
            return Err(take_error(error));
        }
        Ok(unsafe { Tensor::from_ptr(out) })
    }
}

impl Drop for PackedLinear {
    fn drop(&mut self) {
        // SAFETY: made by `hone_int8_linear_pack`, freed once.
        unsafe { hone_int8_linear_free(self.packed.as_ptr()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relative_error(a: &Tensor, b: &Tensor) -> f64 {
        let diff = (a - b).norm().double_value(&[]);
        diff / b.norm().double_value(&[])
    }

    #[test]
    fn an_int8_linear_computes_what_the_fp32_one_does_within_quantization_error() {
        tch::manual_seed(0);
        let weight = Tensor::randn([96, 64], (Kind::Float, Device::Cpu)) * 0.05;
        let bias = Tensor::randn([96], (Kind::Float, Device::Cpu)) * 0.01;
        let xs = Tensor::randn([3, 7, 64], (Kind::Float, Device::Cpu));
        let packed = PackedLinear::new(&weight, Some(&bias)).expect("packed");
        let int8 = packed.forward(&xs).expect("forward");
        let fp32 = xs.linear(&weight, Some(&bias));
        assert_eq!(int8.size(), [3, 7, 96]);
        let error = relative_error(&int8, &fp32);
        assert!(error < 0.05, "relative error {error}");
        assert!(error > 0.0, "the int8 path ran (it cannot be exact)");
        // Without a bias, too.
        let packed = PackedLinear::new(&weight, None).expect("packed");
        let error = relative_error(
            &packed.forward(&xs).expect("forward"),
            &xs.linear::<Tensor>(&weight, None),
        );
        assert!(error < 0.05, "relative error {error}");
    }

    #[test]
    fn a_bad_shape_is_an_error_not_a_crash() {
        let weight = Tensor::randn([8, 4], (Kind::Float, Device::Cpu));
        let packed = PackedLinear::new(&weight, None).expect("packed");
        let wrong = Tensor::randn([2, 5], (Kind::Float, Device::Cpu));
        let message = packed.forward(&wrong).expect_err("refused").to_string();
        assert!(!message.is_empty());
        let three_d = Tensor::randn([2, 2, 2], (Kind::Float, Device::Cpu));
        assert!(PackedLinear::new(&three_d, None).is_err());
    }
}
