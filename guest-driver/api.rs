// SPDX-License-Identifier: GPL-2.0

//! The kernel API for other modules (`include/neural_api.h`): what each
//! call does once its C arguments are slices (the entry points and the
//! header's structs are in [`crate::bind::api`]).
//!
//! A call copies the inputs into the request before it is sent and writes
//! the outputs into the caller's buffer only on success, in the caller's
//! context: after a timeout or a signal the caller's buffers are never
//! touched again (the late answer lands in the driver's own refcounted
//! request, which is freed when the device hands it back).

use crate::predict::{CachePolicy, Fallback};
use crate::protocol::{MAX_BATCH, MAX_DIM};
use crate::request::Deadline;
use kernel::prelude::*;

/// The deadline of a call's `timeout_ms` (0: the module parameter; a
/// negative value is `EINVAL`).
pub(crate) fn deadline(timeout_ms: i32) -> Result<Deadline> {
    let ms = u32::try_from(timeout_ms).map_err(|_| EINVAL)?;
    Ok(Deadline::after_ms_or_default(ms))
}

/// Checks the shape of a call: `num_samples` rows of `in_size` inputs (and
/// of `out_size` outputs, if any) within the protocol's bounds; `EINVAL`
/// otherwise. Returns the input and output value counts.
pub(crate) fn shape(
    num_samples: usize,
    in_size: usize,
    out_size: Option<usize>,
) -> Result<(usize, usize)> {
    let dim_ok = |d: usize| d != 0 && d <= MAX_DIM as usize;
    if num_samples == 0
        || num_samples > MAX_BATCH as usize
        || !dim_ok(in_size)
        || !out_size.map_or(true, dim_ok)
    {
        return Err(EINVAL);
    }
    let n_in = num_samples.checked_mul(in_size).ok_or(EINVAL)?;
    let n_out = num_samples
        .checked_mul(out_size.unwrap_or(0))
        .ok_or(EINVAL)?;
    Ok((n_in, n_out))
}

/// Runs the `num_samples` rows of `in_size` values of `inputs` and copies
/// the outputs (rows of `out_size`) to `outputs` on success (both of the
/// sizes [`shape`] gave).
pub(crate) fn run(
    inputs: &[i32],
    outputs: &mut [i32],
    num_samples: usize,
    (in_size, out_size): (usize, usize),
    deadline: &Deadline,
) -> Result {
    let answer = crate::predict::run(inputs, num_samples, Some((in_size, out_size)), deadline)?;
    if answer.len() != outputs.len() {
        return Err(EIO);
    }
    outputs.copy_from_slice(&answer);
    Ok(())
}

/// `NEURAL_API_NO_FALLBACK` of `neural_api_predict_ex()`'s flags.
const NO_FALLBACK: u32 = 1 << 0;
/// `NEURAL_API_ANSWER_FALLBACK` of its answer flags.
const ANSWER_FALLBACK: u32 = 1 << 0;

/// The fallback policy of `neural_api_predict_ex()`'s `flags` (`EINVAL`
/// for unknown bits).
pub(crate) fn fallback_flags(flags: u32) -> Result<Fallback> {
    match flags {
        0 => Ok(Fallback::Allow),
        NO_FALLBACK => Ok(Fallback::Deny),
        _ => Err(EINVAL),
    }
}

/// [`run`] with a fallback policy; returns the answer flags and the
/// generation that answered.
pub(crate) fn run_ex(
    inputs: &[i32],
    outputs: &mut [i32],
    num_samples: usize,
    (in_size, out_size): (usize, usize),
    deadline: &Deadline,
    fallback: Fallback,
) -> Result<(u32, u32)> {
    let answer = crate::predict::run_with_generation(
        inputs,
        num_samples,
        Some((in_size, out_size)),
        deadline,
        CachePolicy::Use,
        fallback,
    )?;
    if answer.outputs.len() != outputs.len() {
        return Err(EIO);
    }
    outputs.copy_from_slice(&answer.outputs);
    let flags = if answer.fallback { ANSWER_FALLBACK } else { 0 };
    Ok((flags, answer.generation))
}

/// The round trip of a batch without inference.
pub(crate) fn null(inputs: &[i32], num_samples: usize, deadline: &Deadline) -> Result {
    crate::predict::null(inputs, num_samples, deadline).map(|_| ())
}

/// The current model: input width, output width, largest batch,
/// generation.
pub(crate) fn info() -> Result<(u32, u32, u32, u32)> {
    let cfg = crate::predict::config()?;
    Ok((
        cfg.input_dim(),
        cfg.output_dim(),
        cfg.max_batch.max(1),
        cfg.generation,
    ))
}
