// SPDX-License-Identifier: GPL-2.0

//! RCU: a read-side guard and an RCU-published `Arc`.

use super::glue;
use core::marker::PhantomData;
use core::ptr;
use core::sync::atomic::{AtomicPtr, Ordering};
use kernel::sync::{Arc, ArcBorrow};

/// An RCU read-side critical section, ended on drop.
pub(crate) struct ReadGuard(());

impl ReadGuard {
    /// Begins a read-side critical section.
    pub(crate) fn new() -> Self {
        // SAFETY: No preconditions; ended in `drop`.
        unsafe { glue::virtio_nn_rcu_read_lock() };
        Self(())
    }
}

impl Drop for ReadGuard {
    fn drop(&mut self) {
        // SAFETY: Begun in `new`.
        unsafe { glue::virtio_nn_rcu_read_unlock() };
    }
}

/// An optional `Arc<T>` that readers get without a lock, under RCU.
///
/// Invariant: a non-null `ptr` is a reference made by `Arc::into_raw`, owned
/// by this value; it is dropped only after `ptr` no longer holds it and an
/// RCU grace period has passed, so a reader inside a read-side section may
/// take a new reference from it.
pub(crate) struct RcuArc<T> {
    ptr: AtomicPtr<T>,
    /// Sends and shares like the `Arc<T>` it holds.
    _owns: PhantomData<Arc<T>>,
}

impl<T> RcuArc<T> {
    /// Holds nothing.
    pub(crate) const fn new() -> Self {
        Self {
            ptr: AtomicPtr::new(ptr::null_mut()),
            _owns: PhantomData,
        }
    }

    /// A new reference to the value held, if any (lock-free).
    pub(crate) fn get(&self) -> Option<Arc<T>> {
        let _rcu = ReadGuard::new();
        let p = self.ptr.load(Ordering::Acquire);
        if p.is_null() {
            return None;
        }
        // SAFETY: By the invariant, `p` comes from `Arc::into_raw` and its
        // reference is live for the rest of this read-side section.
        Some(unsafe { ArcBorrow::from_raw(p) }.into())
    }

    /// Holds `value`; a value held before is dropped after a grace period
    /// (may sleep).
    pub(crate) fn set(&self, value: Arc<T>) {
        let old = self
            .ptr
            .swap(Arc::into_raw(value).cast_mut(), Ordering::AcqRel);
        Self::retire(old);
    }

    /// Holds nothing from now on, and returns once no reader can still see
    /// the value held before (an RCU grace period; may sleep).
    pub(crate) fn clear(&self) {
        Self::retire(self.ptr.swap(ptr::null_mut(), Ordering::AcqRel));
    }

    /// Drops `old` (a pointer just removed from `ptr`) after a grace period.
    fn retire(old: *mut T) {
        if old.is_null() {
            return;
        }
        super::sys::synchronize_rcu();
        // SAFETY: `old` was held (the invariant: from `Arc::into_raw`) and is
        // no longer; after the grace period no reader uses it.
        drop(unsafe { Arc::from_raw(old) });
    }
}

impl<T> Drop for RcuArc<T> {
    fn drop(&mut self) {
        self.clear();
    }
}
