// SPDX-License-Identifier: GPL-2.0

//! The last answer of each session and user, for readers that made no
//! prediction.
//!
//! `echo 1,2,... > /proc/neural_network/predict; cat /proc/neural_network/predict`
//! opens the file twice: the `cat` has made no prediction on its own open
//! file. Such a read returns the last answer made in the caller's session by
//! the caller's user. A table per proc file keeps those answers, keyed by
//! the session's `struct pid` (pinned with `get_pid`, compared by pointer:
//! a new session that gets a freed session id has another `struct pid`)
//! and the writer's effective uid (a reader with another euid gets nothing,
//! as if there were no answer). An entry is dropped once its session has
//! ended (no task left in it; checked at every insert and lookup). One uid
//! keeps at most [`SLOTS_PER_UID`] entries; a write beyond that replaces
//! the oldest entry of the same uid, never another user's.

use crate::glue;
use core::ptr::{self, NonNull};
use kernel::alloc::flags::GFP_KERNEL_ACCOUNT;
use kernel::bindings;
use kernel::prelude::*;
use kernel::sync::Arc;

/// Sessions remembered per uid and proc file.
pub(crate) const SLOTS_PER_UID: usize = 8;

/// A formatted answer, shared by the open file that made it and the
/// session table.
pub(crate) struct Answer {
    /// The text a read returns.
    pub(crate) text: KVec<u8>,
}

/// A session: its `struct pid`, pinned while this exists.
pub(crate) struct Session(NonNull<bindings::pid>);

// SAFETY: A `struct pid` reference may be dropped (`put_pid`, atomic
// refcount) and compared from any thread.
unsafe impl Send for Session {}
// SAFETY: See `Send`; `&Session` only compares and checks liveness under RCU.
unsafe impl Sync for Session {}

impl Session {
    /// The calling task's session.
    pub(crate) fn current() -> Option<Self> {
        // SAFETY: No preconditions; the result is a new reference (or null).
        NonNull::new(unsafe { glue::virtio_nn_get_session() }).map(Self)
    }

    /// Whether `other` is the same session (the same `struct pid`).
    fn same(&self, other: &Session) -> bool {
        self.0 == other.0
    }

    /// Whether a task is still in the session.
    fn alive(&self) -> bool {
        // SAFETY: `self.0` is a pinned `struct pid`.
        unsafe { glue::virtio_nn_session_alive(self.0.as_ptr()) }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // SAFETY: The reference taken by `get_pid` in `current`.
        unsafe { bindings::put_pid(self.0.as_ptr()) };
    }
}

/// The effective uid of the calling task (the kernel's, namespace-free
/// `kuid_t` value).
pub(crate) fn current_euid() -> u32 {
    // SAFETY: No preconditions.
    unsafe { glue::virtio_nn_current_euid() }
}

struct Slot {
    session: Session,
    uid: u32,
    /// When the slot was last written (a counter), to find the oldest.
    stamp: u64,
    answer: Arc<Answer>,
}

/// The last answers of the live sessions, at most [`SLOTS_PER_UID`] per uid.
pub(crate) struct SessionTable {
    slots: KVec<Slot>,
    clock: u64,
}

/// Removes element `i` of `v` (the last one takes its place).
fn swap_remove<T>(v: &mut KVec<T>, i: usize) -> Option<T> {
    let last = v.len().checked_sub(1)?;
    if i > last {
        return None;
    }
    let p = v.as_mut_ptr();
    // SAFETY: `i` and `last` are initialised elements. Element `i` is moved
    // out, then the last one is moved into its place (a no-op if they are
    // the same); with the length `last` neither is dropped twice.
    unsafe {
        let e = ptr::read(p.add(i));
        ptr::copy(p.add(last), p.add(i), 1);
        v.set_len(last);
        Some(e)
    }
}

impl SessionTable {
    /// An empty table.
    pub(crate) const fn new() -> Self {
        Self {
            slots: KVec::new(),
            clock: 0,
        }
    }

    /// Drops the entries of sessions that have ended.
    fn purge(&mut self) {
        let mut i = 0;
        while i < self.slots.len() {
            if self.slots[i].session.alive() {
                i += 1;
            } else {
                drop(swap_remove(&mut self.slots, i));
            }
        }
    }

    /// Records `answer` as the last one of `uid` in `session`.
    pub(crate) fn insert(&mut self, session: Session, uid: u32, answer: Arc<Answer>) -> Result {
        self.purge();
        self.clock += 1;
        let stamp = self.clock;
        if let Some(s) = self
            .slots
            .iter_mut()
            .find(|s| s.uid == uid && s.session.same(&session))
        {
            s.stamp = stamp;
            s.answer = answer;
            return Ok(());
        }
        let slot = Slot {
            session,
            uid,
            stamp,
            answer,
        };
        // The uid's own entries only: its oldest makes room.
        let mut mine = 0;
        let mut oldest: Option<usize> = None;
        for (i, s) in self.slots.iter().enumerate() {
            if s.uid == uid {
                mine += 1;
                if oldest.map_or(true, |o| s.stamp < self.slots[o].stamp) {
                    oldest = Some(i);
                }
            }
        }
        match oldest {
            Some(o) if mine >= SLOTS_PER_UID => self.slots[o] = slot,
            _ => self.slots.push(slot, GFP_KERNEL_ACCOUNT)?,
        }
        Ok(())
    }

    /// The last answer of `uid` in `session`, if there is one.
    pub(crate) fn get(&mut self, session: &Session, uid: u32) -> Option<Arc<Answer>> {
        self.purge();
        self.slots
            .iter()
            .find(|s| s.uid == uid && s.session.same(session))
            .map(|s| s.answer.clone())
    }
}
