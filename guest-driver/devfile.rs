// SPDX-License-Identifier: GPL-2.0

//! `/dev/neural_network`: the binary interface (a misc device, registered by
//! the C glue, since Linux 6.12 has no Rust miscdevice abstraction).
//!
//! The layout of a write (one request, in one `write()` call) and of a read
//! (the answer of the last successful write on the same open file) is
//! [`crate::dev_abi`] (nn-core's `dev_abi.rs`; for C and user space
//! `include/neural_dev.h`). A write blocks until the device answers and
//! returns the byte count; partial reads follow the file position, and a
//! write resets it to 0. The null request (`NNRN`) makes the same round trip
//! without inference (the device reads the inputs and answers with a header
//! only); it is not counted in `performance`.
//!
//! A write's header is read and checked first, alone
//! ([`Request::parse_header`], sizes in checked arithmetic), with the
//! protocol's limits on `num_samples` and `in_dim`: a bad header is refused
//! before any input is copied or any buffer the size of the write is
//! allocated.
//!
//! Errors of a write (nothing changes on error), in this order: `E2BIG` for
//! a write over [`dev_abi::MAX_WRITE_LEN`]; `EINVAL` for a short write, a
//! wrong magic, `num_samples` or `in_dim` 0, a negative timeout, a length
//! that is not `16 + 4 * num_samples * in_dim` (the checks of
//! [`Request::parse_header`]), or `num_samples` or `in_dim` above the
//! protocol's [`protocol::MAX_BATCH`] and [`protocol::MAX_DIM`]; `EFAULT`
//! if the inputs cannot be read; then the device's limits (`EINVAL`:
//! `num_samples` above its max batch, `in_dim` not the model's; `E2BIG`: a
//! request above `max_request_kib` or too large for the ring, see
//! [`crate::request`]); then as for `/proc` (`ENODEV`, `ETIMEDOUT`,
//! `EINTR`, `EIO`, `ENOMEM`), and `EAGAIN` when the caller's uid has
//! `max_orphans` abandoned requests in flight (see [`crate::orphans`]). A
//! header `timeout_ms` below [`crate::request::MIN_TIMEOUT_MS`] is raised
//! to it. A read before any successful write fails with `ENODATA`. Answers
//! never come from the result cache.
//!
//! Who may open it: the node's mode is the module parameter `dev_mode`
//! (default 0666, the seed's interface); with `dev_gid` set, `open` also
//! requires membership of that group (or `CAP_DAC_OVERRIDE`), else
//! `EACCES`.

use crate::dev_abi::{self, Kind, Request, RequestError, Response};
use crate::fileio;
use crate::predict::CachePolicy;
use crate::protocol;
use crate::request::{values_as_bytes, values_as_bytes_mut, Deadline};
use kernel::alloc::flags::GFP_KERNEL_ACCOUNT;
use kernel::bindings;
use kernel::error::from_result;
use kernel::ffi::{c_char, c_int};
use kernel::prelude::*;
use kernel::sync::{new_mutex, Arc, Mutex};
use kernel::uaccess::UserSlice;

/// The per-open-file state.
#[pin_data]
struct DevFile {
    /// The answer of the last successful write (kvmalloc'd: a batch's may
    /// be megabytes).
    #[pin]
    answer: Mutex<Option<KVVec<u8>>>,
}

fn request_error(e: RequestError) -> Error {
    match e {
        RequestError::TooLong => E2BIG,
        _ => EINVAL,
    }
}

fn write(
    df: &DevFile,
    buf: *const c_char,
    count: usize,
    pos: *mut bindings::loff_t,
) -> Result<isize> {
    dev_abi::check_write_len(count).map_err(request_error)?;
    // The header alone first: a bad one is refused before any input is
    // copied or any buffer the size of the write is allocated.
    let mut user = UserSlice::new(buf as usize, count).reader();
    let mut header = [0u8; dev_abi::HEADER_LEN];
    user.read_slice(&mut header)?;
    let r = Request::parse_header(&header, count).map_err(request_error)?;
    if r.num_samples > protocol::MAX_BATCH || r.in_dim > protocol::MAX_DIM {
        return Err(EINVAL);
    }
    let num_samples = r.num_samples as usize;
    let n = r.value_count().ok_or(EINVAL)?;
    let mut inputs = KVVec::from_elem(0i32, n, GFP_KERNEL_ACCOUNT | __GFP_NOWARN)?;
    user.read_slice(values_as_bytes_mut(&mut inputs))?;
    // The wire is little-endian (a no-op on little-endian machines).
    for v in inputs.iter_mut() {
        *v = i32::from_le(*v);
    }
    let deadline = Deadline::after_ms_or_default(r.timeout_ms);
    let (outputs, generation) = match r.kind {
        Kind::Predict => crate::predict::run_with_generation(
            &inputs,
            num_samples,
            None,
            &deadline,
            CachePolicy::Bypass,
        )?,
        Kind::Null => (
            KVVec::new(),
            crate::predict::null(&inputs, num_samples, &deadline)?,
        ),
    };
    drop(inputs);
    let header = Response {
        num_samples: r.num_samples,
        out_dim: (outputs.len() / num_samples) as u32,
        generation,
    };
    let mut answer = KVVec::with_capacity(header.read_len(), GFP_KERNEL_ACCOUNT | __GFP_NOWARN)?;
    answer.extend_from_slice(&header.header(), GFP_KERNEL_ACCOUNT)?;
    if cfg!(target_endian = "little") {
        answer.extend_from_slice(values_as_bytes(&outputs), GFP_KERNEL_ACCOUNT)?;
    } else {
        for v in outputs.iter() {
            answer.extend_from_slice(&v.to_le_bytes(), GFP_KERNEL_ACCOUNT)?;
        }
    }
    *df.answer.lock() = Some(answer);
    fileio::written(count, pos)
}

