// SPDX-License-Identifier: GPL-2.0

//! The module's one shared state, reachable from every C entry point.

use core::marker::PhantomData;
use core::ptr;
use core::sync::atomic::{AtomicPtr, Ordering};
use kernel::prelude::*;
use kernel::sync::Arc;

/// A pointer to the module's state, set while a [`Holder`] of it lives.
///
/// Invariant: a non-null pointer is the value of a live [`Holder`]; the
/// module drops its holder last, after every registration (driver, files,
/// shrinker, work) whose callbacks call [`ModuleGlobal::get`] is gone, so a
/// reference from `get` stays valid for as long as any callback runs.
pub(crate) struct ModuleGlobal<T> {
    ptr: AtomicPtr<T>,
    _owns: PhantomData<Arc<T>>,
}

impl<T> ModuleGlobal<T> {
    /// Empty.
    pub(crate) const fn new() -> Self {
        Self {
            ptr: AtomicPtr::new(ptr::null_mut()),
            _owns: PhantomData,
        }
    }

    /// The state, or `ENODEV` outside the module's lifetime.
    pub(crate) fn get(&'static self) -> Result<&'static T> {
        let p = self.ptr.load(Ordering::Acquire);
        if p.is_null() {
            return Err(ENODEV);
        }
        // SAFETY: By the invariant, `p` is the value of a live holder, which
        // outlives every caller.
        Ok(unsafe { &*p })
    }

    /// Publishes `value` until the returned holder is dropped. The module
    /// keeps the holder as the last field it drops.
    pub(crate) fn hold(&'static self, value: Arc<T>) -> Holder<T> {
        self.ptr
            .store(ptr::from_ref::<T>(&value).cast_mut(), Ordering::Release);
        Holder {
            global: self,
            _value: value,
        }
    }
}

/// Keeps the state of a [`ModuleGlobal`] published; clears it on drop.
pub(crate) struct Holder<T: 'static> {
    global: &'static ModuleGlobal<T>,
    _value: Arc<T>,
}

impl<T> Drop for Holder<T> {
    fn drop(&mut self) {
        self.global.ptr.store(ptr::null_mut(), Ordering::Release);
    }
}
