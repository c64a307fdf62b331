// SPDX-License-Identifier: GPL-2.0

//! A lock-free copy of the cached config space, so that predictions read it
//! without taking the config mutex: a kernel `seqlock_t` (C glue) over atomic
//! words. Writers (also serialised by the config mutex) take the seqlock,
//! which disables preemption while they store the words, so a reader on the
//! same CPU never spins on a preempted writer; readers retry while the
//! sequence is odd or changed under them.

use crate::glue;
use crate::protocol::{DeviceConfig, CONFIG_SIZE};
use core::sync::atomic::{AtomicU32, Ordering};
use kernel::bindings;
use kernel::prelude::*;
use kernel::types::Opaque;

const WORDS: usize = CONFIG_SIZE / 4;

/// The config space as a sequence-locked array of words.
#[pin_data]
pub(crate) struct ConfigSnapshot {
    /// Orders the writers and tells readers about a concurrent write.
    #[pin]
    lock: Opaque<bindings::seqlock_t>,
    words: [AtomicU32; WORDS],
}

// SAFETY: `lock` is a kernel seqlock, usable from any thread; the words are
// atomics.
unsafe impl Send for ConfigSnapshot {}
// SAFETY: See `Send`.
unsafe impl Sync for ConfigSnapshot {}

impl ConfigSnapshot {
    /// A snapshot holding `c`.
    pub(crate) fn new(c: &DeviceConfig) -> impl PinInit<Self> {
        let bytes = c.to_bytes();
        pin_init!(Self {
            // SAFETY: `slot` is valid for writes and pinned: the seqlock
            // stays where it is initialised.
            lock <- Opaque::ffi_init(|slot| unsafe { glue::virtio_nn_seqlock_init(slot) }),
            words: core::array::from_fn(|i| {
                AtomicU32::new(u32::from_le_bytes([
                    bytes[4 * i],
                    bytes[4 * i + 1],
                    bytes[4 * i + 2],
                    bytes[4 * i + 3],
                ]))
            }),
        })
    }

    /// Replaces the snapshot. Process context.
    pub(crate) fn store(&self, c: &DeviceConfig) {
        let bytes = c.to_bytes();
        // SAFETY: `lock` was initialised in `new`; unlocked below, on this
        // CPU (the seqlock disables preemption).
        unsafe { glue::virtio_nn_write_seqlock(self.lock.get()) };
        for (i, w) in self.words.iter().enumerate() {
            let b = &bytes[4 * i..4 * i + 4];
            w.store(
                u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
                Ordering::Relaxed,
            );
        }
        // SAFETY: Locked above.
        unsafe { glue::virtio_nn_write_sequnlock(self.lock.get()) };
    }

    /// A consistent copy.
    pub(crate) fn load(&self) -> DeviceConfig {
        loop {
            // SAFETY: `lock` was initialised in `new`.
            let seq = unsafe { glue::virtio_nn_read_seqbegin(self.lock.get()) };
            let mut bytes = [0u8; CONFIG_SIZE];
            for (i, w) in self.words.iter().enumerate() {
                bytes[4 * i..4 * i + 4].copy_from_slice(&w.load(Ordering::Relaxed).to_le_bytes());
            }
            // SAFETY: As above.
            if !unsafe { glue::virtio_nn_read_seqretry(self.lock.get(), seq) } {
                return DeviceConfig::from_bytes(&bytes);
            }
        }
    }
}
