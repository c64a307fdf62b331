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
//!   model generation and prediction count.
//!
//! Whose answer a read returns: each open file keeps the answer of its own
//! last successful write. A read on an open file that made no prediction
//! returns the last answer made in the caller's session (so that
//! `echo ... > predict; cat predict` works), from a table of the last 32
//! sessions kept per file; `ENODATA` if there is none.
//!
//! Errors of a write (nothing changes on error): `EINVAL` for a malformed
//! or empty write, a write over 64 KiB, a value out of range, a wrong value
//! count, or a request the device calls malformed; `ENODEV` when there is no
//! device or it has no model; `ETIMEDOUT` when the device does not answer
//! within the module parameter `timeout_ms` (default 5000, 0 for no limit);
//! `EINTR` on a fatal signal; `EIO` for a failing device or an invalid
//! answer.
//!
//! Files: `device.rs` (probe/remove and the request queue), `events.rs`
//! (the event queue: model change notifications), `request.rs`
//! (the request object), `procfs.rs`, `session.rs`, `sysfs.rs`, `parse.rs`
//! (text format), `irq_lock.rs`, `glue.rs` (declarations of the C glue in
//! `virtio_nn_glue.c`).

use core::ptr;
use core::sync::atomic::{AtomicPtr, AtomicU64, Ordering};
use kernel::prelude::*;
use kernel::sync::{new_mutex, Arc, Mutex};

// The wire protocol, shared with the host side; its items are `pub` for the
// other crates that use it.
#[allow(unreachable_pub)]
#[path = "../nn-core/src/protocol.rs"]
mod protocol;

mod device;
mod events;
mod glue;
mod irq_lock;
mod parse;
mod procfs;
mod request;
mod session;
mod sysfs;

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
    /// The bound device, if any.
    #[pin]
    pub(crate) device: Mutex<Option<Arc<NnDevice>>>,
    /// The last answer per session, for `predict` and for `predict_q16`.
    #[pin]
    pub(crate) sessions: Mutex<[SessionTable; 2]>,
    /// Successful predictions since the module was loaded.
    pub(crate) predictions: AtomicU64,
}

/// The [`Globals`] of the loaded module: set before any entry point is
/// registered and cleared after all are gone.
static GLOBALS: AtomicPtr<Globals> = AtomicPtr::new(ptr::null_mut());

/// The module's [`Globals`].
pub(crate) fn globals() -> Result<&'static Globals> {
    let p = GLOBALS.load(Ordering::Acquire);
    if p.is_null() {
        return Err(ENODEV);
    }
    // SAFETY: A non-null `GLOBALS` points to the module's `Globals`, which
    // outlive every entry point that can call this (see `GlobalsHolder`).
    Ok(unsafe { &*p })
}

/// Owns the [`Globals`] and publishes them in [`GLOBALS`] while alive.
struct GlobalsHolder {
    /// Keeps the globals alive.
    _globals: Arc<Globals>,
}

impl GlobalsHolder {
    fn new() -> Result<Self> {
        let globals = Arc::pin_init(
            pin_init!(Globals {
                device <- new_mutex!(None, "virtio_nn_device"),
                sessions <- new_mutex!([SessionTable::new(), SessionTable::new()], "virtio_nn_sessions"),
                predictions: AtomicU64::new(0),
            }),
            GFP_KERNEL,
        )?;
        GLOBALS.store(
            ptr::from_ref::<Globals>(&globals).cast_mut(),
            Ordering::Release,
        );
        Ok(Self { _globals: globals })
    }
}

impl Drop for GlobalsHolder {
    fn drop(&mut self) {
        // Every entry point is gone by now (the holder is dropped last).
        GLOBALS.store(ptr::null_mut(), Ordering::Release);
    }
}

/// The registered virtio driver; unregistered on drop.
struct DriverRegistration;

impl DriverRegistration {
    fn new() -> Result<Self> {
        // SAFETY: The driver table is static; probe may run from now on.
        kernel::error::to_result(unsafe { glue::virtio_nn_register_driver() })?;
        Ok(Self)
    }
}

impl Drop for DriverRegistration {
    fn drop(&mut self) {
        // SAFETY: Registered in `new`. This removes the bound device, which
        // fails its requests in flight.
        unsafe { glue::virtio_nn_unregister_driver() };
    }
}

/// The module. Fields are dropped in order: the driver first (waking every
/// waiter with `ENODEV`), then the sysfs and proc entries (which wait for
/// their running callbacks), then the globals.
struct VirtioNnModule {
    _driver: DriverRegistration,
    _sysfs: Option<sysfs::SysfsDir>,
    _proc: procfs::ProcEntries,
    _globals: GlobalsHolder,
}

impl kernel::Module for VirtioNnModule {
    fn init(_module: &'static ThisModule) -> Result<Self> {
        let globals = GlobalsHolder::new()?;
        let proc = procfs::ProcEntries::new()?;
        let sysfs = match sysfs::SysfsDir::new() {
            Ok(s) => Some(s),
            Err(e) => {
                pr_warn!("cannot create /sys/kernel/neural_network: {:?}\n", e);
                None
            }
        };
        let driver = DriverRegistration::new()?;
        Ok(Self {
            _driver: driver,
            _sysfs: sysfs,
            _proc: proc,
            _globals: globals,
        })
    }
}
