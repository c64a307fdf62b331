// SPDX-License-Identifier: GPL-2.0

//! Orphans per uid: requests whose caller gave up (timeout, fatal signal)
//! while the device still holds them.
//!
//! Every orphan takes a descriptor chain of a ring until the device answers
//! it, so a user could fill every ring with abandoned requests (a `/dev`
//! caller chooses its timeout; a `/proc` writer can be killed) and make
//! everyone else time out. Each device counts its orphans per request queue
//! ([`crate::device`]) and per effective uid (here); a uid that has
//! `max_orphans` (module parameter, default 8, 0 = no limit) orphans in
//! flight gets `EAGAIN` for new requests until the device answers some.
//!
//! The counters are atomics: an orphan is charged in process context by its
//! waiter and discharged by the queue's interrupt callback (or at remove)
//! through pointers the request keeps ([`crate::request::Request::orphan`]).
//! A slot of the table belongs to one uid while its count is not zero;
//! claiming a free one is serialised by a mutex (only waiters that give up
//! take it). If every slot is in use by other uids, the orphan is charged
//! to the shared overflow slot (whose users share one quota).

use core::sync::atomic::{AtomicU32, Ordering};
use kernel::prelude::*;
use kernel::sync::{new_mutex, Mutex};

/// Uids with orphans tracked each in their own slot.
const UID_SLOTS: usize = 32;

/// Marks a slot without owner.
const NO_UID: u32 = u32::MAX;

struct Slot {
    uid: AtomicU32,
    count: AtomicU32,
}

/// The orphans of one device, per uid.
#[pin_data]
pub(crate) struct Orphans {
    slots: [Slot; UID_SLOTS],
    /// Shared by the uids that found no free slot.
    overflow: AtomicU32,
    /// Serialises claiming a slot.
    #[pin]
    claim: Mutex<()>,
}

/// The slot index of [`Orphans::overflow`].
const OVERFLOW: usize = usize::MAX;

/// The quota per uid (module parameter `max_orphans`), 0 for no limit.
fn quota() -> u32 {
    crate::bind::sys::max_orphans()
}

impl Orphans {
    pub(crate) fn new() -> impl PinInit<Self> {
        pin_init!(Self {
            slots: core::array::from_fn(|_| Slot {
                uid: AtomicU32::new(NO_UID),
                count: AtomicU32::new(0),
            }),
            overflow: AtomicU32::new(0),
            claim <- new_mutex!((), "virtio_nn_orphans"),
        })
    }

    /// The counter of `uid`, if it has a slot.
    fn find(&self, uid: u32) -> Option<&AtomicU32> {
        self.slots
            .iter()
            .find(|s| s.uid.load(Ordering::Acquire) == uid && uid != NO_UID)
            .map(|s| &s.count)
    }

    /// `EAGAIN` if `uid` has its quota of orphans in flight.
    pub(crate) fn check(&self, uid: u32) -> Result {
        let quota = quota();
        if quota == 0 {
            return Ok(());
        }
        let n = match self.find(uid) {
            Some(c) => c.load(Ordering::Relaxed),
            // Its next orphan would go to the overflow slot.
            None if self
                .slots
                .iter()
                .all(|s| s.count.load(Ordering::Relaxed) != 0) =>
            {
                self.overflow.load(Ordering::Relaxed)
            }
            None => 0,
        };
        if n >= quota {
            return Err(EAGAIN);
        }
        Ok(())
    }

    /// Charges one orphan to `uid` (its slot, claimed if needed, or the
    /// overflow slot) and returns the slot, which [`Self::release`] takes
    /// when the device hands the request back.
    pub(crate) fn charge(&self, uid: u32) -> usize {
        let _guard = self.claim.lock();
        let slot = self
            .slots
            .iter()
            .position(|s| s.uid.load(Ordering::Acquire) == uid && uid != NO_UID)
            .or_else(|| {
                // A slot without orphans: its count cannot go up meanwhile
                // (only charges, under this lock, do), so it can change
                // owner.
                let i = self
                    .slots
                    .iter()
                    .position(|s| s.count.load(Ordering::Acquire) == 0)?;
                self.slots[i].uid.store(uid, Ordering::Release);
                Some(i)
            })
            .unwrap_or(OVERFLOW);
        self.counter(slot).fetch_add(1, Ordering::Relaxed);
        slot
    }

    /// Takes back one orphan of `slot` (from [`Self::charge`]).
    pub(crate) fn release(&self, slot: usize) {
        self.counter(slot).fetch_sub(1, Ordering::Relaxed);
    }

    /// The counter of `slot` (the overflow counter for [`OVERFLOW`] or any
    /// other index past the slots).
    fn counter(&self, slot: usize) -> &AtomicU32 {
        self.slots.get(slot).map_or(&self.overflow, |s| &s.count)
    }
}
