// SPDX-License-Identifier: GPL-2.0

//! virtio-nn: the guest driver of the paravirtual neural-network accelerator.
//!
//! The driver binds the virtio device [`protocol::VIRTIO_ID_NN`] (a vhost-user
//! daemon on the host runs the model) and offers the seed's interface:
//!
//! * `/proc/neural_network/predict` (0666): write comma-separated whole
//!   numbers, as many as the model's input width, each in
//!   `-32768..=32767`; they are sent as Q16.16 (`x << 16`). The write returns
//!   once the device has answered. A read returns the outputs as whole
//!   numbers (`y >> 16`, rounded down), joined with `,` plus `\n`.
//! * `/proc/neural_network/predict_q16` (0666): the same with raw Q16.16
//!   values (any `i32`) both ways: the exact answer.
//! * `/sys/kernel/neural_network/model_info`: model dims, device status,
//!   model generation, prediction count, request queues;
//!   `performance` (counters, latency percentiles, see [`stats`]) and
//!   `health` (the periodic health check, see [`health`]).
//! * `/dev/neural_network`: binary requests and batches (see [`devfile`]).
//! * A kernel API for other modules, `include/neural_api.h` (see [`api`]).
//!
//! Module parameters: `timeout_ms` (default 5000), `cache_ms` (result
//! cache expiry, default 1000, see [`cache`]), `cache_fallback_ms` (oldest
//! fallback answer, default 30000), `dev_mode` and `dev_gid` (who may open
//! `/dev/neural_network`, see [`devfile`]), `health_interval_ms`
//! (default 60000), `max_orphans` (abandoned requests in flight per uid
//! before `EAGAIN`, default 8, see [`orphans`]), `fallback_max_bytes`
//! (largest model copied for the CPU fallback, default 1 MiB, 0: none; see
//! [`fallback`]).
//!
//! Whose answer a read returns: each open file keeps the answer of its own
//! last successful write. A read on an open file that made no prediction
//! returns the last answer made in the caller's session by the caller's
//! euid (so that `echo ... > predict; cat predict` works), from a table per
//! file keyed by the pinned session `struct pid` and the euid (at most 8
//! sessions per uid, dropped when the session ends; see [`session`]);
//! `ENODATA` if there is none.
//!
//! Errors of a write (nothing changes on error): `EINVAL` for a malformed
//! or empty write, a write over 64 KiB, a value out of range, a wrong value
//! count, or a request the device calls malformed; `ENODEV` when there is no
//! device or it has no model; `ETIMEDOUT` when the device does not answer
//! within the module parameter `timeout_ms` (default 5000, 0 for no limit);
//! `EINTR` on a fatal signal; `EIO` for a failing device or an invalid
//! answer; `EAGAIN` when the caller's uid has `max_orphans` abandoned
//! requests in flight.
//!
//! Files: `device.rs` (the request queues, one per CPU, and predictions),
//! `device/probe.rs` (probe/remove, virtio callbacks), `events.rs` (the
//! event queue: model change notifications), `request.rs` (the request
//! object), `predict.rs` (the path every prediction takes), `config_snap.rs`,
//! `api.rs`, `devfile.rs`, `stats.rs`, `health.rs`, `cache.rs`, `procfs.rs`,
//! `session.rs`, `orphans.rs`, `sysfs.rs`, `model_copy.rs` (the copy of the
//! served model), `fallback.rs` (the CPU fallback); [`bind`], the binding layer that
//! holds all the driver's unchecked code (the C entry points, the C glue's
//! declarations, the kernel primitives the kernel crate lacks); from
//! nn-core: `protocol.rs` (the wire protocol), `proc_text.rs` (the /proc
//! text format), `dev_abi.rs` (the /dev binary layout), `fixed.rs`,
//! `reference.rs` and `model_view.rs` (the arithmetic, the forward pass and
//! the model file reader of the CPU fallback).

use bind::global::{Holder, ModuleGlobal};
use bind::rcu::RcuArc;
use bind::sys::DriverRegistration;
use core::sync::atomic::AtomicU64;
use kernel::prelude::*;
use kernel::sync::{new_mutex, Arc, Mutex};

// Files of nn-core shared verbatim with the host side (`core` only): the
// wire protocol, the text format of the /proc files and the binary layout of
// /dev/neural_network. Their items are `pub` for the other crates that use
// them, and not all are used here. Clippy leaves the naming lints below to
// nn-core's public API (avoid-breaking-exported-api), as on the host.
#[allow(dead_code, unreachable_pub)]
#[path = "../nn-core/src/dev_abi.rs"]
mod dev_abi;
#[allow(dead_code, unreachable_pub, clippy::wrong_self_convention)]
#[path = "../nn-core/src/proc_text.rs"]
mod proc_text;
#[allow(dead_code, unreachable_pub)]
#[allow(clippy::wrong_self_convention, clippy::enum_variant_names)]
#[path = "../nn-core/src/protocol.rs"]
mod protocol;
// The arithmetic the device runs, its scalar forward pass and the reader of
// the model file it serves (`GET_MODEL`): the CPU fallback answers with
// them, bit for bit as the device (`model_copy.rs`, `fallback.rs`).
#[allow(dead_code, unreachable_pub)]
#[path = "../nn-core/src/fixed.rs"]
mod fixed;
#[allow(dead_code, unreachable_pub)]
#[path = "../nn-core/src/model_view.rs"]
mod model_view;
#[allow(dead_code, unreachable_pub)]
#[path = "../nn-core/src/reference.rs"]
mod reference;

mod api;
mod bind;
mod cache;
mod config_snap;
mod devfile;
mod device;
mod events;
mod fallback;
mod health;
mod model_copy;
mod orphans;
mod predict;
mod procfs;
mod request;
mod session;
mod stats;
mod sysfs;

