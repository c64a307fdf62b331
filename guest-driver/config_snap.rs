// SPDX-License-Identifier: GPL-2.0

//! A lock-free copy of the cached config space, so that predictions read it
//! without taking the config mutex: a kernel `seqlock_t` (C glue) over atomic
//! words. Writers (also serialised by the config mutex) take the seqlock,
//! which disables preemption while they store the words, so a reader on the
//! same CPU never spins on a preempted writer; readers retry while the
//! sequence is odd or changed under them.

use crate::bind::seqlock::SeqLock;
use crate::protocol::{DeviceConfig, CONFIG_SIZE};
use core::sync::atomic::{AtomicU32, Ordering};
use kernel::prelude::*;

const WORDS: usize = CONFIG_SIZE / 4;

/// The config space as a sequence-locked array of words.
#[pin_data]
pub(crate) struct ConfigSnapshot {
    /// Orders the writers and tells readers about a concurrent write.
    #[pin]
    lock: SeqLock,
    words: [AtomicU32; WORDS],
}

impl ConfigSnapshot {
    /// A snapshot holding `c`.
    pub(crate) fn new(c: &DeviceConfig) -> impl PinInit<Self> {
        let bytes = c.to_bytes();
        pin_init!(Self {
            lock <- SeqLock::new(),
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
        self.lock.write(|| {
            for (i, w) in self.words.iter().enumerate() {
                let b = &bytes[4 * i..4 * i + 4];
                w.store(
                    u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
                    Ordering::Relaxed,
                );
            }
        });
    }

    /// A consistent copy.
    pub(crate) fn load(&self) -> DeviceConfig {
        let bytes = self.lock.read(|| {
            let mut bytes = [0u8; CONFIG_SIZE];
            for (i, w) in self.words.iter().enumerate() {
                bytes[4 * i..4 * i + 4].copy_from_slice(&w.load(Ordering::Relaxed).to_le_bytes());
            }
            bytes
        });
        DeviceConfig::from_bytes(&bytes)
    }
}
