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

use crate::bind::dma::DeviceBufs;
use crate::bind::rcu::ReadGuard;
use crate::bind::virtio::{DeviceReset, HasBufs, Virtqueue};
use crate::irq_lock::{new_irq_spinlock, IrqSpinLock};
use crate::protocol::{self, Event};
use core::sync::atomic::{AtomicBool, Ordering};
use kernel::alloc::flags::GFP_ATOMIC;
use kernel::prelude::*;
use kernel::sync::Arc;

/// Buffers the driver keeps on the event queue.
const EVENT_BUFFERS: usize = 4;

/// One event buffer: [`Event::SIZE`] device-writable bytes.
pub(crate) struct EventBuf {
    bufs: DeviceBufs,
}

impl HasBufs for EventBuf {
    fn bufs(&self) -> &DeviceBufs {
        &self.bufs
    }
}

impl EventBuf {
    /// A new buffer for `vq` (allocated atomically: under the queue lock).
    fn new(vq: &Virtqueue<EventBuf>) -> Result<Arc<Self>> {
        let bufs = DeviceBufs::new(0, Event::SIZE, &vq.limits(), GFP_ATOMIC)?;
        Ok(Arc::new(Self { bufs }, GFP_ATOMIC)?)
    }

    /// The event the device wrote, if it wrote a whole one.
    fn event(&self, len: u32) -> Option<Event> {
        if (len as usize) < Event::SIZE {
            return None;
        }
        let mut bytes = [0u8; Event::SIZE];
        self.bufs.read_writable(0, &mut bytes).ok()?;
        Some(Event::from_bytes(&bytes))
    }
}

/// The event queue of a device.
#[pin_data]
pub(crate) struct EventQueue {
    /// The queue; `None` if the device has none or is being removed.
    #[pin]
    state: IrqSpinLock<Option<Virtqueue<EventBuf>>>,
    /// Whether the queue is in use (between `start` and `stop`).
    present: AtomicBool,
}

impl EventQueue {
    /// An event queue not set up (yet).
    pub(crate) fn new() -> impl PinInit<Self> {
        pin_init!(Self {
            state <- new_irq_spinlock!(None, "virtio_nn_events"),
            present: AtomicBool::new(false),
        })
    }

    /// Starts using `vq`: gives the device [`EVENT_BUFFERS`] buffers. Call
    /// after the device is ready. The notification (a VM exit) is prepared
    /// under the lock and sent after it.
    pub(crate) fn start(&self, vq: Virtqueue<EventBuf>) {
        let rcu = ReadGuard::new();
        let notify = {
            let mut state = self.state.lock();
            let vq = state.insert(vq);
            self.present.store(true, Ordering::Release);
            let mut added = 0;
            for _ in 0..EVENT_BUFFERS {
                let Ok(buf) = EventBuf::new(vq) else {
                    break;
                };
                if vq.add(buf).is_ok() {
                    added += 1;
                }
            }
            if added > 0 {
                vq.kick_prepare(&rcu)
            } else {
                None
            }
        };
        if let Some(n) = notify {
            n.notify();
        }
    }

    /// Handles the buffers the device filled (interrupt context): gives
    /// them back to the device and returns true if one announced a config
    /// change.
    pub(crate) fn done(&self) -> bool {
        let rcu = ReadGuard::new();
        let (changed, notify) = {
            let mut state = self.state.lock();
            let Some(vq) = state.as_mut() else {
                return false;
            };
            let mut changed = false;
            let mut readded = false;
            while let Some((buf, len)) = vq.get_buf() {
                if buf
                    .event(len)
                    .is_some_and(|e| e.kind == protocol::EVENT_CONFIG_CHANGED)
                {
                    changed = true;
                }
                readded |= vq.add(buf).is_ok();
            }
            (changed, if readded { vq.kick_prepare(&rcu) } else { None })
        };
        if let Some(n) = notify {
            n.notify();
        }
        changed
    }

    /// Stops using the queue; returns it (if any) for [`Self::drain`].
    pub(crate) fn stop(&self) -> Option<Virtqueue<EventBuf>> {
        self.present.store(false, Ordering::Release);
        self.state.lock().take()
    }

    /// Whether the device announces config changes on this queue (so the
    /// cached config is current without reading config space).
    pub(crate) fn present(&self) -> bool {
        self.present.load(Ordering::Acquire)
    }

    /// Frees the buffers still on `vq` (from [`Self::stop`]) once the
    /// device is reset.
    pub(crate) fn drain(vq: &mut Virtqueue<EventBuf>, reset: &DeviceReset) {
        while let Some(buf) = vq.detach_unused(reset) {
            drop(buf);
        }
    }
}
