// SPDX-License-Identifier: GPL-2.0

//! The entry points of the kernel API (`include/neural_api.h`), exported
//! with `EXPORT_SYMBOL_GPL` by the C glue. The structs mirror the header's;
//! keep the two in sync. Each entry point checks its pointers and sizes
//! ([`crate::api::shape`]) before it makes slices of the caller's buffers,
//! then calls [`crate::api`].

use crate::api;
use core::slice;
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

/// `struct neural_predict_ex`.
#[repr(C)]
pub(crate) struct NeuralPredictEx {
    input_data: *const i32,
    output_data: *mut i32,
    num_samples: u32,
    input_size: u32,
    output_size: u32,
    timeout_ms: c_int,
    flags: u32,
    answer_flags: u32,
    generation: u32,
}

/// `struct neural_model_info`.
#[repr(C)]
pub(crate) struct NeuralModelInfo {
    input_size: u32,
    output_size: u32,
    max_batch: u32,
    generation: u32,
}

fn to_ret(r: Result) -> c_int {
    match r {
        Ok(()) => 0,
        Err(e) => e.to_errno(),
    }
}

/// Runs `num_samples` rows from `input` into `output`.
///
/// # Safety
///
/// Non-null `input` and `output` must be valid for `num_samples` rows of
/// `in_size` and `out_size` values, for the call (the header's contract).
unsafe fn predict_rows(
    input: *const i32,
    output: *mut i32,
    num_samples: usize,
    in_size: usize,
    out_size: usize,
    timeout_ms: c_int,
) -> Result {
    if input.is_null() || output.is_null() {
        return Err(EINVAL);
    }
    let (n_in, n_out) = api::shape(num_samples, in_size, Some(out_size))?;
    let deadline = api::deadline(timeout_ms)?;
    // SAFETY: Guaranteed by the caller; `shape` bounds the counts.
    let (inputs, outputs) = unsafe {
        (
            slice::from_raw_parts(input, n_in),
            slice::from_raw_parts_mut(output, n_out),
        )
    };
    api::run(inputs, outputs, num_samples, (in_size, out_size), &deadline)
}

/// `neural_api_predict()`: one sample.
#[no_mangle]
pub(crate) extern "C" fn neural_api_predict(req: *mut NeuralPredictionRequest) -> c_int {
    // SAFETY: A non-null `req` is valid (the header's contract).
    let Some(r) = (unsafe { req.as_ref() }) else {
        return EINVAL.to_errno();
    };
    to_ret((|| {
        let in_size = usize::try_from(r.input_size).map_err(|_| EINVAL)?;
        let out_size = usize::try_from(r.output_size).map_err(|_| EINVAL)?;
        // SAFETY: The caller's buffers hold `input_size` and `output_size`
        // values (the header's contract).
        unsafe {
            predict_rows(
                r.input_data,
                r.output_data,
                1,
                in_size,
                out_size,
                r.timeout_ms,
            )
        }
    })())
}

/// `neural_api_predict_batch()`: `num_samples` samples in one request.
#[no_mangle]
pub(crate) extern "C" fn neural_api_predict_batch(req: *mut NeuralBatchRequest) -> c_int {
    // SAFETY: A non-null `req` is valid (the header's contract).
    let Some(r) = (unsafe { req.as_ref() }) else {
        return EINVAL.to_errno();
    };
    // SAFETY: The caller's buffers hold `num_samples` rows (the header's
    // contract).
    to_ret(unsafe {
        predict_rows(
            r.input_data,
            r.output_data,
            r.num_samples as usize,
            r.input_size as usize,
            r.output_size as usize,
            r.timeout_ms,
        )
    })
}

/// `neural_api_predict_ex()`: `num_samples` samples with flags; writes
/// the answer's flags and generation.
#[no_mangle]
pub(crate) extern "C" fn neural_api_predict_ex(req: *mut NeuralPredictEx) -> c_int {
    // SAFETY: A non-null `req` is valid for reads and writes (the header's
    // contract).
    let Some(r) = (unsafe { req.as_mut() }) else {
        return EINVAL.to_errno();
    };
    to_ret((|| {
        if r.input_data.is_null() || r.output_data.is_null() {
            return Err(EINVAL);
        }
        let fallback = api::fallback_flags(r.flags)?;
        let num_samples = r.num_samples as usize;
        let (in_size, out_size) = (r.input_size as usize, r.output_size as usize);
        let (n_in, n_out) = api::shape(num_samples, in_size, Some(out_size))?;
        let deadline = api::deadline(r.timeout_ms)?;
        // SAFETY: The caller's buffers hold `num_samples` rows (the header's
        // contract); `shape` bounds the counts.
        let (inputs, outputs) = unsafe {
            (
                slice::from_raw_parts(r.input_data, n_in),
                slice::from_raw_parts_mut(r.output_data, n_out),
            )
        };
        let (answer_flags, generation) = api::run_ex(
            inputs,
            outputs,
            num_samples,
            (in_size, out_size),
            &deadline,
            fallback,
        )?;
        r.answer_flags = answer_flags;
        r.generation = generation;
        Ok(())
    })())
}

/// `neural_api_null()`: the round trip of a batch request without
/// inference; `output_data` and `output_size` are not used.
#[no_mangle]
pub(crate) extern "C" fn neural_api_null(req: *const NeuralBatchRequest) -> c_int {
    // SAFETY: A non-null `req` is valid (the header's contract).
    let Some(r) = (unsafe { req.as_ref() }) else {
        return EINVAL.to_errno();
    };
    to_ret((|| {
        if r.input_data.is_null() {
            return Err(EINVAL);
        }
        let n = r.num_samples as usize;
        let (n_in, _) = api::shape(n, r.input_size as usize, None)?;
        let deadline = api::deadline(r.timeout_ms)?;
        // SAFETY: The caller's buffer holds `num_samples` rows of
        // `input_size` values (the header's contract); `shape` bounds them.
        let inputs = unsafe { slice::from_raw_parts(r.input_data, n_in) };
        api::null(inputs, n, &deadline)
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
        // values (the header's contract).
        unsafe { predict_rows(input, output, 1, in_size, out_size, 0) }
    })())
}

/// `neural_api_get_info()`: the current model.
#[no_mangle]
pub(crate) extern "C" fn neural_api_get_info(info: *mut NeuralModelInfo) -> c_int {
    if info.is_null() {
        return EINVAL.to_errno();
    }
    to_ret((|| {
        let (input_size, output_size, max_batch, generation) = api::info()?;
        // SAFETY: A non-null `info` is valid for writes (the header's
        // contract).
        unsafe {
            info.write(NeuralModelInfo {
                input_size,
                output_size,
                max_batch,
                generation,
            })
        };
        Ok(())
    })())
}
