// SPDX-License-Identifier: GPL-2.0

//! The virtio device and its virtqueues, and the `virtio_driver` entry
//! points (the driver table is in the C glue).
//!
//! Contracts kept here:
//!
//! * A [`VirtioDevice`] exists only for a device being probed or bound to
//!   this driver; the driver drops its copies before `remove` (or a failed
//!   probe) returns. `vdev->priv` holds a reference to the driver's
//!   [`NnDevice`] from [`VirtioDevice::set_drvdata`] to
//!   [`VirtioDevice::take_drvdata`]; the callbacks borrow it.
//! * A [`Virtqueue<T>`] holds `Arc<T>` tokens: [`Virtqueue::add`] gives one
//!   reference to the queue, [`Virtqueue::get_buf`] and
//!   [`Virtqueue::detach_unused`] take it back, once the device no longer
//!   uses the buffers ([`DeviceBufs`] tracks that). Operations that change
//!   the ring take `&mut self`: the caller's queue lock serialises them.
//! * A notification sent after the queue lock ([`Notify`]) lives inside an
//!   RCU read-side section, and [`VirtioDevice::del_vqs`] waits for a grace
//!   period before it deletes the queues; it also needs the proof that the
//!   device was reset ([`DeviceReset`]), after which the device uses no
//!   buffer and no callback runs.

use super::dma::{DeviceBufs, QueueLimits};
use super::glue;
use super::rcu::ReadGuard;
use crate::device::{probe, NnDevice};
use core::ffi::c_void;
use core::marker::PhantomData;
use core::ptr::{self, NonNull};
use kernel::bindings;
use kernel::c_str;
use kernel::error::from_result;
use kernel::ffi::c_int;
use kernel::prelude::*;
use kernel::sync::{Arc, ArcBorrow};

/// A virtio device bound to this driver (or being probed).
#[derive(Clone, Copy)]
pub(crate) struct VirtioDevice {
    raw: NonNull<bindings::virtio_device>,
}

// SAFETY: The virtio core's device operations may be called from any
// thread; the driver serialises config reads with its own mutex.
unsafe impl Send for VirtioDevice {}
// SAFETY: See `Send`.
unsafe impl Sync for VirtioDevice {}

/// The proof that a device was reset: it uses no buffer any more and no
/// queue callback runs.
pub(crate) struct DeviceReset(());

impl VirtioDevice {
    /// # Safety
    ///
    /// `raw` is a device being probed by or bound to this driver, and the
    /// value (and its copies) is used only until its `remove` (or a failed
    /// probe) returns.
    pub(super) unsafe fn from_raw(raw: *mut bindings::virtio_device) -> Option<Self> {
        NonNull::new(raw).map(|raw| Self { raw })
    }

    fn as_ptr(self) -> *mut bindings::virtio_device {
        self.raw.as_ptr()
    }

    /// The device index (`virtioN`).
    pub(crate) fn index(self) -> u32 {
        // SAFETY: The device is live (type invariant); `index` is set before
        // probe and never changes.
        unsafe { (*self.as_ptr()).index as u32 }
    }

    /// Whether feature bit `fbit` was negotiated.
    pub(crate) fn has_feature(self, fbit: u32) -> bool {
        // SAFETY: The device is live (type invariant).
        unsafe { glue::virtio_nn_has_feature(self.as_ptr(), fbit) }
    }

    /// One config-space word at `offset` (one round trip to the host);
    /// all ones for an offset outside `0..CONFIG_SIZE` or not aligned.
    pub(crate) fn cread32(self, offset: usize) -> u32 {
        if offset % 4 != 0 || offset + 4 > crate::protocol::CONFIG_SIZE {
            return u32::MAX;
        }
        // SAFETY: The device is live (type invariant); the offset is an
        // aligned word of the config space.
        unsafe { glue::virtio_nn_cread32(self.as_ptr(), offset as u32) }
    }

    /// Sets `DRIVER_OK`: the device may use the queues from now on.
    pub(crate) fn ready(self) {
        // SAFETY: The device is live (type invariant).
        unsafe { glue::virtio_nn_device_ready(self.as_ptr()) };
    }

    /// Resets the device. Process context.
    pub(crate) fn reset(self) -> DeviceReset {
        // SAFETY: The device is live (type invariant). After the reset the
        // device uses no buffer and no queue callback runs any more.
        unsafe { bindings::virtio_reset_device(self.as_ptr()) };
        DeviceReset(())
    }

    /// Deletes the device's virtqueues, once no reader of a [`Notify`] can
    /// still use them (an RCU grace period). The driver must have taken
    /// every [`Virtqueue`] of the device out of use. Process context.
    pub(crate) fn del_vqs(self, _reset: DeviceReset) {
        super::sys::synchronize_rcu();
        // SAFETY: The device is live (type invariant) and reset; its queues
        // are out of use (caller) and no notification is in flight (the
        // grace period above).
        unsafe { glue::virtio_nn_del_vqs(self.as_ptr()) };
    }