use bind::{glue, irq_lock};
use device::NnDevice;
use session::SessionTable;

module! {
    type: VirtioNnModule,
    name: "virtio_nn",
    author: "virtio-nn developers",
    description: "Driver of the virtio-nn paravirtual neural-network accelerator",
    license: "GPL",
}

/// State shared by the proc files, the sysfs file and the driver.
#[pin_data]
pub(crate) struct Globals {
    /// The bound device, if any: the reference that keeps it; taken by
    /// probe and remove only. Predictions find the device through
    /// [`Globals::current`] without taking a lock.
    #[pin]
    device: Mutex<Option<Arc<NnDevice>>>,
    /// The device of `device`, published for lock-free readers (RCU).
    current: RcuArc<NnDevice>,
    /// The last answer per session and uid, for `predict` and for
    /// `predict_q16`.
    #[pin]
    pub(crate) sessions: Mutex<[SessionTable; 2]>,
    /// Successful predictions since the module was loaded.
    pub(crate) predictions: AtomicU64,
    /// The result cache.
    #[pin]
    pub(crate) cache: cache::Cache,
    /// The CPU fallback's copy of the model (see [`model_copy`]), published
    /// for lock-free readers (RCU); replaced by the fetch work only.
    model_copy: RcuArc<model_copy::ModelCopy>,
}

impl Globals {
    /// The bound device, if any (lock-free: RCU).
    pub(crate) fn current_device(&self) -> Option<Arc<NnDevice>> {
        self.current.get()
    }

    /// The CPU fallback's copy of the model, if any (lock-free: RCU).
    pub(crate) fn model_copy(&self) -> Option<Arc<model_copy::ModelCopy>> {
        self.model_copy.get()
    }

    /// Replaces the copy (may sleep: waits for readers of the old one).
    pub(crate) fn set_model_copy(&self, copy: Option<Arc<model_copy::ModelCopy>>) {
        match copy {
            Some(c) => self.model_copy.set(c),
            None => self.model_copy.clear(),
        }
    }

    /// Whether a device is bound.
    pub(crate) fn has_device(&self) -> bool {
        self.device.lock().is_some()
    }

    /// Makes `dev` the bound device unless there is one; returns whether it
    /// did.
    pub(crate) fn publish(&self, dev: &Arc<NnDevice>) -> bool {
        let mut current = self.device.lock();
        if current.is_some() {
            return false;
        }
        *current = Some(dev.clone());
        self.current.set(dev.clone());
        true
    }

    /// Unbinds `dev` if it is the bound device; waits until no
    /// [`Globals::current_device`] call can still see it.
    pub(crate) fn unpublish(&self, dev: &Arc<NnDevice>) {
        let mut current = self.device.lock();
        if !current.as_ref().is_some_and(|d| Arc::ptr_eq(d, dev)) {
            return;
        }
        // Under the lock, so that a probe cannot publish another device in
        // between; waits for a grace period (process context: remove).
        self.current.clear();
        drop(current.take());
    }
}

/// The [`Globals`] of the loaded module: set before any entry point is
/// registered and cleared after all are gone.
static GLOBALS: ModuleGlobal<Globals> = ModuleGlobal::new();

/// The module's [`Globals`].
pub(crate) fn globals() -> Result<&'static Globals> {
    GLOBALS.get()
}

/// Creates the [`Globals`] and publishes them while the holder lives.
fn hold_globals() -> Result<Holder<Globals>> {
    let cache_init = cache::Cache::new()?;
    let globals = Arc::pin_init(
        pin_init!(Globals {
            device <- new_mutex!(None, "virtio_nn_device"),
            current: RcuArc::new(),
            sessions <- new_mutex!([SessionTable::new(), SessionTable::new()], "virtio_nn_sessions"),
            predictions: AtomicU64::new(0),
            cache <- cache_init,
            model_copy: RcuArc::new(),
        }),
        GFP_KERNEL,
    )?;
    Ok(GLOBALS.hold(globals))
}

/// The module. Fields are dropped in order: the health check first
/// (cancelled, waiting for a running check), the driver (waking every
/// waiter with `ENODEV`), the model copy's fetch work (disabled, waiting for
/// a running fetch), then the sysfs and proc entries (which wait for
/// their running callbacks), then the globals.
struct VirtioNnModule {
    _health: bind::sys::HealthWork,
    _driver: DriverRegistration,
    _fetch: bind::sys::FetchWork,
    _misc: bind::sys::MiscRegistration,
    _shrinker: bind::sys::ShrinkerRegistration,
    _sysfs: Option<bind::sysfs::SysfsDir>,
    _proc: bind::procfs::ProcEntries,
    _globals: Holder<Globals>,
}

impl kernel::Module for VirtioNnModule {
    fn init(_module: &'static ThisModule) -> Result<Self> {
        let globals = hold_globals()?;
        let proc = bind::procfs::ProcEntries::new()?;
        let sysfs = match bind::sysfs::SysfsDir::new() {
            Ok(s) => Some(s),
            Err(e) => {
                pr_warn!("cannot create /sys/kernel/neural_network: {:?}\n", e);
                None
            }
        };
        let shrinker = bind::sys::ShrinkerRegistration::new()?;
        let misc = bind::sys::MiscRegistration::new()?;
        // Before the driver, whose probe queues the first fetch; stopped
        // after it, when no event can queue one any more.
        let fetch = bind::sys::FetchWork::start();
        let driver = DriverRegistration::new()?;
        Ok(Self {
            _health: bind::sys::HealthWork::start(),
            _driver: driver,
            _fetch: fetch,
            _misc: misc,
            _shrinker: shrinker,
            _sysfs: sysfs,
            _proc: proc,
            _globals: globals,
        })
    }
}
