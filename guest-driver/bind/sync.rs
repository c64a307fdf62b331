// SPDX-License-Identifier: GPL-2.0

//! Waiting: a `struct completion` and a wait queue paired with a sequence
//! counter, both with killable, bounded waits.

use super::glue;
use core::sync::atomic::{AtomicU32, Ordering};
use kernel::bindings;
use kernel::ffi::c_long;
use kernel::prelude::*;
use kernel::types::Opaque;

/// How a bounded, killable wait ended.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Wait {
    /// What was waited for happened.
    Done,
    /// The timeout passed first.
    TimedOut,
    /// A fatal signal arrived.
    Killed,
}

impl Wait {
    /// The outcome of a kernel wait's return value (positive: done, 0:
    /// timeout, negative: interrupted).
    fn from_ret(ret: c_long) -> Self {
        match ret {
            r if r > 0 => Self::Done,
            0 => Self::TimedOut,
            _ => Self::Killed,
        }
    }
}

/// A `struct completion`.
#[pin_data]
pub(crate) struct Completion {
    #[pin]
    inner: Opaque<bindings::completion>,
}

// SAFETY: A completion is made to be completed and waited for from any
// thread (its own spinlock).
unsafe impl Send for Completion {}
// SAFETY: See `Send`.
unsafe impl Sync for Completion {}

impl Completion {
    /// Not completed yet.
    pub(crate) fn new() -> impl PinInit<Self> {
        pin_init!(Self {
            // SAFETY: `init_completion` initialises the pinned slot in place.
            inner <- Opaque::ffi_init(|slot| unsafe { glue::virtio_nn_init_completion(slot) }),
        })
    }

    /// Completes it, waking a waiter. Any context.
    pub(crate) fn complete(&self) {
        // SAFETY: `inner` was initialised in `new`.
        unsafe { bindings::complete(self.inner.get()) };
    }

    /// Waits until it is completed, for `timeout` jiffies at most (0 only
    /// checks); a fatal signal ends the wait. Process context.
    pub(crate) fn wait_killable(&self, timeout: c_long) -> Wait {
        // SAFETY: `inner` was initialised in `new`; the timeout is clamped
        // to be non-negative.
        let ret = unsafe {
            bindings::wait_for_completion_killable_timeout(self.inner.get(), timeout.max(0) as _)
        };
        // 0 with a zero timeout and a completed completion is not possible:
        // the kernel returns at least 1 once done.
        Wait::from_ret(ret)
    }
}

/// A wait queue whose waiters wait for a sequence counter to change:
/// [`SeqWait::notify`] bumps the counter, then wakes them all.
#[pin_data]
pub(crate) struct SeqWait {
    #[pin]
    wq: Opaque<bindings::wait_queue_head>,
    seq: AtomicU32,
}

// SAFETY: A wait queue head has its own spinlock and may be used from any
// thread; the counter is atomic.
unsafe impl Send for SeqWait {}
// SAFETY: See `Send`.
unsafe impl Sync for SeqWait {}

impl SeqWait {
    /// No waiter, counter 0.
    pub(crate) fn new() -> impl PinInit<Self> {
        pin_init!(Self {
            // SAFETY: `init_waitqueue_head` initialises the pinned slot in
            // place.
            wq <- Opaque::ffi_init(|slot| unsafe { glue::virtio_nn_init_waitqueue_head(slot) }),
            seq: AtomicU32::new(0),
        })
    }

    /// The counter now; pass it to [`Self::wait_killable`] to wait for the
    /// next [`Self::notify`].
    pub(crate) fn seq(&self) -> u32 {
        self.seq.load(Ordering::Acquire)
    }

    /// Changes the counter and wakes every waiter. Any context.
    pub(crate) fn notify(&self) {
        self.seq.fetch_add(1, Ordering::Release);
        // SAFETY: `wq` was initialised in `new`.
        unsafe { glue::virtio_nn_wake_up_all(self.wq.get()) };
    }

    /// Waits until the counter differs from `seen`, for `timeout` jiffies at
    /// most (positive); a fatal signal ends the wait. Process context.
    pub(crate) fn wait_killable(&self, seen: u32, timeout: c_long) -> Wait {
        // SAFETY: `wq` was initialised in `new`; `seq` is a live `u32` for
        // the call.
        let ret = unsafe {
            glue::virtio_nn_wait_seq_killable(self.wq.get(), self.seq.as_ptr(), seen, timeout)
        };
        Wait::from_ret(ret)
    }
}
