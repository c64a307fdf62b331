// SPDX-License-Identifier: GPL-2.0

//! A spinlock that disables local interrupts while held.
//!
//! The virtqueue is used both from process context (submission) and from its
//! interrupt handler (completion), so its lock must be taken with
//! `spin_lock_irqsave()`. `kernel::sync::SpinLock` of Linux 6.12 only knows
//! `spin_lock()`, so this module plugs the irqsave variant into the generic
//! [`Lock`].

use crate::glue;
use kernel::bindings;
use kernel::ffi::{c_char, c_ulong};
use kernel::sync::lock::{Backend, Lock};

/// A `spinlock_t` taken with `spin_lock_irqsave()`.
pub(crate) type IrqSpinLock<T> = Lock<T, IrqSpinLockBackend>;

/// Creates an [`IrqSpinLock`] initialiser with a static lock class.
macro_rules! new_irq_spinlock {
    ($inner:expr, $name:literal) => {
        $crate::irq_lock::IrqSpinLock::new(
            $inner,
            ::kernel::c_str!($name),
            ::kernel::static_lock_class!(),
        )
    };
}
pub(crate) use new_irq_spinlock;

/// The [`Backend`] of [`IrqSpinLock`].
pub(crate) struct IrqSpinLockBackend;

// SAFETY: The kernel `spinlock_t` ensures mutual exclusion; `relock` uses the
// default implementation, which calls `lock` again.
unsafe impl Backend for IrqSpinLockBackend {
    type State = bindings::spinlock_t;
    type GuardState = c_ulong;

    unsafe fn init(ptr: *mut Self::State, name: *const c_char, key: *mut bindings::lock_class_key) {
        // SAFETY: The caller guarantees that `ptr` is valid for writes and that
        // `name` and `key` live forever.
        unsafe { bindings::__spin_lock_init(ptr, name, key) }
    }

    unsafe fn lock(ptr: *mut Self::State) -> Self::GuardState {
        // SAFETY: The caller guarantees that `ptr` is an initialised lock.
        unsafe { glue::virtio_nn_spin_lock_irqsave(ptr) }
    }

    unsafe fn unlock(ptr: *mut Self::State, flags: &Self::GuardState) {
        // SAFETY: The caller owns the lock, and `flags` comes from the
        // `lock` call that took it.
        unsafe { glue::virtio_nn_spin_unlock_irqrestore(ptr, *flags) }
    }
}
