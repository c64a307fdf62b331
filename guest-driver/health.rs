// SPDX-License-Identifier: GPL-2.0

//! The health check: `/sys/kernel/neural_network/health`.
//!
//! Every `health_interval_ms` (module parameter, default 60000; 0 stops
//! it, from the next run on) a delayed work item (in the C glue, on
//! `system_long_wq`: a check may wait up to 5 s) runs a
//! prediction with all-zero inputs (never answered from the result cache
//! or by the CPU fallback)
//! and reads the device status; writing
//! anything to `health` runs one check at once. The result goes to `health`
//! and, when it changes (healthy ↔ failing), to the kernel log:
//!
//! ```text
//! status: ok
//! device: active
//! last_check_s: 12
//! last_result: 0
//! last_latency_us: 350
//! checks: 3
//! failures: 0
//! consecutive_errors: 0
//! ```
//!
//! `status` is `ok`, `failing` or `unknown` (no check yet); `last_check_s`
//! is the time of the last check in seconds since boot; `last_result` is 0
//! or the negative errno of the last check.

use crate::predict::{CachePolicy, Fallback};
use crate::request::Deadline;
use core::fmt::{self, Write};
use core::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use kernel::prelude::*;
use kernel::time::Ktime;

/// The health state.
pub(crate) struct Health {
    checks: AtomicU64,
    failures: AtomicU64,
    consecutive: AtomicU64,
    last_ns: AtomicU64,
    last_latency_ns: AtomicU64,
    last_result: AtomicI32,
}

/// The health state of the loaded module.
pub(crate) static HEALTH: Health = Health {
    checks: AtomicU64::new(0),
    failures: AtomicU64::new(0),
    consecutive: AtomicU64::new(0),
    last_ns: AtomicU64::new(0),
    last_latency_ns: AtomicU64::new(0),
    last_result: AtomicI32::new(0),
};

/// How long a health check waits for the device at most.
const CHECK_TIMEOUT_MS: u32 = 5000;

/// One check: a zero-input prediction. Returns 0 or a negative errno.
fn probe_device() -> i32 {
    let result = (|| -> Result {
        let (in_dim, _, _) = crate::predict::dims()?;
        let zeros = KVec::from_elem(0i32, in_dim, GFP_KERNEL)?;
        let ms = crate::bind::sys::timeout_ms();
        let ms = if ms == 0 {
            CHECK_TIMEOUT_MS
        } else {
            ms.min(CHECK_TIMEOUT_MS)
        };
        crate::predict::run_with_generation(
            &zeros,
            1,
            None,
            &Deadline::after_ms(ms),
            CachePolicy::Bypass,
            Fallback::Deny,
        )?;
        Ok(())
    })();
    match result {
        Ok(()) => 0,
        Err(e) => e.to_errno(),
    }
}

impl Health {
    /// Runs one check and records it; logs a change of state.
    pub(crate) fn check(&self) {
        let start = Ktime::ktime_get();
        let result = probe_device();
        let end = Ktime::ktime_get();
        let first = self.checks.fetch_add(1, Ordering::Relaxed) == 0;
        let was_ok = self.last_result.swap(result, Ordering::Relaxed) == 0;
        self.last_ns
            .store(end.to_ns().max(0) as u64, Ordering::Relaxed);
        self.last_latency_ns
            .store((end - start).to_ns().max(0) as u64, Ordering::Relaxed);
        if result == 0 {
            self.consecutive.store(0, Ordering::Relaxed);
            if first || !was_ok {
                pr_info!("health check: ok\n");
            }
        } else {
            self.failures.fetch_add(1, Ordering::Relaxed);
            self.consecutive.fetch_add(1, Ordering::Relaxed);
            if first || was_ok {
                pr_warn!("health check: failing ({})\n", result);
            }
        }
    }

    /// Writes the `key: value` lines of `health`; `device` is the device
    /// status as `model_info` shows it.
    pub(crate) fn show(&self, w: &mut impl Write, device: &str) -> fmt::Result {
        let checks = self.checks.load(Ordering::Relaxed);
        let result = self.last_result.load(Ordering::Relaxed);
        let status = match (checks, result) {
            (0, _) => "unknown",
            (_, 0) => "ok",
            _ => "failing",
        };
        write!(
            w,
            "status: {}\ndevice: {}\nlast_check_s: {}\nlast_result: {}\nlast_latency_us: {}\n\
             checks: {}\nfailures: {}\nconsecutive_errors: {}\n",
            status,
            device,
            self.last_ns.load(Ordering::Relaxed) / 1_000_000_000,
            result,
            self.last_latency_ns.load(Ordering::Relaxed) / 1000,
            checks,
            self.failures.load(Ordering::Relaxed),
            self.consecutive.load(Ordering::Relaxed),
        )
    }
}

/// The periodic check's work callback (process context).
#[no_mangle]
pub(crate) extern "C" fn virtio_nn_health_run() {
    HEALTH.check();
}
