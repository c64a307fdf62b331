// SPDX-License-Identifier: GPL-2.0

//! Safe forms of the C glue calls that have no preconditions, and the
//! module-wide registrations, each undone when its value is dropped.

use super::glue;
use kernel::ffi::{c_long, c_ulong};
use kernel::prelude::*;

/// The module parameter `timeout_ms` (0: no limit).
pub(crate) fn timeout_ms() -> u32 {
    // SAFETY: Reads a module parameter; no preconditions.
    unsafe { glue::virtio_nn_timeout_ms() }
}

/// The module parameter `cache_ms`.
pub(crate) fn cache_ms() -> u32 {
    // SAFETY: Reads a module parameter; no preconditions.
    unsafe { glue::virtio_nn_cache_ms() }
}

/// The module parameter `cache_fallback_ms` (0: no fallback).
pub(crate) fn cache_fallback_ms() -> u32 {
    // SAFETY: Reads a module parameter; no preconditions.
    unsafe { glue::virtio_nn_cache_fallback_ms() }
}

/// The module parameter `max_orphans` (0: no limit).
pub(crate) fn max_orphans() -> u32 {
    // SAFETY: Reads a module parameter; no preconditions.
    unsafe { glue::virtio_nn_max_orphans() }
}

/// The module parameter `max_request_kib` (0: the protocol's largest).
pub(crate) fn max_request_kib() -> u32 {
    // SAFETY: Reads a module parameter; no preconditions.
    unsafe { glue::virtio_nn_max_request_kib() }
}

/// The module parameter `fallback_max_bytes`: the largest model file the
/// CPU fallback copies (0: no fallback).
pub(crate) fn fallback_max_bytes() -> u32 {
    // SAFETY: Reads a module parameter; no preconditions.
    unsafe { glue::virtio_nn_fallback_max_bytes() }
}

/// The standard CRC-32C (Castagnoli) of `data` (the kernel's
/// `__crc32c_le`, with the initial and final inversion).
pub(crate) fn crc32c(data: &[u8]) -> u32 {
    // SAFETY: `data` is valid for reads of `data.len()` bytes.
    unsafe { glue::virtio_nn_crc32c(data.as_ptr(), data.len()) }
}

/// `cond_resched()`: lets other tasks run (process context).
pub(crate) fn cond_resched() {
    // SAFETY: No preconditions; every caller runs in process context
    // without locks held.
    unsafe { glue::virtio_nn_cond_resched() }
}

/// Queues the model copy's fetch work (any context, interrupts included);
/// nothing happens outside the life of [`FetchWork`].
pub(crate) fn schedule_model_fetch() {
    // SAFETY: `queue_work` of a static work item, guarded by the glue's
    // start/stop; no preconditions.
    unsafe { glue::virtio_nn_fetch_schedule() }
}

/// `jiffies + msecs_to_jiffies(ms)`.
pub(crate) fn jiffies_after_ms(ms: u32) -> c_ulong {
    // SAFETY: Reads `jiffies` and converts `ms`; no preconditions.
    unsafe { glue::virtio_nn_jiffies_after_ms(ms) }
}

/// Jiffies left until `end`, 0 once it has passed.
pub(crate) fn jiffies_until(end: c_ulong) -> c_long {
    // SAFETY: Reads `jiffies`; no preconditions.
    unsafe { glue::virtio_nn_jiffies_until(end) }
}

/// The CPU the caller runs on (may change right after: a hint).
pub(crate) fn cpu() -> u32 {
    // SAFETY: `raw_smp_processor_id()`; no preconditions.
    unsafe { glue::virtio_nn_cpu() }
}

/// Whether a message a request can cause may be printed now (the driver's
/// one rate limit for such messages).
pub(crate) fn ratelimit() -> bool {
    // SAFETY: `__ratelimit()` of a static state; no preconditions.
    unsafe { glue::virtio_nn_ratelimit() }
}

/// The effective uid of the calling task (the kernel's namespace-free
/// `kuid_t` value).
pub(crate) fn current_euid() -> u32 {
    // SAFETY: Reads the caller's credentials; no preconditions.
    unsafe { glue::virtio_nn_current_euid() }
}

