// SPDX-License-Identifier: GPL-2.0

//! The result cache (the seed's `neural_network_predict_cached`).
//!
//! Single-sample answers are kept, keyed by their inputs, for `cache_ms`
//! milliseconds (module parameter, default 1000 as in the seed; 0 turns the
//! cache off). A prediction whose inputs have a fresh entry is answered from
//! the cache without a device request. When a request times out, an entry
//! of the same inputs is returned even if it has expired (the seed's
//! fallback). Entries belong to one model generation: the cache is emptied
//! when the generation the driver knows changes (with an event queue at
//! once on a hot-swap; without one, when the driver notices it).
//!
//! Bounded to [`CACHE_ENTRIES`] entries (the oldest is evicted), and a
//! shrinker empties it under memory pressure. Nothing that may reclaim
//! memory is allocated with the lock held (the entry table is allocated at
//! load; a hit is copied out with `GFP_ATOMIC`), so the shrinker can never
//! wait for a lock held by the allocation that called it.

use crate::glue;
use kernel::bindings;
use kernel::prelude::*;
use kernel::sync::{new_mutex, Mutex};

/// Most entries kept.
pub(crate) const CACHE_ENTRIES: usize = 256;

/// One cached answer.
struct Entry {
    hash: u64,
    inputs: KVec<i32>,
    outputs: KVec<i32>,
    /// When it was stored (`ktime_get()`, ns).
    stamp: i64,
}

/// The cached answers of one model generation.
struct CacheState {
    generation: u32,
    /// Capacity [`CACHE_ENTRIES`], reserved at load.
    entries: KVec<Entry>,
}

/// The result cache.
#[pin_data]
pub(crate) struct Cache {
    #[pin]
    state: Mutex<CacheState>,
}

fn hash(inputs: &[i32]) -> u64 {
    // FNV-1a over the values.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for v in inputs {
        h ^= *v as u32 as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Removes and returns the last entry (`KVec` of Linux 6.12 has no `pop`).
fn pop(v: &mut KVec<Entry>) -> Option<Entry> {
    let n = v.len().checked_sub(1)?;
    // SAFETY: Element `n` is initialised; once the length is `n` it is no
    // longer part of the vector, so reading it moves it out.
    unsafe {
        let e = core::ptr::read(v.as_ptr().add(n));
        v.set_len(n);
        Some(e)
    }
}

/// Removes every entry.
fn clear(v: &mut KVec<Entry>) {
    while pop(v).is_some() {}
}

fn now() -> i64 {
    // SAFETY: No preconditions.
    unsafe { bindings::ktime_get() }
}

/// The expiry (module parameter `cache_ms`) in ns; 0: the cache is off.
pub(crate) fn expiry_ns() -> i64 {
    // SAFETY: No preconditions.
    i64::from(unsafe { glue::virtio_nn_cache_ms() }) * 1_000_000
}

impl Cache {
    pub(crate) fn new() -> Result<impl PinInit<Self>> {
        let entries = KVec::with_capacity(CACHE_ENTRIES, GFP_KERNEL)?;
        Ok(pin_init!(Self {
            state <- new_mutex!(CacheState { generation: 0, entries }, "virtio_nn_cache"),
        }))
    }

    /// The cached outputs of `inputs` under model `generation`: only a
    /// fresh one (younger than `max_age_ns`), or with `None` any.
    pub(crate) fn lookup(
        &self,
        inputs: &[i32],
        generation: u32,
        max_age_ns: Option<i64>,
    ) -> Option<KVec<i32>> {
        let h = hash(inputs);
        let mut state = self.state.lock();
        if state.generation != generation {
            clear(&mut state.entries);
            state.generation = generation;
            return None;
        }
        let e = state
            .entries
            .iter()
            .find(|e| e.hash == h && e.inputs[..] == *inputs)?;
        if max_age_ns.is_some_and(|age| now() - e.stamp >= age) {
            return None;
        }
        let mut out = KVec::with_capacity(e.outputs.len(), GFP_ATOMIC).ok()?;
        out.extend_from_slice(&e.outputs, GFP_ATOMIC).ok()?;
        Some(out)
    }

    /// Stores the answer `outputs` of `inputs` under model `generation`.
    pub(crate) fn insert(&self, inputs: &[i32], outputs: &[i32], generation: u32) {
        let h = hash(inputs);
        // Allocate before taking the lock (see the module docs).
        let mut i = KVec::new();
        let mut o = KVec::new();
        if i.extend_from_slice(inputs, GFP_KERNEL).is_err()
            || o.extend_from_slice(outputs, GFP_KERNEL).is_err()
        {
            return;
        }
        let entry = Entry {
            hash: h,
            inputs: i,
            outputs: o,
            stamp: now(),
        };
        let mut state = self.state.lock();
        if state.generation != generation {
            clear(&mut state.entries);
            state.generation = generation;
        }
        let entries = &mut state.entries;
        if let Some(e) = entries
            .iter_mut()
            .find(|e| e.hash == h && e.inputs[..] == *inputs)
        {
            *e = entry;
            return;
        }
        if entries.len() >= CACHE_ENTRIES {
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
        let _ = entries.push(entry, GFP_ATOMIC);
    }

    /// Number of entries.
    pub(crate) fn len(&self) -> usize {
        self.state.lock().entries.len()
    }

    /// Frees up to `n` entries (the last ones in the table); returns how
    /// many were freed.
    pub(crate) fn shrink(&self, n: usize) -> usize {
        let mut state = self.state.lock();
        let mut freed = 0;
        while freed < n && pop(&mut state.entries).is_some() {
            freed += 1;
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

/// The registered shrinker; freed on drop.
pub(crate) struct Shrinker;

impl Shrinker {
    pub(crate) fn new() -> Result<Self> {
        // SAFETY: Called once at load; the callbacks find the cache through
        // the globals, which outlive the shrinker (dropped first).
        kernel::error::to_result(unsafe { glue::virtio_nn_shrinker_register() })?;
        Ok(Self)
    }
}

impl Drop for Shrinker {
    fn drop(&mut self) {
        // SAFETY: Registered in `new`; this waits for running callbacks.
        unsafe { glue::virtio_nn_shrinker_unregister() };
    }
}
