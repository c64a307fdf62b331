// SPDX-License-Identifier: GPL-2.0

//! The result cache (the seed's `neural_network_predict_cached`).
//!
//! Single-sample answers are kept, keyed by their inputs and the caller's
//! effective uid, for `cache_ms` milliseconds (module parameter, default
//! 1000 as in the seed; 0 turns the cache off). A prediction whose inputs
//! have a fresh entry of the same uid is answered from the cache without a
//! device request: one user's answers never answer another's, so neither
//! the latency of a hit nor `cache_hits` tells a user what someone else
//! asked. When a request times out, an entry of the same inputs and uid is
//! returned even if it has expired (the seed's fallback), but only up to
//! `cache_fallback_ms` old (module parameter, default 30000; 0: no
//! fallback).
//!
//! Entries belong to one device and one model generation. Every daemon
//! starts at generation 1, so the generation alone cannot tell the model of
//! a replugged device from the old one: the cache has a device *epoch*,
//! bumped (and the cache emptied) at every probe and remove, and an entry
//! answers only in its own epoch and generation. A prediction reads the
//! epoch before it looks up the device, so an answer of a removed device
//! can never be stored under a later epoch.
//!
//! The entries are spread over [`BUCKETS`] buckets by their hash, each with
//! its own lock, so a prediction takes no lock shared by every caller
//! (one bucket lock for a hit, two acquisitions of it for a miss). Bounded
//! to [`CACHE_ENTRIES`] entries ([`CACHE_ENTRIES`] / [`BUCKETS`] per
//! bucket, the oldest of the bucket is evicted), and a shrinker empties it
//! under memory pressure. Nothing that may reclaim memory is allocated with
//! a bucket lock held (the entry tables are allocated at load; a hit is
//! copied out with `GFP_ATOMIC`), so the shrinker can never wait for a lock
//! held by the allocation that called it.

use crate::bind::kvec::swap_remove;
use crate::bind::sys;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use kernel::alloc::flags::GFP_KERNEL_ACCOUNT;
use kernel::prelude::*;
use kernel::sync::{new_mutex, Mutex};
use kernel::time::Ktime;

/// Most entries kept.
pub(crate) const CACHE_ENTRIES: usize = 256;

/// Buckets, each with its own lock.
pub(crate) const BUCKETS: usize = 16;

/// Most entries per bucket.
const BUCKET_ENTRIES: usize = CACHE_ENTRIES / BUCKETS;

/// What an entry answers for, besides its inputs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct Key {
    /// The effective uid of the caller.
    pub(crate) uid: u32,
    /// The device epoch ([`Cache::epoch`]).
    pub(crate) epoch: u64,
    /// The model generation.
    pub(crate) generation: u32,
}

/// One cached answer.
struct Entry {
    hash: u64,
    key: Key,
    inputs: KVec<i32>,
    outputs: KVec<i32>,
    /// When it was stored (`ktime_get()`, ns).
    stamp: i64,
}

/// The result cache.
#[pin_data]
pub(crate) struct Cache {
    /// Each with capacity [`BUCKET_ENTRIES`], reserved at load.
    buckets: KVec<Pin<KBox<Mutex<KVec<Entry>>>>>,
    /// The device epoch: bumped at every probe and remove.
    epoch: AtomicU64,
    /// Entries in all buckets.
    len: AtomicUsize,
}

fn hash(inputs: &[i32], uid: u32) -> u64 {
    // FNV-1a over the uid and the values.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut mix = |v: u32| {
        h ^= v as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    };
    mix(uid);
    for v in inputs {
        mix(*v as u32);
    }
    h
}

fn now() -> i64 {
    Ktime::ktime_get().to_ns()
}

/// The expiry (module parameter `cache_ms`) in ns; 0: the cache is off.
pub(crate) fn expiry_ns() -> i64 {
    i64::from(sys::cache_ms()) * 1_000_000
}

/// The age limit of a fallback answer (module parameter
/// `cache_fallback_ms`) in ns; 0: no fallback.
pub(crate) fn fallback_max_age_ns() -> i64 {
    i64::from(sys::cache_fallback_ms()) * 1_000_000
}

impl Cache {
    pub(crate) fn new() -> Result<impl PinInit<Self>> {
        let mut buckets = KVec::with_capacity(BUCKETS, GFP_KERNEL)?;
        for _ in 0..BUCKETS {
            let entries = KVec::with_capacity(BUCKET_ENTRIES, GFP_KERNEL)?;
            buckets.push(
                KBox::pin_init(new_mutex!(entries, "virtio_nn_cache"), GFP_KERNEL)?,
                GFP_KERNEL,
            )?;
        }
        Ok(pin_init!(Self {
            buckets,
            epoch: AtomicU64::new(1),
            len: AtomicUsize::new(0),
        }))
    }

