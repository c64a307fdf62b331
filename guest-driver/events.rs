// SPDX-License-Identifier: GPL-2.0

//! The event queue: how the device tells the driver that the model changed.
//!
//! The rust-vmm crates cannot send a config-change interrupt, so the device
//! has a queue after the request queues on which the driver keeps a few
//! device-writable buffers of [`Event::SIZE`] bytes; the device fills one with
//! an [`Event`] when the model generation or the device status changes. The
//! driver then marks its cached config stale (the next prediction or
//! `model_info` read reads it again) and gives the buffer back to the device.
//!
//! The queue is optional: devices without it work as before (the driver then
//! notices a model change from the answers).

use crate::irq_lock::{new_irq_spinlock, IrqSpinLock};
use crate::protocol::{self, Event};
use core::ffi::c_void;
use core::ptr;
use core::sync::atomic::{AtomicBool, Ordering};
use kernel::bindings;
use kernel::prelude::*;

/// Buffers the driver keeps on the event queue.
const EVENT_BUFFERS: usize = 4;

/// One event buffer; its address is the queue token.
type EventBuf = [u8; Event::SIZE];

/// State protected by [`EventQueue::state`].
struct EventState {
    /// The event queue; null if the device has none or is being removed.
    vq: *mut bindings::virtqueue,
}

// SAFETY: The queue pointer is only used with the lock held, from any thread.
unsafe impl Send for EventState {}

/// The event queue of a device.
#[pin_data]
pub(crate) struct EventQueue {
    #[pin]
    state: IrqSpinLock<EventState>,
    /// Whether the queue is in use (between `start` and `stop`).
    present: AtomicBool,
}

impl EventQueue {
    /// An event queue not set up (yet).
    pub(crate) fn new() -> impl PinInit<Self> {
        pin_init!(Self {
            state <- new_irq_spinlock!(EventState { vq: ptr::null_mut() }, "virtio_nn_events"),
            present: AtomicBool::new(false),
        })
    }

    /// Starts using `vq`: gives the device [`EVENT_BUFFERS`] buffers. Call
    /// after the device is ready.
    ///
    /// The notification (a VM exit) is prepared under the queue lock and
    /// sent after it is released, with interrupts enabled.
    ///
    /// # Safety
    ///
    /// `vq` must be the device's live event queue, used by nothing else,
    /// and stay live until this returns.
    pub(crate) unsafe fn start(&self, vq: *mut bindings::virtqueue) {
        let notify = {
            let mut state = self.state.lock();
            state.vq = vq;
            self.present.store(true, Ordering::Release);
            let mut added = 0;
            for _ in 0..EVENT_BUFFERS {
                let Ok(buf) = KBox::new([0u8; Event::SIZE], GFP_ATOMIC) else {
                    break;
                };
                // SAFETY: `vq` is live and locked; the buffer is ours.
                if unsafe { add_buf(vq, KBox::into_raw(buf)) }.is_ok() {
                    added += 1;
                }
            }
            // SAFETY: `vq` is live and locked.
            added > 0 && unsafe { bindings::virtqueue_kick_prepare(vq) }
        };
        if notify {
            // SAFETY: `vq` stays live until this returns (caller).
            unsafe { bindings::virtqueue_notify(vq) };
        }
    }

    /// Handles the buffers the device filled (interrupt context, the
    /// callback of `vq`): returns true if one announced a config change.
    ///
    /// The notification that gives the buffers back is prepared under the
    /// queue lock and sent after it is released.
    pub(crate) fn done(&self, vq: *mut bindings::virtqueue) -> bool {
        let (changed, notify) = self.refill(vq);
        if notify {
            // SAFETY: This runs in `vq`'s callback, and the queue is deleted
            // only after the device reset, which waits for running
            // callbacks (`NnDevice::teardown`): `vq` is live.
            unsafe { bindings::virtqueue_notify(vq) };
        }
        changed
    }

    /// [`Self::done`] under the queue lock: returns whether an event
    /// announced a config change and whether the device must be notified.
    fn refill(&self, vq: *mut bindings::virtqueue) -> (bool, bool) {
        let state = self.state.lock();
        if state.vq.is_null() {
            return (false, false);
        }
        let mut changed = false;
        let mut readded = false;
        loop {
            let mut len: u32 = 0;
            // SAFETY: `vq` is live (callbacks stop before it is deleted) and
            // the lock serialises it.
            let token = unsafe { bindings::virtqueue_get_buf(vq, &mut len) };
            if token.is_null() {
                break;
            }
            let buf = token.cast::<EventBuf>();
            if len as usize >= Event::SIZE {
                // SAFETY: The device handed the buffer back; it is ours.
                let event = Event::from_bytes(unsafe { &*buf });
                if event.kind == protocol::EVENT_CONFIG_CHANGED {
                    changed = true;
                }
            }
            // SAFETY: `vq` is live and locked; the buffer is ours again.
            readded |= unsafe { add_buf(vq, buf) }.is_ok();
        }
        // SAFETY: `vq` is live and locked.
        let notify = readded && unsafe { bindings::virtqueue_kick_prepare(vq) };
        (changed, notify)
    }

    /// Stops using the queue; returns it (or null) for [`Self::drain`].
    pub(crate) fn stop(&self) -> *mut bindings::virtqueue {
        self.present.store(false, Ordering::Release);
        core::mem::replace(&mut self.state.lock().vq, ptr::null_mut())
    }

    /// Whether the device announces config changes on this queue (so the
    /// cached config is current without reading config space).
    pub(crate) fn present(&self) -> bool {
        self.present.load(Ordering::Acquire)
    }

    /// Frees the buffers still on `vq`.
    ///
    /// # Safety
    ///
    /// `vq` must come from [`Self::stop`], be live, and the device must be
    /// reset.
    pub(crate) unsafe fn drain(&self, vq: *mut bindings::virtqueue) {
        let _guard = self.state.lock();
        loop {
            // SAFETY: Guaranteed by the caller.
            let token = unsafe { bindings::virtqueue_detach_unused_buf(vq) };
            if token.is_null() {
                break;
            }
            // SAFETY: Every token on the queue comes from `KBox::into_raw`.
            drop(unsafe { KBox::from_raw(token.cast::<EventBuf>()) });
        }
    }
}

/// Gives `buf` to the device on `vq`; frees it if that fails.
///
/// # Safety
///
/// `vq` must be live and locked; `buf` must come from `KBox::into_raw` and
/// be owned by the caller.
unsafe fn add_buf(vq: *mut bindings::virtqueue, buf: *mut EventBuf) -> Result {
    let mut sg = core::mem::MaybeUninit::<bindings::scatterlist>::zeroed();
    // SAFETY: `sg` is writable; `buf` is kmalloc'd and stays allocated while
    // it is on the queue.
    unsafe { bindings::sg_init_one(sg.as_mut_ptr(), buf.cast(), Event::SIZE as u32) };
    // SAFETY: `vq` is live and locked; `sg` is initialised; interrupts may be
    // disabled, so the allocation is atomic.
    let ret = unsafe {
        bindings::virtqueue_add_inbuf(
            vq,
            sg.as_mut_ptr(),
            1,
            buf.cast::<c_void>(),
            bindings::GFP_ATOMIC,
        )
    };
    if ret != 0 {
        // SAFETY: The buffer did not reach the queue: it is still ours.
        drop(unsafe { KBox::from_raw(buf) });
        return Err(Error::from_errno(ret));
    }
    Ok(())
}
