// SPDX-License-Identifier: GPL-2.0

//! What `/proc/neural_network/*` and `/dev/neural_network` share: a write
//! copied in from user space, and an answer read from the file position (a
//! write resets it). User memory is only touched through the checked copies
//! of [`UserSliceReader`] and [`UserSliceWriter`].

use kernel::alloc::flags::GFP_KERNEL_ACCOUNT;
use kernel::bindings::loff_t;
use kernel::prelude::*;
use kernel::uaccess::{UserSliceReader, UserSliceWriter};

/// Copies a whole write into a new buffer (charged to the caller's memory
/// cgroup).
pub(crate) fn copy_in(data: UserSliceReader) -> Result<KVec<u8>> {
    let mut buf = KVec::new();
    data.read_all(&mut buf, GFP_KERNEL_ACCOUNT)?;
    Ok(buf)
}

/// The `read()` of `answer` into `out`: copies from the file position on
/// and advances it; 0 at the end.
pub(crate) fn read_answer(
    answer: &[u8],
    mut out: UserSliceWriter,
    pos: &mut loff_t,
) -> Result<isize> {
    let start = usize::try_from(*pos).map_err(|_| EINVAL)?;
    let Some(rest) = answer.get(start..) else {
        return Ok(0);
    };
    let n = out.len().min(rest.len());
    out.write_slice(&rest[..n])?;
    *pos += n as loff_t;
    Ok(n as isize)
}

/// Ends a successful write of `count` bytes: the next read starts at the
/// new answer's beginning.
pub(crate) fn written(count: usize, pos: &mut loff_t) -> Result<isize> {
    *pos = 0;
    Ok(count as isize)
}
