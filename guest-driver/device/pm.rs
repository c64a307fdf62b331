// SPDX-License-Identifier: GPL-2.0

//! Suspend and resume: `virtio_driver.freeze` and `.restore`.
//!
//! Around system sleep virtio-pci resets the device (on `freeze` of
//! hibernation, and on suspend unless the device keeps its state, PCI PM
//! `No_Soft_Reset`): the virtqueues the driver set up are forgotten, and so
//! are the requests on them. So `freeze` stops using the queues as `remove`
//! does (the device reset, the queues deleted), but keeps the device bound
//! and published, and `restore` sets them up again as `probe` does.
//!
//! * A request in flight at `freeze` is handed back unanswered, and its
//!   waiter sends it again once the device is restored (within the waiter's
//!   deadline): predictions have no side effect, so a request that the
//!   device had already answered is only computed twice. An orphan (its
//!   waiter gave up) is simply dropped: its counters fall back.
//! * A caller that arrives while the device is frozen waits for `restore`,
//!   within its deadline (`ETIMEDOUT` after it; only a fatal signal ends
//!   the wait early). User space is frozen then anyway; this is for
//!   kernel threads (the kernel API, the health check).
//! * `restore` finds the queues again, gives the device fresh event
//!   buffers, reads the config space again (the model may have been
//!   swapped meanwhile without an event reaching the driver) unless the
//!   device is unresponsive, and starts a new result-cache epoch. If it
//!   cannot set up the queues, the device counts as gone: waiters get
//!   `ENODEV`, as after `remove`.

use super::{NnDevice, MAX_FIND_QUEUES};
use crate::bind::sync::{SeqWait, Wait};
use crate::bind::virtio::VirtioDevice;
use crate::request::{etimedout, Deadline};
use core::sync::atomic::{AtomicBool, Ordering};
use kernel::bindings;
use kernel::prelude::*;

/// The error with which `freeze` completes the requests on the queues,
/// and a submitter finds the queues of a frozen device: internal, never
/// returned to a caller ([`NnDevice::predict`] sends the request again).
fn suspended() -> Error {
    Error::from_errno(-(bindings::ECANCELED as i32))
}

/// Whether `e` is [`suspended`]: the request must be sent again after
/// [`NnDevice::wait_thawed`].
pub(super) fn is_suspended(e: &Error) -> bool {
    e.to_errno() == suspended().to_errno()
}

/// The suspend state of a device.
#[pin_data]
pub(super) struct PmState {
    /// Set from `freeze` until `restore` has set the queues up again.
    frozen: AtomicBool,
    /// Notified after `frozen` is cleared and after the device is marked
    /// gone: where callers wait for a frozen device to come back.
    #[pin]
    thawed: SeqWait,
}

impl PmState {
    /// A device that is not frozen.
    pub(super) fn new() -> impl PinInit<Self> {
        pin_init!(Self {
            frozen: AtomicBool::new(false),
            thawed <- SeqWait::new(),
        })
    }

    /// Wakes the callers waiting in [`NnDevice::wait_thawed`]; call after
    /// clearing `frozen` or marking the device gone.
    pub(super) fn wake(&self) {
        self.thawed.notify();
    }
}

impl NnDevice {
    /// Why a submitter found the queues null: [`suspended`] while the device
    /// is frozen, else `ENODEV` (it is going away).
    pub(super) fn stopped_error(&self) -> Error {
        if self.pm.frozen.load(Ordering::Acquire) && !self.gone.load(Ordering::Acquire) {
            suspended()
        } else {
            ENODEV
        }
    }

    /// Waits while the device is frozen, until `deadline` at most (only a
    /// fatal signal ends the wait early). Fails with `ENODEV` if the device
    /// is gone, `ETIMEDOUT` once `deadline` has passed, `EINTR` on a fatal
    /// signal.
    pub(super) fn wait_thawed(&self, deadline: &Deadline) -> Result {
        loop {
            // Read first: `restore` and `teardown` change it after clearing
            // `frozen` or setting `gone`, so a value seen here that changes
            // later is a wake-up this wait cannot miss.
            let seen = self.pm.thawed.seq();
            if self.gone.load(Ordering::Acquire) {
                return Err(ENODEV);
            }
            if !self.pm.frozen.load(Ordering::Acquire) {
                return Ok(());
            }
            let left = deadline.left();
            if left == 0 {
                return Err(etimedout());
            }
            if self.pm.thawed.wait_killable(seen, left) == Wait::Killed {
                return Err(EINTR);
            }
        }
    }

    /// `freeze`: stops using the queues (see the module documentation).
    /// `vdev` is the device this was probed with, bound and not frozen.
    pub(crate) fn freeze(&self, vdev: VirtioDevice) {
        self.pm.frozen.store(true, Ordering::Release);
        let resent = self.stop_queues(vdev, suspended());
        pr_info!(
            "virtio{}: frozen ({} requests in flight to be sent again)\n",
            self.index,
            resent
        );
    }

    /// `restore`: sets the queues up again (see the module documentation).
    /// `vdev` is the device this was probed with, bound and frozen, its
    /// features negotiated again.
    pub(crate) fn restore(&self, vdev: VirtioDevice) -> Result {
        if self.gone.load(Ordering::Acquire) {
            // An earlier restore failed: the device stays unusable.
            return Err(ENODEV);
        }
        let dev_queues = self.config.lock().cfg.num_req_queues as usize;
        let (vqs, event_vq) = match vdev.find_vqs(dev_queues, self.queues.len(), MAX_FIND_QUEUES) {
            Ok(vqs) => vqs,
            Err(e) => {
                pr_err!(
                    "virtio{}: cannot set up the queues again: {:?}\n",
                    self.index,
                    e
                );
                // As after `remove`: nothing is submitted any more.
                self.gone.store(true, Ordering::Release);
                self.config.lock().vdev = None;
                self.pm.wake();
                return Err(e);
            }
        };
        self.start_queues(vdev, vqs, event_vq);
        // No event reached the driver while the device was frozen: read the
        // config again (unless the device is unresponsive: see `refresh`).
        self.config_stale.store(true, Ordering::Relaxed);
        {
            let mut state = self.config.lock();
            if let Err(e) = self.refresh(&mut state) {
                pr_warn!(
                    "virtio{}: cannot read the config after resume: {:?}\n",
                    self.index,
                    e
                );
            }
        }
        // The backend may have changed while the guest slept.
        if let Ok(globals) = crate::globals() {
            globals.cache.new_epoch();
        }
        self.pm.frozen.store(false, Ordering::Release);
        self.pm.wake();
        pr_info!("virtio{}: restored\n", self.index);
        Ok(())
    }
}
