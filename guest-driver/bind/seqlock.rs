// SPDX-License-Identifier: GPL-2.0

//! A `seqlock_t`: writers serialise on its spinlock with preemption
//! disabled; readers retry when a write overlapped their read.

use super::glue;
use kernel::bindings;
use kernel::prelude::*;
use kernel::types::Opaque;

/// A `seqlock_t` guarding data that the caller keeps in atomics (readers
/// may race with a writer; the sequence tells them to retry).
#[pin_data]
pub(crate) struct SeqLock {
    #[pin]
    inner: Opaque<bindings::seqlock_t>,
}

// SAFETY: A `seqlock_t` is made to be used from any thread.
unsafe impl Send for SeqLock {}
// SAFETY: See `Send`; every operation takes `&self` and is synchronised by
// the seqlock itself.
unsafe impl Sync for SeqLock {}

impl SeqLock {
    /// A new, unlocked seqlock.
    pub(crate) fn new() -> impl PinInit<Self> {
        pin_init!(Self {
            // SAFETY: `seqlock_init` initialises the slot in place; the slot
            // is pinned.
            inner <- Opaque::ffi_init(|slot| unsafe { glue::virtio_nn_seqlock_init(slot) }),
        })
    }

    /// Runs `f` as a writer: under the lock, with preemption disabled
    /// (`f` must not sleep), the sequence odd meanwhile.
    pub(crate) fn write<R>(&self, f: impl FnOnce() -> R) -> R {
        // SAFETY: `inner` is initialised and pinned; unlocked below.
        unsafe { glue::virtio_nn_write_seqlock(self.inner.get()) };
        let r = f();
        // SAFETY: Locked above by this thread.
        unsafe { glue::virtio_nn_write_sequnlock(self.inner.get()) };
        r
    }

    /// Runs `f` as a reader until no write overlapped it; returns the
    /// result of the last run.
    pub(crate) fn read<R>(&self, mut f: impl FnMut() -> R) -> R {
        loop {
            // SAFETY: `inner` is initialised and pinned.
            let seq = unsafe { glue::virtio_nn_read_seqbegin(self.inner.get()) };
            let r = f();
            // SAFETY: As above.
            if !unsafe { glue::virtio_nn_read_seqretry(self.inner.get(), seq) } {
                return r;
            }
        }
    }
}
