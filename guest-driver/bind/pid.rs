// SPDX-License-Identifier: GPL-2.0

//! A task's session, pinned as a `struct pid`.

use super::glue;
use core::ptr::NonNull;
use kernel::bindings;

/// A session: its `struct pid`, pinned (`get_pid`) while this exists.
/// Two values are the same session iff they hold the same `struct pid`: a
/// new session that gets a freed session id has another `struct pid`.
pub(crate) struct Session(NonNull<bindings::pid>);

// SAFETY: A `struct pid` reference may be dropped (`put_pid`, atomic
// refcount) and compared from any thread.
unsafe impl Send for Session {}
// SAFETY: See `Send`; `&Session` only compares and checks liveness under RCU.
unsafe impl Sync for Session {}

impl Session {
    /// The calling task's session (`None` if it has none, e.g. while
    /// exiting).
    pub(crate) fn current() -> Option<Self> {
        // SAFETY: No preconditions; the result is a new reference (or null).
        NonNull::new(unsafe { glue::virtio_nn_get_session() }).map(Self)
    }

    /// Whether `other` is the same session.
    pub(crate) fn same(&self, other: &Session) -> bool {
        self.0 == other.0
    }

    /// Whether a task is still in the session.
    pub(crate) fn alive(&self) -> bool {
        // SAFETY: `self.0` is pinned by this value.
        unsafe { glue::virtio_nn_session_alive(self.0.as_ptr()) }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // SAFETY: The reference taken by `get_pid` in `current`.
        unsafe { bindings::put_pid(self.0.as_ptr()) };
    }
}
