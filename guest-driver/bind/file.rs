// SPDX-License-Identifier: GPL-2.0

//! The file entry points of `/proc/neural_network/{predict,predict_q16}`
//! (`proc_ops`) and `/dev/neural_network` (`file_operations`), both tables in
//! the C glue.
//!
//! An open file's state is an `Arc` parked in `file->private_data` from
//! `open` to `release`; `read` and `write` get it back as a shared
//! reference, with the user buffer as a [`UserSliceReader`] or
//! [`UserSliceWriter`] and the position as `&mut loff_t`.

use super::glue;
use crate::{devfile, procfs};
use kernel::bindings::{self, loff_t};
use kernel::error::from_result;
use kernel::ffi::{c_char, c_int};
use kernel::sync::Arc;
use kernel::uaccess::{UserSlice, UserSliceReader, UserSliceWriter};

/// Parks `state` in `file->private_data` (`open`).
///
/// # Safety
///
/// `file` is being opened and its `private_data` is ours until release.
unsafe fn park<T>(file: *mut bindings::file, state: Arc<T>) {
    // SAFETY: Guaranteed by the caller; the reference is dropped by
    // `unpark` at release.
    unsafe { (*file).private_data = Arc::into_raw(state).cast_mut().cast() };
}

/// Drops the state parked by [`park`] (`release`).
///
/// # Safety
///
/// `file` was opened with `park::<T>` and this is its release.
unsafe fn unpark<T>(file: *mut bindings::file) {
    // SAFETY: Guaranteed by the caller: `private_data` holds the reference
    // from `park`, and this is the last use of the file.
    drop(unsafe { Arc::from_raw((*file).private_data.cast::<T>()) });
}

/// The state parked by [`park`].
///
/// # Safety
///
/// `file` was opened with `park::<T>` and is not released before `'a` ends
/// (the VFS keeps it open during `read`/`write`).
unsafe fn parked<'a, T>(file: *mut bindings::file) -> &'a T {
    // SAFETY: Guaranteed by the caller.
    unsafe { &*(*file).private_data.cast::<T>() }
}

/// A `write` entry point's buffer and position.
///
/// # Safety
///
/// `pos` is the position pointer the VFS passed (valid and unaliased for
/// the call).
unsafe fn write_args<'a>(
    buf: *const c_char,
    count: usize,
    pos: *mut loff_t,
) -> (UserSliceReader, &'a mut loff_t) {
    // SAFETY: Guaranteed by the caller.
    let pos = unsafe { &mut *pos };
    (UserSlice::new(buf as usize, count).reader(), pos)
}

/// A `read` entry point's buffer and position.
///
/// # Safety
///
/// As for [`write_args`].
unsafe fn read_args<'a>(
    buf: *mut c_char,
    count: usize,
    pos: *mut loff_t,
) -> (UserSliceWriter, &'a mut loff_t) {
    // SAFETY: Guaranteed by the caller.
    let pos = unsafe { &mut *pos };
    (UserSlice::new(buf as usize, count).writer(), pos)
}

/// `proc_ops.proc_open`.
#[no_mangle]
pub(crate) extern "C" fn virtio_nn_proc_open(
    inode: *mut bindings::inode,
    file: *mut bindings::file,
) -> c_int {
    // SAFETY: `inode` is the inode of one of our proc entries.
    let data = unsafe { glue::virtio_nn_pde_data(inode) } as usize;
    from_result(|| {
        let of = procfs::open(data)?;
        // SAFETY: `file` is being opened.
        unsafe { park(file, of) };
        Ok(0)
    })
}

/// `proc_ops.proc_release`.
#[no_mangle]
pub(crate) extern "C" fn virtio_nn_proc_release(
    _inode: *mut bindings::inode,
    file: *mut bindings::file,
) -> c_int {
    // SAFETY: Opened by `virtio_nn_proc_open`; this is its release.
    unsafe { unpark::<procfs::OpenFile>(file) };
    0
}

/// `proc_ops.proc_write`.
#[no_mangle]
pub(crate) extern "C" fn virtio_nn_proc_write(
    file: *mut bindings::file,
    buf: *const c_char,
    count: usize,
    pos: *mut loff_t,
) -> isize {
    // SAFETY: The VFS calls this on a file opened by `virtio_nn_proc_open`,
    // with its own position pointer.
    let (of, (data, pos)) = unsafe { (parked(file), write_args(buf, count, pos)) };
    from_result(|| procfs::write(of, data, pos))
}

/// `proc_ops.proc_read`.
#[no_mangle]
pub(crate) extern "C" fn virtio_nn_proc_read(
    file: *mut bindings::file,
    buf: *mut c_char,
    count: usize,
    pos: *mut loff_t,
) -> isize {
    // SAFETY: As for `virtio_nn_proc_write`.
    let (of, (out, pos)) = unsafe { (parked(file), read_args(buf, count, pos)) };
    from_result(|| procfs::read(of, out, pos))
}

/// `file_operations.open` of `/dev/neural_network`.
#[no_mangle]
pub(crate) extern "C" fn virtio_nn_dev_open(
    _inode: *mut bindings::inode,
    file: *mut bindings::file,
) -> c_int {
    from_result(|| {
        let df = devfile::open()?;
        // SAFETY: `file` is being opened; the misc core's `private_data`
        // (the miscdevice) is not needed.
        unsafe { park(file, df) };
        Ok(0)
    })
}

/// `file_operations.release` of `/dev/neural_network`.
#[no_mangle]
pub(crate) extern "C" fn virtio_nn_dev_release(
    _inode: *mut bindings::inode,
    file: *mut bindings::file,
) -> c_int {
    // SAFETY: Opened by `virtio_nn_dev_open`; this is its release.
    unsafe { unpark::<devfile::DevFile>(file) };
    0
}

/// `file_operations.write` of `/dev/neural_network`.
#[no_mangle]
pub(crate) extern "C" fn virtio_nn_dev_write(
    file: *mut bindings::file,
    buf: *const c_char,
    count: usize,
    pos: *mut loff_t,
) -> isize {
    // SAFETY: The VFS calls this on a file opened by `virtio_nn_dev_open`,
    // with its own position pointer.
    let (df, (data, pos)) = unsafe { (parked(file), write_args(buf, count, pos)) };
    from_result(|| devfile::write(df, data, pos))
}

/// `file_operations.read` of `/dev/neural_network`.
#[no_mangle]
pub(crate) extern "C" fn virtio_nn_dev_read(
    file: *mut bindings::file,
    buf: *mut c_char,
    count: usize,
    pos: *mut loff_t,
) -> isize {
    // SAFETY: As for `virtio_nn_dev_write`.
    let (df, (out, pos)) = unsafe { (parked(file), read_args(buf, count, pos)) };
    from_result(|| devfile::read(df, out, pos))
}