    /// Sets up the device's `dev_queues` request queues and the event queue
    /// after them (queue `dev_queues`); falls back to the first `nq` request
    /// queues alone if the device has no event queue (or more request
    /// queues than can be set up at once, `max_find`). Returns the first
    /// `nq` request queues and the event queue.
    #[allow(clippy::type_complexity)]
    pub(crate) fn find_vqs<R: HasBufs, E: HasBufs>(
        self,
        dev_queues: usize,
        nq: usize,
        max_find: usize,
    ) -> Result<(KVec<Virtqueue<R>>, Option<Virtqueue<E>>)> {
        let request = bindings::virtqueue_info {
            name: c_str!("requests").as_char_ptr(),
            callback: Some(virtio_nn_vq_done),
            ctx: false,
        };
        let event = bindings::virtqueue_info {
            name: c_str!("events").as_char_ptr(),
            callback: Some(virtio_nn_event_done),
            ctx: false,
        };
        // Queue `i` gets `infos[i]`: request queues, then the event queue.
        let find = |total: usize, with_events: bool| -> Result<KVec<*mut bindings::virtqueue>> {
            let mut infos = KVec::from_elem(request, total, GFP_KERNEL)?;
            if with_events {
                if let Some(last) = infos.last_mut() {
                    *last = event;
                }
            }
            let mut vqs = KVec::from_elem(ptr::null_mut(), total, GFP_KERNEL)?;
            // SAFETY: The device is live (type invariant), without queues;
            // both arrays have `total` entries.
            let ret = unsafe {
                glue::virtio_nn_find_vqs(
                    self.as_ptr(),
                    total as u32,
                    vqs.as_mut_ptr(),
                    infos.as_mut_ptr(),
                )
            };
            kernel::error::to_result(ret).map(|()| vqs)
        };
        let with_events = if dev_queues <= max_find {
            find(dev_queues + 1, true).ok()
        } else {
            None
        };
        let (raw, event_at) = match with_events {
            Some(vqs) => (vqs, Some(dev_queues)),
            None => (find(nq, false)?, None),
        };
        let mut requests = KVec::with_capacity(nq, GFP_KERNEL)?;
        for &vq in raw.iter().take(nq) {
            requests.push(Virtqueue::new(vq)?, GFP_KERNEL)?;
        }
        let events = match event_at.and_then(|i| raw.get(i)) {
            Some(&vq) => Some(Virtqueue::new(vq)?),
            None => None,
        };
        Ok((requests, events))
    }

    /// Makes `dev` the device's driver data (`vdev->priv`), the reference
    /// the callbacks borrow; a reference held before is dropped.
    pub(crate) fn set_drvdata(self, dev: Arc<NnDevice>) {
        let old = self.replace_drvdata(Arc::into_raw(dev).cast_mut().cast());
        drop(old);
    }

    /// Takes the driver data back, leaving none. The callbacks must be
    /// stopped (the device reset) or not yet possible (no queues).
    pub(crate) fn take_drvdata(self) -> Option<Arc<NnDevice>> {
        self.replace_drvdata(ptr::null_mut())
    }

    fn replace_drvdata(self, new: *mut c_void) -> Option<Arc<NnDevice>> {
        // SAFETY: The device is live (type invariant); `priv` is this
        // driver's, and is null or a reference from `Arc::into_raw` (the
        // invariant of `set_drvdata`).
        unsafe {
            let old = core::mem::replace(&mut (*self.as_ptr()).priv_, new);
            NonNull::new(old).map(|p| Arc::from_raw(p.as_ptr().cast::<NnDevice>()))
        }
    }

    /// A new reference to the driver data. Process context, from probe to
    /// remove.
    pub(crate) fn drvdata_arc(self) -> Option<Arc<NnDevice>> {
        // SAFETY: `take_drvdata` only runs in probe or remove, which the
        // driver core serialises with every other process-context use of a
        // bound device.
        unsafe { self.drvdata() }.map(Arc::from)
    }

    /// The driver data, borrowed.
    ///
    /// # Safety
    ///
    /// No `take_drvdata` may run until the borrow ends (the callbacks: they
    /// stop before `remove` takes it).
    pub(super) unsafe fn drvdata<'a>(self) -> Option<ArcBorrow<'a, NnDevice>> {
        // SAFETY: The device is live (type invariant).
        let p = unsafe { (*self.as_ptr()).priv_ };
        // SAFETY: A non-null `priv` is a reference from `Arc::into_raw`,
        // live for `'a` (caller).
        NonNull::new(p).map(|p| unsafe { ArcBorrow::from_raw(p.as_ptr().cast::<NnDevice>()) })
    }
}