    /// The current device epoch. A prediction reads it before it looks up
    /// the device (remove bumps it after the device is unpublished, probe
    /// before it is published), so its answer is never stored under the
    /// epoch of a later device.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// Starts a new device epoch and empties the cache (probe and remove).
    pub(crate) fn new_epoch(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        for b in self.buckets.iter() {
            let mut entries = b.lock();
            while let Some(e) = swap_remove(&mut entries, 0) {
                drop(e);
                self.len.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    fn bucket(&self, h: u64) -> &Mutex<KVec<Entry>> {
        &self.buckets[(h >> 32) as usize % BUCKETS]
    }

    /// Drops the entries of another epoch or generation than `key`'s.
    fn purge(&self, entries: &mut KVec<Entry>, key: &Key) {
        let mut i = 0;
        while i < entries.len() {
            let k = &entries[i].key;
            if k.epoch == key.epoch && k.generation == key.generation {
                i += 1;
            } else {
                drop(swap_remove(entries, i));
                self.len.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// The cached outputs of `inputs` for `key`: only a fresh one (younger
    /// than `max_age_ns`), or with `None` any.
    pub(crate) fn lookup(
        &self,
        inputs: &[i32],
        key: &Key,
        max_age_ns: Option<i64>,
    ) -> Option<KVec<i32>> {
        let h = hash(inputs, key.uid);
        let mut entries = self.bucket(h).lock();
        self.purge(&mut entries, key);
        let e = entries
            .iter()
            .find(|e| e.hash == h && e.key == *key && e.inputs[..] == *inputs)?;
        if max_age_ns.is_some_and(|age| now() - e.stamp >= age) {
            return None;
        }
        let mut out = KVec::with_capacity(e.outputs.len(), GFP_ATOMIC).ok()?;
        out.extend_from_slice(&e.outputs, GFP_ATOMIC).ok()?;
        Some(out)
    }

    /// Stores the answer `outputs` of `inputs` for `key`.
    pub(crate) fn insert(&self, inputs: &[i32], outputs: &[i32], key: &Key) {
        let h = hash(inputs, key.uid);
        // Allocate before taking the lock (see the module docs).
        let mut i = KVec::new();
        let mut o = KVec::new();
        if i.extend_from_slice(inputs, GFP_KERNEL_ACCOUNT).is_err()
            || o.extend_from_slice(outputs, GFP_KERNEL_ACCOUNT).is_err()
        {
            return;
        }
        let entry = Entry {
            hash: h,
            key: *key,
            inputs: i,
            outputs: o,
            stamp: now(),
        };
        let mut entries = self.bucket(h).lock();
        if self.epoch() != key.epoch {
            // The device went away meanwhile.
            return;
        }
        self.purge(&mut entries, key);
        if let Some(e) = entries
            .iter_mut()
            .find(|e| e.hash == h && e.key == *key && e.inputs[..] == *inputs)
        {
            *e = entry;
            return;
        }
        if entries.len() >= BUCKET_ENTRIES {
            let mut oldest = 0;
            for (n, e) in entries.iter().enumerate() {
                if e.stamp < entries[oldest].stamp {
                    oldest = n;
                }
            }
            entries[oldest] = entry;
            return;
        }
        // Cannot fail: the capacity is reserved and never exceeded.
        if entries.push(entry, GFP_ATOMIC).is_ok() {
            self.len.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Number of entries.
    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// Frees up to `n` entries; returns how many were freed.
    pub(crate) fn shrink(&self, n: usize) -> usize {
        let mut freed = 0;
        for b in self.buckets.iter() {
            let mut entries = b.lock();
            while freed < n {
                let Some(last) = entries.len().checked_sub(1) else {
                    break;
                };
                drop(swap_remove(&mut entries, last));
                self.len.fetch_sub(1, Ordering::Relaxed);
                freed += 1;
            }
        }
        freed
    }
}

/// The shrinker's `count_objects`.
#[no_mangle]
pub(crate) extern "C" fn virtio_nn_cache_count() -> kernel::ffi::c_ulong {
    crate::globals().map_or(0, |g| g.cache.len() as _)
}

/// The shrinker's `scan_objects`: frees up to `nr` entries.
#[no_mangle]
pub(crate) extern "C" fn virtio_nn_cache_scan(nr: kernel::ffi::c_ulong) -> kernel::ffi::c_ulong {
    crate::globals().map_or(0, |g| g.cache.shrink(nr) as _)
}
