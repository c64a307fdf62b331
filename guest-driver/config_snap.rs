// SPDX-License-Identifier: GPL-2.0

//! A lock-free copy of the cached config space, so that predictions read it
//! without taking the config mutex: a sequence lock over atomic words.
//! Writers (serialised by the config mutex) make the sequence odd, store the
//! words, and make it even again; a reader retries while the sequence is odd
//! or changed under it.

use crate::protocol::{DeviceConfig, CONFIG_SIZE};
use core::sync::atomic::{fence, AtomicU32, Ordering};

const WORDS: usize = CONFIG_SIZE / 4;

/// The config space as a sequence-locked array of words.
pub(crate) struct ConfigSnapshot {
    seq: AtomicU32,
    words: [AtomicU32; WORDS],
}

impl ConfigSnapshot {
    /// A snapshot holding `c`.
    pub(crate) fn new(c: &DeviceConfig) -> Self {
        let this = Self {
            seq: AtomicU32::new(0),
            words: [const { AtomicU32::new(0) }; WORDS],
        };
        this.store(c);
        this
    }

    /// Replaces the snapshot. Callers must be serialised.
    pub(crate) fn store(&self, c: &DeviceConfig) {
        let bytes = c.to_bytes();
        let s = self.seq.load(Ordering::Relaxed);
        self.seq.store(s.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
        for (i, w) in self.words.iter().enumerate() {
            let b = &bytes[4 * i..4 * i + 4];
            w.store(
                u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
                Ordering::Relaxed,
            );
        }
        self.seq.store(s.wrapping_add(2), Ordering::Release);
    }

    /// A consistent copy.
    pub(crate) fn load(&self) -> DeviceConfig {
        loop {
            let s1 = self.seq.load(Ordering::Acquire);
            if s1 & 1 != 0 {
                core::hint::spin_loop();
                continue;
            }
            let mut bytes = [0u8; CONFIG_SIZE];
            for (i, w) in self.words.iter().enumerate() {
                bytes[4 * i..4 * i + 4].copy_from_slice(&w.load(Ordering::Relaxed).to_le_bytes());
            }
            fence(Ordering::Acquire);
            if self.seq.load(Ordering::Relaxed) == s1 {
                return DeviceConfig::from_bytes(&bytes);
            }
        }
    }
}