/// Whether the caller may open `/dev/neural_network` (module parameter
/// `dev_gid`: membership of the group, or `CAP_DAC_OVERRIDE`).
pub(crate) fn dev_allowed() -> bool {
    // SAFETY: Reads the caller's credentials; no preconditions.
    unsafe { glue::virtio_nn_dev_allowed() }
}

/// Waits for an RCU grace period (may sleep).
pub(crate) fn synchronize_rcu() {
    // SAFETY: No preconditions besides process context, which every caller
    // (remove, module exit) has.
    unsafe { kernel::bindings::synchronize_rcu() };
}

/// The registered virtio driver; unregistered on drop.
pub(crate) struct DriverRegistration(());

impl DriverRegistration {
    /// Registers the static `virtio_driver`; probe may run from now on.
    pub(crate) fn new() -> Result<Self> {
        // SAFETY: The driver table is static and registered once (the
        // module holds one `DriverRegistration`).
        kernel::error::to_result(unsafe { glue::virtio_nn_register_driver() })?;
        Ok(Self(()))
    }
}

impl Drop for DriverRegistration {
    fn drop(&mut self) {
        // SAFETY: Registered in `new`. This removes the bound device, which
        // fails its requests in flight.
        unsafe { glue::virtio_nn_unregister_driver() };
    }
}

/// The result cache's shrinker; freed on drop.
pub(crate) struct ShrinkerRegistration(());

impl ShrinkerRegistration {
    /// Allocates and registers the shrinker (its callbacks are
    /// `virtio_nn_cache_{count,scan}`).
    pub(crate) fn new() -> Result<Self> {
        // SAFETY: Registered once; the callbacks only use the module's
        // globals, which outlive it.
        kernel::error::to_result(unsafe { glue::virtio_nn_shrinker_register() })?;
        Ok(Self(()))
    }
}

impl Drop for ShrinkerRegistration {
    fn drop(&mut self) {
        // SAFETY: Registered in `new`; `shrinker_free` waits for running
        // callbacks.
        unsafe { glue::virtio_nn_shrinker_unregister() };
    }
}

/// The periodic health check's delayed work; cancelled on drop.
pub(crate) struct HealthWork(());

impl HealthWork {
    /// Initialises the work and schedules its first run after
    /// `health_interval_ms` (unless 0).
    pub(crate) fn start() -> Self {
        // SAFETY: Called once per module load (the module holds one
        // `HealthWork`); the work only uses the module's globals.
        unsafe { glue::virtio_nn_health_start() };
        Self(())
    }
}

impl Drop for HealthWork {
    fn drop(&mut self) {
        // SAFETY: Started in `start`; `cancel_delayed_work_sync` waits for a
        // running check.
        unsafe { glue::virtio_nn_health_stop() };
    }
}

/// `/dev/neural_network`; deregistered on drop.
pub(crate) struct MiscRegistration(());

impl MiscRegistration {
    /// Registers the static miscdevice.
    pub(crate) fn new() -> Result<Self> {
        // SAFETY: The miscdevice is static and registered once (the module
        // holds one `MiscRegistration`).
        kernel::error::to_result(unsafe { glue::virtio_nn_misc_register() })?;
        Ok(Self(()))
    }
}

impl Drop for MiscRegistration {
    fn drop(&mut self) {
        // SAFETY: Registered in `new`. Open files keep the module (the
        // fops' owner), so none is left when this runs at unload.
        unsafe { glue::virtio_nn_misc_deregister() };
    }
}

/// The model copy's fetch work (`model_copy.rs`); disabled and waited for
/// on drop.
pub(crate) struct FetchWork(());

impl FetchWork {
    /// Initialises the work; [`schedule_model_fetch`] queues it from now on.
    pub(crate) fn start() -> Self {
        // SAFETY: Called once per module load (the module holds one
        // `FetchWork`); the work only uses the module's globals.
        unsafe { glue::virtio_nn_fetch_start() };
        Self(())
    }
}

impl Drop for FetchWork {
    fn drop(&mut self) {
        // SAFETY: Started in `start`; `disable_work_sync` waits for a running
        // fetch and makes later schedules no-ops.
        unsafe { glue::virtio_nn_fetch_stop() };
    }
}