/// What a virtqueue's token holds: the buffers the device uses.
pub(crate) trait HasBufs: Send + Sync {
    /// The buffers; the same ones for as long as the value lives.
    fn bufs(&self) -> &DeviceBufs;
}

/// A virtqueue whose tokens are `Arc<T>`.
pub(crate) struct Virtqueue<T> {
    raw: NonNull<bindings::virtqueue>,
    _tokens: PhantomData<Arc<T>>,
}

// SAFETY: Used with `&mut` only under the driver's queue lock, from any
// thread; the queue lives until `del_vqs`, after its values are out of use.
unsafe impl<T: Send + Sync> Send for Virtqueue<T> {}

/// A notification prepared under the queue lock, to send after it within
/// the RCU read-side section `'a`.
pub(crate) struct Notify<'a> {
    raw: NonNull<bindings::virtqueue>,
    _rcu: PhantomData<&'a ReadGuard>,
}

impl Notify<'_> {
    /// Notifies the device (a VM exit).
    pub(crate) fn notify(self) {
        // SAFETY: The queue was live under the lock, and `del_vqs` deletes
        // it only after an RCU grace period, which cannot end inside the
        // read-side section `self` borrows.
        unsafe { bindings::virtqueue_notify(self.raw.as_ptr()) };
    }
}

impl<T: HasBufs> Virtqueue<T> {
    fn new(raw: *mut bindings::virtqueue) -> Result<Self> {
        let raw = NonNull::new(raw).ok_or(EINVAL)?;
        Ok(Self {
            raw,
            _tokens: PhantomData,
        })
    }

    /// What buffers for this queue must fit: the ring size and the largest
    /// segment the platform maps.
    pub(crate) fn limits(&self) -> QueueLimits {
        // SAFETY: The queue and its device are live (type invariant).
        let (descs, max_seg) = unsafe {
            (
                bindings::virtqueue_get_vring_size(self.raw.as_ptr()),
                bindings::virtio_max_dma_size((*self.raw.as_ptr()).vdev),
            )
        };
        QueueLimits {
            descs: descs as usize,
            max_seg,
        }
    }

    /// Gives the buffers of `item` to the device; the queue holds `item`
    /// until [`Self::get_buf`] or [`Self::detach_unused`] returns it. On
    /// failure `item` comes back with the errno (`ENOSPC`: too few free
    /// descriptors now; `E2BIG`: more than the ring has). An indirect table
    /// is allocated atomically (the caller holds a spinlock).
    pub(crate) fn add(&mut self, item: Arc<T>) -> Result<(), (Error, Arc<T>)> {
        let bufs = item.bufs();
        if bufs.descriptors() > self.limits().descs {
            return Err((E2BIG, item));
        }
        let (mut sgs, out, inn) = bufs.lend();
        let token = Arc::into_raw(item).cast_mut().cast::<c_void>();
        // SAFETY: The queue is live (type invariant) and serialised by
        // `&mut self`; `sgs` holds `out` readable then `inn` writable
        // initialised, ended scatterlists of at most the ring's size
        // together, pointing into buffers the token keeps alive.
        let ret = unsafe {
            bindings::virtqueue_add_sgs(
                self.raw.as_ptr(),
                sgs.as_mut_ptr(),
                out,
                inn,
                token,
                bindings::GFP_ATOMIC,
            )
        };
        if ret == 0 {
            return Ok(());
        }
        // SAFETY: The token did not reach the queue: its reference is ours.
        let item = unsafe { Arc::from_raw(token.cast::<T>()) };
        item.bufs().reclaim();
        Err((Error::from_errno(ret), item))
    }

    /// Prepares a notification of the device for what was added; `None`
    /// if the device does not need one.
    pub(crate) fn kick_prepare<'a>(&mut self, _rcu: &'a ReadGuard) -> Option<Notify<'a>> {
        // SAFETY: The queue is live (type invariant) and serialised by
        // `&mut self`.
        let needed = unsafe { bindings::virtqueue_kick_prepare(self.raw.as_ptr()) };
        needed.then_some(Notify {
            raw: self.raw,
            _rcu: PhantomData,
        })
    }

    /// The next item the device handed back, with the bytes it wrote.
    pub(crate) fn get_buf(&mut self) -> Option<(Arc<T>, u32)> {
        let mut len: u32 = 0;
        // SAFETY: The queue is live (type invariant) and serialised by
        // `&mut self`.
        let token = unsafe { bindings::virtqueue_get_buf(self.raw.as_ptr(), &mut len) };
        let token = NonNull::new(token)?;
        // SAFETY: Every token on the queue is a reference from
        // `Arc::into_raw` of a `T` (`add`), and the device handed this one
        // back.
        let item = unsafe { Arc::from_raw(token.as_ptr().cast::<T>()) };
        item.bufs().reclaim();
        Some((item, len))
    }

    /// The next item the device did not use, after a reset.
    pub(crate) fn detach_unused(&mut self, _reset: &DeviceReset) -> Option<Arc<T>> {
        // SAFETY: The queue is live (type invariant), serialised by `&mut
        // self`, and its device reset.
        let token = unsafe { bindings::virtqueue_detach_unused_buf(self.raw.as_ptr()) };
        let token = NonNull::new(token)?;
        // SAFETY: As in `get_buf`; the reset device no longer uses it.
        let item = unsafe { Arc::from_raw(token.as_ptr().cast::<T>()) };
        item.bufs().reclaim();
        Some(item)
    }
}