fn read(df: &DevFile, buf: *mut c_char, count: usize, pos: *mut bindings::loff_t) -> Result<isize> {
    let guard = df.answer.lock();
    let answer = guard
        .as_ref()
        .ok_or(Error::from_errno(-(bindings::ENODATA as i32)))?;
    fileio::read_answer(answer, buf, count, pos)
}

/// The open file of `file`.
///
/// # Safety
///
/// `file` must be opened by [`virtio_nn_dev_open`] and not yet released.
unsafe fn dev_file<'a>(file: *mut bindings::file) -> &'a DevFile {
    // SAFETY: `private_data` holds the reference from `open` until release.
    unsafe { &*(*file).private_data.cast::<DevFile>() }
}

/// `file_operations.open`.
#[no_mangle]
pub(crate) extern "C" fn virtio_nn_dev_open(
    _inode: *mut bindings::inode,
    file: *mut bindings::file,
) -> c_int {
    from_result(|| {
        // SAFETY: No preconditions.
        if !unsafe { crate::glue::virtio_nn_dev_allowed() } {
            return Err(EACCES);
        }
        let df = Arc::pin_init(
            pin_init!(DevFile {
                answer <- new_mutex!(None, "virtio_nn_devfile"),
            }),
            GFP_KERNEL,
        )?;
        // SAFETY: `file` is being opened; the reference is dropped at
        // release. (The misc core's `private_data`, the miscdevice, is not
        // needed.)
        unsafe { (*file).private_data = Arc::into_raw(df).cast_mut().cast() };
        Ok(0)
    })
}

/// `file_operations.release`.
#[no_mangle]
pub(crate) extern "C" fn virtio_nn_dev_release(
    _inode: *mut bindings::inode,
    file: *mut bindings::file,
) -> c_int {
    // SAFETY: `private_data` holds the reference from `open`; this is the
    // last use of the file.
    drop(unsafe { Arc::from_raw((*file).private_data.cast::<DevFile>()) });
    0
}

/// `file_operations.write`.
#[no_mangle]
pub(crate) extern "C" fn virtio_nn_dev_write(
    file: *mut bindings::file,
    buf: *const c_char,
    count: usize,
    pos: *mut bindings::loff_t,
) -> isize {
    // SAFETY: The VFS calls this on a file opened by `virtio_nn_dev_open`.
    let df = unsafe { dev_file(file) };
    from_result(|| write(df, buf, count, pos))
}

/// `file_operations.read`.
#[no_mangle]
pub(crate) extern "C" fn virtio_nn_dev_read(
    file: *mut bindings::file,
    buf: *mut c_char,
    count: usize,
    pos: *mut bindings::loff_t,
) -> isize {
    // SAFETY: The VFS calls this on a file opened by `virtio_nn_dev_open`.
    let df = unsafe { dev_file(file) };
    from_result(|| read(df, buf, count, pos))
}

/// `/dev/neural_network`, registered while alive.
pub(crate) struct MiscDevice;

impl MiscDevice {
    pub(crate) fn new() -> Result<Self> {
        // SAFETY: The miscdevice is a static of the glue, registered once.
        kernel::error::to_result(unsafe { crate::glue::virtio_nn_misc_register() })?;
        Ok(Self)
    }
}

impl Drop for MiscDevice {
    fn drop(&mut self) {
        // SAFETY: Registered in `new`. Open files keep the module (the
        // fops' owner), so none is left when this runs at unload.
        unsafe { crate::glue::virtio_nn_misc_deregister() };
    }
}
