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

use crate::bind::kvec::swap_remove;
pub(crate) use crate::bind::pid::Session;
use kernel::alloc::flags::GFP_KERNEL_ACCOUNT;
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
