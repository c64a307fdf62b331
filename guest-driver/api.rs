// SPDX-License-Identifier: GPL-2.0

//! The kernel API for other modules: `include/neural_api.h`.
//!
//! The functions are `#[no_mangle] extern "C"` here and exported with
//! `EXPORT_SYMBOL_GPL` by the C glue. The structs mirror the header's; keep
//! the two in sync.
//!
//! A call copies the inputs into the request before it is sent and writes
//! the outputs into the caller's buffer only on success, in the caller's
//! context: after a timeout or a signal the caller's buffers are never
//! touched again (the late answer lands in the driver's own refcounted
//! request, which is freed when the device hands it back).

use crate::request::Deadline;
use kernel::ffi::c_int;
use kernel::prelude::*;

/// `struct neural_prediction_request`.
#[repr(C)]
pub(crate) struct NeuralPredictionRequest {
    input_data: *mut i32,
    output_data: *mut i32,
    input_size: c_int,
    output_size: c_int,
    timeout_ms: c_int,
}

/// `struct neural_batch_request`.
#[repr(C)]
pub(crate) struct NeuralBatchRequest {
    input_data: *const i32,
    output_data: *mut i32,
    num_samples: u32,
    input_size: u32,
    output_size: u32,
    timeout_ms: c_int,
}

/// `struct neural_model_info`.
#[repr(C)]
pub(crate) struct NeuralModelInfo {
    input_size: u32,
    output_size: u32,
    max_batch: u32,
    generation: u32,
}

/// The deadline of a call's `timeout_ms` (0: the module parameter).
fn deadline(timeout_ms: c_int) -> Result<Deadline> {
    let ms = u32::try_from(timeout_ms).map_err(|_| EINVAL)?;
    Ok(Deadline::after_ms_or_default(ms))
}

/// The caller's `num_samples` rows of `in_size` input values, or `EINVAL`
/// for a NULL pointer, no rows, a width of 0 or sizes above the protocol's
/// bounds.
///
/// # Safety
///
/// `input` must be valid for reads of `num_samples * in_size` values for
/// `'a`.
unsafe fn input_rows<'a>(
    input: *const i32,
    num_samples: usize,
    in_size: usize,
) -> Result<&'a [i32]> {
    if input.is_null()
        || num_samples == 0
        || num_samples > crate::protocol::MAX_BATCH as usize
        || in_size == 0
        || in_size > crate::protocol::MAX_DIM as usize
    {
        return Err(EINVAL);
    }
    // SAFETY: Guaranteed by the caller; the bounds above keep the product
    // small.
    Ok(unsafe { core::slice::from_raw_parts(input, num_samples * in_size) })
}

/// Runs `num_samples` rows and copies the outputs to `output` on success.
///
/// # Safety
///
/// `input` must be valid for reads of `num_samples * in_size` values and
/// `output` for writes of `num_samples * out_size` values, for the call.
unsafe fn run(
    input: *const i32,
    output: *mut i32,
    num_samples: usize,
    in_size: usize,
    out_size: usize,
    deadline: &Deadline,
) -> Result {
    if output.is_null() || out_size == 0 || out_size > crate::protocol::MAX_DIM as usize {
        return Err(EINVAL);
    }
    // SAFETY: Guaranteed by the caller.
    let inputs = unsafe { input_rows(input, num_samples, in_size) }?;
    let n_out = num_samples * out_size;
    let outputs = crate::predict::run(inputs, num_samples, Some((in_size, out_size)), deadline)?;
    if outputs.len() != n_out {
        return Err(EIO);
    }
    // SAFETY: Guaranteed by the caller; `outputs` is our own buffer.
    unsafe { core::ptr::copy_nonoverlapping(outputs.as_ptr(), output, n_out) };
    Ok(())
}

fn to_ret(r: Result) -> c_int {
    match r {
        Ok(()) => 0,
        Err(e) => e.to_errno(),
    }
}

/// `neural_api_predict()`: one sample.
#[no_mangle]
pub(crate) extern "C" fn neural_api_predict(req: *mut NeuralPredictionRequest) -> c_int {
    if req.is_null() {
        return EINVAL.to_errno();
    }
    // SAFETY: The caller passes a valid request (header contract).
    let r = unsafe { &*req };
    to_ret((|| {
        let in_size = usize::try_from(r.input_size).map_err(|_| EINVAL)?;
        let out_size = usize::try_from(r.output_size).map_err(|_| EINVAL)?;
        let deadline = deadline(r.timeout_ms)?;
        // SAFETY: The caller's buffers hold `input_size` and `output_size`
        // values (header contract).
        unsafe { run(r.input_data, r.output_data, 1, in_size, out_size, &deadline) }
    })())
}

/// `neural_api_predict_batch()`: `num_samples` samples in one request.
#[no_mangle]
pub(crate) extern "C" fn neural_api_predict_batch(req: *mut NeuralBatchRequest) -> c_int {
    if req.is_null() {
        return EINVAL.to_errno();
    }
    // SAFETY: The caller passes a valid request (header contract).
    let r = unsafe { &*req };
    to_ret((|| {
        let deadline = deadline(r.timeout_ms)?;
        // SAFETY: The caller's buffers hold `num_samples` rows (header
        // contract).
        unsafe {
            run(
                r.input_data,
                r.output_data,
                r.num_samples as usize,
                r.input_size as usize,
                r.output_size as usize,
                &deadline,
            )
        }
    })())
}

/// `neural_api_null()`: the round trip of a batch request without
/// inference; `output_data` and `output_size` are not used.
#[no_mangle]
pub(crate) extern "C" fn neural_api_null(req: *const NeuralBatchRequest) -> c_int {
    if req.is_null() {
        return EINVAL.to_errno();
    }
    // SAFETY: The caller passes a valid request (header contract).
    let r = unsafe { &*req };
    to_ret((|| {
        let deadline = deadline(r.timeout_ms)?;
        let n = r.num_samples as usize;
        // SAFETY: The caller's buffer holds `num_samples` rows of
        // `input_size` values (header contract).
        let inputs = unsafe { input_rows(r.input_data, n, r.input_size as usize) }?;
        crate::predict::null(inputs, n, &deadline).map(|_| ())
    })())
}

/// `neural_predict_production()`: one sample, the module's timeout.
#[no_mangle]
pub(crate) extern "C" fn neural_predict_production(
    input: *mut i32,
    output: *mut i32,
    input_size: c_int,
    output_size: c_int,
) -> c_int {
    to_ret((|| {
        let in_size = usize::try_from(input_size).map_err(|_| EINVAL)?;
        let out_size = usize::try_from(output_size).map_err(|_| EINVAL)?;
        // SAFETY: The caller's buffers hold `input_size` and `output_size`
        // values (header contract).
        unsafe {
            run(
                input,
                output,
                1,
                in_size,
                out_size,
                &Deadline::module_default(),
            )
        }
    })())
}

/// `neural_api_get_info()`: the current model.
#[no_mangle]
pub(crate) extern "C" fn neural_api_get_info(info: *mut NeuralModelInfo) -> c_int {
    if info.is_null() {
        return EINVAL.to_errno();
    }
    to_ret((|| {
        let cfg = crate::predict::config()?;
        // SAFETY: `info` is valid for writes (header contract).
        unsafe {
            info.write(NeuralModelInfo {
                input_size: cfg.input_dim(),
                output_size: cfg.output_dim(),
                max_batch: cfg.max_batch.max(1),
                generation: cfg.generation,
            })
        };
        Ok(())
    })())
}
