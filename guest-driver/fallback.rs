// SPDX-License-Identifier: GPL-2.0

//! The CPU fallback: answers a prediction the device cannot answer from
//! the driver's copy of the model ([`crate::model_copy`]), with nn-core's
//! scalar reference, so the bits are the device's.
//!
//! It answers (in [`crate::predict`], the path every prediction takes) when
//! the device did not answer within the deadline (`ETIMEDOUT`), when there
//! is no device, it is being removed or has no model (`ENODEV`), when it
//! fails (`EIO`: status `ERROR`, `DEVICE_ERROR`, an invalid answer), when
//! it cannot take the request (`EAGAIN`: the caller's uid has `max_orphans`
//! requests the device still holds), and at once, without asking the
//! device, while the device is unresponsive (a request went unanswered
//! until its deadline and no answer came since). Its answers carry the
//! copy's generation, are counted in `performance`'s `fallback_answers` and
//! marked for the caller (the `/dev` answer's magic, the API's answer
//! flags). A caller may refuse it ([`Fallback::Deny`]: the `/dev` request
//! magic `NNRD`, the API flag `NEURAL_API_NO_FALLBACK`); the health check
//! always does. The work runs in the caller's context (process context,
//! integer arithmetic only), rescheduling between the samples of a batch;
//! its size is bounded by `fallback_max_bytes` (the largest model copied)
//! and the protocol's `MAX_BATCH`.

use crate::bind::sys;
use kernel::bindings;
use kernel::prelude::*;

/// Whether a prediction may be answered by the CPU fallback.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fallback {
    /// When the device cannot answer (see the module documentation).
    Allow,
    /// Never: the device's answer or an error.
    Deny,
}

/// Whether the fallback is on (`fallback_max_bytes` is not 0).
pub(crate) fn enabled() -> bool {
    sys::fallback_max_bytes() != 0
}

/// Whether the fallback answers a device request that failed with `e`.
pub(crate) fn answers_error(e: Error) -> bool {
    let errno = -e.to_errno();
    [
        bindings::ETIMEDOUT,
        bindings::ENODEV,
        bindings::EIO,
        bindings::EAGAIN,
    ]
    .iter()
    .any(|&x| x as i32 == errno)
}

/// Whether a copy would answer now (the fallback is on and has a copy).
pub(crate) fn available() -> bool {
    enabled() && crate::globals().is_ok_and(|g| g.model_copy().is_some())
}

/// Answers `num_samples` rows of `inputs` from the copy: the outputs and
/// the copy's generation, or `None` without a copy (or with the fallback
/// off). `EINVAL` for rows that are not the copy's width (or `expect` not
/// its widths).
pub(crate) fn answer(
    inputs: &[i32],
    num_samples: usize,
    expect: Option<(usize, usize)>,
) -> Result<Option<(KVVec<i32>, u32)>> {
    if !enabled() {
        return Ok(None);
    }
    let Some(copy) = crate::globals()?.model_copy() else {
        return Ok(None);
    };
    let outputs = copy.run(inputs, num_samples, expect)?;
    Ok(Some((outputs, copy.generation())))
}
