// SPDX-License-Identifier: GPL-2.0

//! The one path every prediction takes, whatever interface it came from
//! (`/proc`, `/dev/neural_network`, the exported kernel API, the health
//! check): finds the bound device, runs the request and records the
//! statistics; and the null request beside it.

use crate::protocol::DeviceConfig;
use crate::request::{Deadline, Op};
use crate::stats::STATS;
use core::sync::atomic::Ordering;
use kernel::bindings;
use kernel::prelude::*;
use kernel::time::Ktime;

/// Whether a prediction may be answered from the result cache.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum CachePolicy {
    /// Single samples use the cache (if `cache_ms` is not 0).
    Use,
    /// Always ask the device (health checks, `/dev/neural_network`).
    Bypass,
}

/// Runs `num_samples` rows of Q16.16 `inputs` through the current model
/// (see [`crate::device::NnDevice::predict`]), single samples through the
/// result cache; returns the outputs, row after row (kvmalloc'd: a batch's
/// may be megabytes).
pub(crate) fn run(
    inputs: &[i32],
    num_samples: usize,
    expect: Option<(usize, usize)>,
    deadline: &Deadline,
) -> Result<KVVec<i32>> {
    run_with_generation(inputs, num_samples, expect, deadline, CachePolicy::Use).map(|(o, _)| o)
}

/// [`run`] with a cache policy, also returning the model generation that
/// answered.
pub(crate) fn run_with_generation(
    inputs: &[i32],
    num_samples: usize,
    expect: Option<(usize, usize)>,
    deadline: &Deadline,
    cache: CachePolicy,
) -> Result<(KVVec<i32>, u32)> {
    let globals = crate::globals()?;
    // Before the device lookup (see `Cache::epoch`).
    let epoch = globals.cache.epoch();
    let device = globals.current_device();
    let Some(device) = device else {
        STATS.failure(false);
        return Err(ENODEV);
    };
    let expiry = crate::cache::expiry_ns();
    // What the cache entries must belong to: this uid, device and model.
    let cache_key = if num_samples == 1 && expiry > 0 && cache == CachePolicy::Use {
        let key = device
            .current_config(false)
            .ok()
            .map(|c| crate::cache::Key {
                uid: crate::bind::sys::current_euid(),
                epoch,
                generation: c.generation,
            });
        let fits = |o: &KVec<i32>| expect.map_or(true, |(i, n)| i == inputs.len() && n == o.len());
        if let Some(key) = &key {
            if let Some(out) = globals.cache.lookup(inputs, key, Some(expiry)) {
                if fits(&out) {
                    STATS.cache_lookup(true);
                    globals.predictions.fetch_add(1, Ordering::Relaxed);
                    return Ok((cached(&out)?, key.generation));
                }
            }
            STATS.cache_lookup(false);
        }
        key
    } else {
        None
    };
    let start = Ktime::ktime_get();
    let result = device.predict(Op::Predict, inputs, num_samples, expect, deadline);
    let ns = (Ktime::ktime_get() - start).to_ns();
    match &result {
        Ok((outputs, generation)) => {
            STATS.success(num_samples, ns.max(0) as u64);
            globals
                .predictions
                .fetch_add(num_samples as u64, Ordering::Relaxed);
            if let Some(key) = &cache_key {
                let key = crate::cache::Key {
                    generation: *generation,
                    ..*key
                };
                globals.cache.insert(inputs, outputs, &key);
            }
        }
        Err(e) => {
            let timed_out = e.to_errno() == -(bindings::ETIMEDOUT as i32);
            STATS.failure(timed_out);
            let max_age = crate::cache::fallback_max_age_ns();
            if let (true, Some(key), true) = (timed_out, &cache_key, max_age > 0) {
                // The seed's fallback: an expired answer beats none, if it
                // is not too old.
                if let Some(out) = globals.cache.lookup(inputs, key, Some(max_age)) {
                    STATS.cache_fallback();
                    globals.predictions.fetch_add(1, Ordering::Relaxed);
                    return Ok((cached(&out)?, key.generation));
                }
            }
        }
    }
    result
}

/// A cached answer (one sample) as [`run`] returns answers.
fn cached(out: &[i32]) -> Result<KVVec<i32>> {
    let mut v = KVVec::with_capacity(out.len(), GFP_KERNEL_ACCOUNT)?;
    v.extend_from_slice(out, GFP_KERNEL_ACCOUNT)?;
    Ok(v)
}

/// The null request: `num_samples` rows of `inputs` make the round trip to
/// the device, which reads them and answers without inference (the
/// transport's cost, beside [`run`]). Returns the generation that answered.
/// Not counted in the statistics of `performance`.
pub(crate) fn null(inputs: &[i32], num_samples: usize, deadline: &Deadline) -> Result<u32> {
    let device = crate::globals()?.current_device().ok_or(ENODEV)?;
    device
        .predict(Op::Null, inputs, num_samples, None, deadline)
        .map(|(_, generation)| generation)
}

/// The config of the current model (`ENODEV` without a device or model).
pub(crate) fn config() -> Result<DeviceConfig> {
    let globals = crate::globals()?;
    let device = globals.current_device().ok_or(ENODEV)?;
    device.current_config(false)
}

/// The current model's input width, output width and largest batch
/// (`ENODEV` without a device or model).
pub(crate) fn dims() -> Result<(usize, usize, usize)> {
    let cfg = config()?;
    Ok((
        cfg.input_dim() as usize,
        cfg.output_dim() as usize,
        cfg.max_batch.max(1) as usize,
    ))
}
