// SPDX-License-Identifier: GPL-2.0

//! What `/proc/neural_network/*` and `/dev/neural_network` share: a write
//! copied in whole from user space, and an answer read from the file
//! position (a write resets it).

use kernel::alloc::flags::GFP_KERNEL_ACCOUNT;
use kernel::bindings;
use kernel::ffi::c_char;
use kernel::prelude::*;
use kernel::uaccess::UserSlice;

/// Copies the `count` bytes a `write()` passed at `buf` into a new buffer
/// (charged to the caller's memory cgroup).
pub(crate) fn copy_write(buf: *const c_char, count: usize) -> Result<KVec<u8>> {
    let mut data = KVec::new();
    UserSlice::new(buf as usize, count).read_all(&mut data, GFP_KERNEL_ACCOUNT)?;
    Ok(data)
}

/// The `read()` of `answer`: copies to `buf` at most `count` bytes from the
/// file position `pos` on and advances it; 0 at the end.
pub(crate) fn read_answer(
    answer: &[u8],
    buf: *mut c_char,
    count: usize,
    pos: *mut bindings::loff_t,
) -> Result<isize> {
    // SAFETY: The VFS passes a valid file position.
    let start = usize::try_from(unsafe { *pos }).map_err(|_| EINVAL)?;
    if start >= answer.len() {
        return Ok(0);
    }
    let n = count.min(answer.len() - start);
    UserSlice::new(buf as usize, n)
        .writer()
        .write_slice(&answer[start..start + n])?;
    // SAFETY: As above.
    unsafe { *pos += n as bindings::loff_t };
    Ok(n as isize)
}

/// Ends a successful `write()` of `count` bytes: the next read starts at the
/// new answer's beginning.
pub(crate) fn written(count: usize, pos: *mut bindings::loff_t) -> Result<isize> {
    // SAFETY: The VFS passes a valid file position.
    unsafe { *pos = 0 };
    Ok(count as isize)
}

/// The file position, for a read that must know whether it starts over.
pub(crate) fn position(pos: *mut bindings::loff_t) -> bindings::loff_t {
    // SAFETY: The VFS passes a valid file position.
    unsafe { *pos }
}
