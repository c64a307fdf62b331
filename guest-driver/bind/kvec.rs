// SPDX-License-Identifier: GPL-2.0

//! `KVec` operations that the kernel crate of Linux 6.12 lacks, and byte
//! views of `i32` slices.

use kernel::prelude::*;

/// Removes element `i` of `v` and returns it; the last element takes its
/// place. `None` if `i` is out of bounds.
pub(crate) fn swap_remove<T>(v: &mut KVec<T>, i: usize) -> Option<T> {
    let last = v.len().checked_sub(1)?;
    if i > last {
        return None;
    }
    let p = v.as_mut_ptr();
    // SAFETY: `i <= last < len`, so both are initialised elements. Element
    // `i` is moved out, then the last one is moved into its place (a no-op
    // if they are the same); with the length `last` neither is dropped
    // twice.
    unsafe {
        let e = core::ptr::read(p.add(i));
        core::ptr::copy(p.add(last), p.add(i), 1);
        v.set_len(last);
        Some(e)
    }
}

/// Shortens `v` to `len` bytes (no-op if it is not longer).
pub(crate) fn truncate_bytes(v: &mut KVec<u8>, len: usize) {
    if len < v.len() {
        // SAFETY: `len < v.len()`, so the kept bytes are initialised; `u8`
        // needs no drop.
        unsafe { v.set_len(len) };
    }
}

/// The bytes of `values`, in native byte order: the wire's (little-endian)
/// on little-endian machines, where they are copied as they are.
pub(crate) fn values_as_bytes(values: &[i32]) -> &[u8] {
    // SAFETY: `i32` has no padding, so its bytes are initialised `u8`s;
    // the slice covers the same memory with the same lifetime.
    unsafe { core::slice::from_raw_parts(values.as_ptr().cast::<u8>(), 4 * values.len()) }
}

/// The bytes of `values`, writable: the buffer to copy wire values into,
/// before converting each with `i32::from_le`.
pub(crate) fn values_as_bytes_mut(values: &mut [i32]) -> &mut [u8] {
    // SAFETY: Every bit pattern is a valid `i32` and `i32` has no padding;
    // the slice covers the same memory, borrowed mutably for as long.
    unsafe { core::slice::from_raw_parts_mut(values.as_mut_ptr().cast::<u8>(), 4 * values.len()) }
}
