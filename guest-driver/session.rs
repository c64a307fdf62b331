// SPDX-License-Identifier: GPL-2.0

//! The last answer of each session, for readers that made no prediction.
//!
//! `echo 1,2,... > /proc/neural_network/predict; cat /proc/neural_network/predict`
//! opens the file twice: the `cat` has made no prediction on its own open
//! file. Such a read returns the last answer made in the caller's session
//! (`pid_nr(task_session(current))`). A small table per proc file keeps
//! those answers; when it is full, the oldest entry is evicted.

use kernel::prelude::*;
use kernel::sync::Arc;

/// Sessions remembered per proc file.
pub(crate) const SESSION_SLOTS: usize = 32;

/// A formatted answer, shared by the open file that made it and the
/// session table.
pub(crate) struct Answer {
    /// The text a read returns.
    pub(crate) text: KVec<u8>,
}

struct Slot {
    session: i32,
    /// When the slot was last written (a counter), to find the oldest.
    stamp: u64,
    answer: Arc<Answer>,
}

/// The last answers of up to [`SESSION_SLOTS`] sessions.
pub(crate) struct SessionTable {
    slots: [Option<Slot>; SESSION_SLOTS],
    clock: u64,
}

impl SessionTable {
    /// An empty table.
    pub(crate) const fn new() -> Self {
        const EMPTY: Option<Slot> = None;
        Self {
            slots: [EMPTY; SESSION_SLOTS],
            clock: 0,
        }
    }

    /// Records `answer` as the last one of `session`.
    pub(crate) fn insert(&mut self, session: i32, answer: Arc<Answer>) {
        self.clock += 1;
        let stamp = self.clock;
        let index = self
            .slots
            .iter()
            .position(|s| s.as_ref().is_some_and(|s| s.session == session))
            .or_else(|| self.slots.iter().position(Option::is_none))
            .unwrap_or_else(|| {
                // Full: evict the oldest.
                let mut oldest = 0;
                for (i, s) in self.slots.iter().enumerate() {
                    if let (Some(s), Some(o)) = (s, &self.slots[oldest]) {
                        if s.stamp < o.stamp {
                            oldest = i;
                        }
                    }
                }
                oldest
            });
        self.slots[index] = Some(Slot {
            session,
            stamp,
            answer,
        });
    }

    /// The last answer of `session`, if there is one.
    pub(crate) fn get(&self, session: i32) -> Option<Arc<Answer>> {
        self.slots
            .iter()
            .flatten()
            .find(|s| s.session == session)
            .map(|s| s.answer.clone())
    }
}
