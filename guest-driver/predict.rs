// SPDX-License-Identifier: GPL-2.0

//! The one path every prediction takes, whatever interface it came from
//! (`/proc`, `/dev/neural_network`, the exported kernel API, the health
//! check): finds the bound device, runs the request and records the
//! statistics; and the null request beside it.

pub(crate) use crate::fallback::Fallback;
use crate::protocol::DeviceConfig;
use crate::request::{etimedout, Deadline, Op};
use crate::stats::STATS;
use core::sync::atomic::{AtomicI64, AtomicU32, Ordering};
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

/// An answer to a prediction.
pub(crate) struct Answer {
    /// The outputs, row after row (kvmalloc'd: a batch's may be
    /// megabytes).
    pub(crate) outputs: KVVec<i32>,
    /// The model generation that answered.
    pub(crate) generation: u32,
    /// Whether the CPU fallback answered (see [`crate::fallback`]).
    pub(crate) fallback: bool,
}

/// Runs `num_samples` rows of Q16.16 `inputs` through the current model
/// (see [`crate::device::NnDevice::predict`]), single samples through the
/// result cache, the CPU fallback answering when the device cannot;
/// returns the outputs, row after row.
pub(crate) fn run(
    inputs: &[i32],
    num_samples: usize,
    expect: Option<(usize, usize)>,
    deadline: &Deadline,
) -> Result<KVVec<i32>> {
    run_with_generation(
        inputs,
        num_samples,
        expect,
        deadline,
        CachePolicy::Use,
        Fallback::Allow,
    )
    .map(|a| a.outputs)
}

/// The CPU fallback's answer, counted, if it has one for the device's
/// error `e` (`e` itself otherwise; `EINVAL` for inputs of a width the copy
/// does not have).
fn fall_back(
    e: Error,
    inputs: &[i32],
    num_samples: usize,
    expect: Option<(usize, usize)>,
) -> Result<Answer> {
    if !crate::fallback::answers_error(e) {
        return Err(e);
    }
    let Some((outputs, generation)) = crate::fallback::answer(inputs, num_samples, expect)? else {
        return Err(e);
    };
    STATS.fallback_answer();
    crate::globals()?
        .predictions
        .fetch_add(num_samples as u64, Ordering::Relaxed);
    Ok(Answer {
        outputs,
        generation,
        fallback: true,
    })
}

/// [`run`] with a cache and a fallback policy, also returning the model
/// generation that answered and whether the fallback did.
pub(crate) fn run_with_generation(
    inputs: &[i32],
    num_samples: usize,
    expect: Option<(usize, usize)>,
    deadline: &Deadline,
    cache: CachePolicy,
    fallback: Fallback,
) -> Result<Answer> {
    let globals = crate::globals()?;
    let may_fall_back = fallback == Fallback::Allow;
    // Before the device lookup (see `Cache::epoch`).
    let epoch = globals.cache.epoch();
    let device = globals.current_device();
    let Some(device) = device else {
        STATS.failure(false);
        if may_fall_back {
            return fall_back(ENODEV, inputs, num_samples, expect);
        }
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
                    return Ok(Answer {
                        outputs: cached(&out)?,
                        generation: key.generation,
                        fallback: false,
                    });
                }
            }
            STATS.cache_lookup(false);
        }
        key
    } else {
        None
    };
    if may_fall_back && device.unresponsive() && crate::fallback::available() {
        // The device did not answer a request until its deadline and has
        // answered none since: the copy answers at once, without adding a
        // request to those the device holds (its late answers end this).
        return fall_back(etimedout(), inputs, num_samples, expect);
    }
    let start = Ktime::ktime_get();
    let mut result = device.predict(Op::Predict, inputs, num_samples, expect, deadline);
    if result
        .as_ref()
        .is_err_and(|e| e.to_errno() == ENOMEM.to_errno())
    {
        // No memory for the request or on the ring: free the result cache
        // and try once more.
        let freed = globals.cache.shrink(crate::cache::CACHE_ENTRIES);
        STATS.enomem_retry();
        if crate::bind::sys::ratelimit() {
            pr_warn!(
                "out of memory for a request: result cache shrunk ({} entries), trying again\n",
                freed
            );
        }
        result = device.predict(Op::Predict, inputs, num_samples, expect, deadline);
    }
    note_device_error(&device, &result);
    let ns = (Ktime::ktime_get() - start).to_ns();
    match result {
        Ok((outputs, generation)) => {
            STATS.success(num_samples, ns.max(0) as u64);
            globals
                .predictions
                .fetch_add(num_samples as u64, Ordering::Relaxed);
            if let Some(key) = &cache_key {
                let key = crate::cache::Key { generation, ..*key };
                globals.cache.insert(inputs, &outputs, &key);
            }
            crate::model_copy::note_generation(generation);
            Ok(Answer {
                outputs,
                generation,
                fallback: false,
            })
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
                    return Ok(Answer {
                        outputs: cached(&out)?,
                        generation: key.generation,
                        fallback: false,
                    });
                }
            }
            if may_fall_back {
                return fall_back(e, inputs, num_samples, expect);
            }
            Err(e)
        }
    }
}

/// Device requests that failed with `EIO` (status `ERROR`, `DEVICE_ERROR`,
/// an invalid answer) in a row.
static DEVICE_ERRORS: AtomicU32 = AtomicU32::new(0);

/// When the driver last reloaded after device errors (`ktime_get()`, ns).
static LAST_RELOAD_NS: AtomicI64 = AtomicI64::new(i64::MIN);

/// Device errors in a row that make the driver reload.
const RELOAD_AFTER_ERRORS: u32 = 3;

/// Least time between two reloads, in ns.
const RELOAD_INTERVAL_NS: i64 = 10_000_000_000;

/// Counts the device's errors in a row; after [`RELOAD_AFTER_ERRORS`] the
/// driver reloads (the design's answer to a device that keeps failing): it
/// reads config space again and fetches the model copy again, at most once
/// every 10 s, counted as `reloads` and logged.
fn note_device_error(device: &crate::device::NnDevice, result: &Result<(KVVec<i32>, u32)>) {
    match result {
        Ok(_) => DEVICE_ERRORS.store(0, Ordering::Relaxed),
        Err(e) if e.to_errno() == EIO.to_errno() => {
            let n = DEVICE_ERRORS
                .fetch_add(1, Ordering::Relaxed)
                .saturating_add(1);
            if n < RELOAD_AFTER_ERRORS {
                return;
            }
            let now = Ktime::ktime_get().to_ns();
            let last = LAST_RELOAD_NS.load(Ordering::Relaxed);
            if now.saturating_sub(last) < RELOAD_INTERVAL_NS
                || LAST_RELOAD_NS
                    .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                    .is_err()
            {
                return;
            }
            DEVICE_ERRORS.store(0, Ordering::Relaxed);
            STATS.reload();
            pr_warn!(
                "{} device errors in a row: reading config space and fetching the model again\n",
                n
            );
            device.mark_config_stale();
            crate::model_copy::reload();
        }
        Err(_) => {}
    }
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
/// When the device has none to give and the CPU fallback has a copy, the
/// copy's.
pub(crate) fn config() -> Result<DeviceConfig> {
    let globals = crate::globals()?;
    let result = globals
        .current_device()
        .ok_or(ENODEV)
        .and_then(|d| d.current_config(false));
    match result {
        Err(e) if crate::fallback::enabled() && crate::fallback::answers_error(e) => {
            globals.model_copy().map(|c| c.config()).ok_or(e)
        }
        r => r,
    }
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