/// `virtio_driver.probe`.
#[no_mangle]
pub(crate) extern "C" fn virtio_nn_probe(vdev: *mut bindings::virtio_device) -> c_int {
    // SAFETY: The virtio core probes a live device; the value is dropped by
    // the time probe returns (the driver keeps copies only on success, until
    // remove).
    let Some(vdev) = (unsafe { VirtioDevice::from_raw(vdev) }) else {
        return EINVAL.to_errno();
    };
    from_result(|| probe::probe(vdev).map(|()| 0))
}

/// `virtio_driver.remove`.
#[no_mangle]
pub(crate) extern "C" fn virtio_nn_remove(vdev: *mut bindings::virtio_device) {
    // SAFETY: The device is bound; remove is the last use of it.
    if let Some(vdev) = unsafe { VirtioDevice::from_raw(vdev) } {
        probe::remove(vdev);
    }
}

/// `virtio_driver.config_changed` (may run in interrupt context).
#[no_mangle]
pub(crate) extern "C" fn virtio_nn_config_changed(vdev: *mut bindings::virtio_device) {
    // SAFETY: The device is bound; the callback ends before remove.
    let Some(vdev) = (unsafe { VirtioDevice::from_raw(vdev) }) else {
        return;
    };
    // SAFETY: The driver data is taken only after the device is reset, when
    // no callback runs any more.
    if let Some(dev) = unsafe { vdev.drvdata() } {
        dev.config_changed();
    }
}

/// The driver data of the device of queue `vq`, in its callback.
///
/// # Safety
///
/// `vq` is a live queue of a bound device, in its callback.
unsafe fn queue_owner<'a>(
    vq: *mut bindings::virtqueue,
) -> Option<(ArcBorrow<'a, NnDevice>, usize)> {
    // SAFETY: The callback only runs for live queues of a bound device.
    let (vdev, index) = unsafe { ((*vq).vdev, (*vq).index as usize) };
    // SAFETY: As above; the callback ends before remove.
    let vdev = unsafe { VirtioDevice::from_raw(vdev) }?;
    // SAFETY: The driver data is taken only after the device is reset, when
    // no callback runs any more.
    unsafe { vdev.drvdata() }.map(|d| (d, index))
}

/// The request queues' callback (interrupt context).
#[no_mangle]
pub(crate) extern "C" fn virtio_nn_vq_done(vq: *mut bindings::virtqueue) {
    // SAFETY: Called by the virtio core for a live queue, in its callback.
    if let Some((dev, index)) = unsafe { queue_owner(vq) } {
        dev.vq_done(index);
    }
}

/// The event queue's callback (interrupt context).
#[no_mangle]
pub(crate) extern "C" fn virtio_nn_event_done(vq: *mut bindings::virtqueue) {
    // SAFETY: Called by the virtio core for a live queue, in its callback.
    if let Some((dev, _)) = unsafe { queue_owner(vq) } {
        dev.event_done();
    }
}

/// `virtio_driver.freeze`.
#[no_mangle]
pub(crate) extern "C" fn virtio_nn_freeze(vdev: *mut bindings::virtio_device) -> c_int {
    // SAFETY: The PM core freezes a bound device, not concurrently with
    // remove.
    let Some(vdev) = (unsafe { VirtioDevice::from_raw(vdev) }) else {
        return 0;
    };
    // SAFETY: As above: no `take_drvdata` runs meanwhile.
    if let Some(dev) = unsafe { vdev.drvdata() } {
        dev.freeze(vdev);
    }
    0
}

/// `virtio_driver.restore`.
#[no_mangle]
pub(crate) extern "C" fn virtio_nn_restore(vdev: *mut bindings::virtio_device) -> c_int {
    // SAFETY: The PM core restores a bound device after its freeze, not
    // concurrently with remove.
    let Some(vdev) = (unsafe { VirtioDevice::from_raw(vdev) }) else {
        return 0;
    };
    // SAFETY: As above.
    let Some(dev) = (unsafe { vdev.drvdata() }) else {
        return 0;
    };
    from_result(|| dev.restore(vdev).map(|()| 0))
}
