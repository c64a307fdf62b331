// SPDX-License-Identifier: GPL-2.0

//! `/dev/neural_network`: the binary interface (a misc device, registered by
//! the C glue, since Linux 6.12 has no Rust miscdevice abstraction).
//!
//! All fields are little-endian 32-bit integers; values are Q16.16.
//!
//! A **write** is one request, in one `write()` call:
//!
//! | offset | field | |
//! |---|---|---|
//! | 0 | `magic` | `0x51524e4e` (the bytes `NNRQ`); `0x4e524e4e` (`NNRN`): the null request |
//! | 4 | `num_samples` | `1..=max_batch` |
//! | 8 | `in_dim` | the model's input width |
//! | 12 | `timeout_ms` | `i32`; 0: the module parameter `timeout_ms` |
//! | 16 | inputs | `num_samples * in_dim` values, row after row |
//!
//! It blocks until the device answers and returns the byte count. The null
//! request (`NNRN`) makes the same round trip without inference (the
//! device reads the inputs and answers with a header only): its answer has
//! `out_dim` 0 and no outputs; it is not counted in `performance`. A **read**
//! then returns the answer of the last successful write on the same open
//! file (partial reads follow the file position; a write resets it to 0):
//!
//! | offset | field | |
//! |---|---|---|
//! | 0 | `magic` | `0x53524e4e` (the bytes `NNRS`) |
//! | 4 | `num_samples` | as asked |
//! | 8 | `out_dim` | the model's output width |
//! | 12 | `generation` | the model generation that answered |
//! | 16 | outputs | `num_samples * out_dim` values, row after row |
//!
//! Errors of a write (nothing changes on error): `EINVAL` for a short
//! write, a wrong magic, `num_samples` 0 or above the device's max batch,
//! `in_dim` not the model's, a length that is not `16 + 4 * num_samples *
//! in_dim`, or a negative timeout; `E2BIG` for a write over
//! [`MAX_WRITE_LEN`]; then as for `/proc` (`ENODEV`, `ETIMEDOUT`, `EINTR`,
//! `EIO`). A read before any successful write fails with `ENODATA`.
//! Answers never come from the result cache.

use crate::fileio;
use crate::predict::CachePolicy;
use crate::request::{Deadline, Op};
use kernel::bindings;
use kernel::error::from_result;
use kernel::ffi::{c_char, c_int};
use kernel::prelude::*;
use kernel::sync::{new_mutex, Arc, Mutex};

/// `magic` of a request (the bytes `NNRQ`).
pub(crate) const REQUEST_MAGIC: u32 = u32::from_le_bytes(*b"NNRQ");
/// `magic` of a null request (the bytes `NNRN`): the same round trip
/// without inference; the answer has `out_dim` 0 and no outputs.
pub(crate) const NULL_MAGIC: u32 = u32::from_le_bytes(*b"NNRN");
/// `magic` of an answer (the bytes `NNRS`).
pub(crate) const RESPONSE_MAGIC: u32 = u32::from_le_bytes(*b"NNRS");
/// Size of the request and response headers.
const HEADER_LEN: usize = 16;
/// Largest write accepted.
pub(crate) const MAX_WRITE_LEN: usize = 4 << 20;

/// The per-open-file state.
#[pin_data]
struct DevFile {
    /// The answer of the last successful write.
    #[pin]
    answer: Mutex<Option<KVec<u8>>>,
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn write(
    df: &DevFile,
    buf: *const c_char,
    count: usize,
    pos: *mut bindings::loff_t,
) -> Result<isize> {
    if count > MAX_WRITE_LEN {
        return Err(E2BIG);
    }
    if count < HEADER_LEN {
        return Err(EINVAL);
    }
    let req = fileio::copy_write(buf, count)?;
    let num_samples = le32(&req, 4) as usize;
    let in_dim = le32(&req, 8) as usize;
    let timeout_ms = le32(&req, 12) as i32;
    let op = match le32(&req, 0) {
        REQUEST_MAGIC => Op::Predict,
        NULL_MAGIC => Op::Null,
        _ => return Err(EINVAL),
    };
    if num_samples == 0
        || in_dim == 0
        || timeout_ms < 0
        || num_samples
            .checked_mul(in_dim)
            .and_then(|n| n.checked_mul(4))
            .and_then(|n| n.checked_add(HEADER_LEN))
            != Some(count)
    {
        return Err(EINVAL);
    }
    let n = num_samples * in_dim;
    let mut inputs = KVec::with_capacity(n, GFP_KERNEL)?;
    for i in 0..n {
        inputs.push(le32(&req, HEADER_LEN + 4 * i) as i32, GFP_KERNEL)?;
    }
    drop(req);
    let deadline = Deadline::after_ms_or_default(timeout_ms as u32);
    let (outputs, generation) = match op {
        Op::Predict => crate::predict::run_with_generation(
            &inputs,
            num_samples,
            None,
            &deadline,
            CachePolicy::Bypass,
        )?,
        Op::Null => (
            KVec::new(),
            crate::predict::null(&inputs, num_samples, &deadline)?,
        ),
    };
    let out_dim = outputs.len() / num_samples;
    let mut answer = KVec::with_capacity(HEADER_LEN + 4 * outputs.len(), GFP_KERNEL)?;
    for v in [
        RESPONSE_MAGIC,
        num_samples as u32,
        out_dim as u32,
        generation,
    ] {
        answer.extend_from_slice(&v.to_le_bytes(), GFP_KERNEL)?;
    }
    for v in outputs.iter() {
        answer.extend_from_slice(&v.to_le_bytes(), GFP_KERNEL)?;
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
