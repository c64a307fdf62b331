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
//! only); it is not counted in `performance`. When the device cannot
//! answer a prediction, the CPU fallback does ([`crate::fallback`]): the
//! answer's magic is then `NNRF`; a request with the magic `NNRD` is never
//! answered by it.
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

use crate::bind::kvec::{values_as_bytes, values_as_bytes_mut};
use crate::bind::{sys, user};
use crate::dev_abi::{self, Kind, Request, RequestError, Response};
use crate::predict::{CachePolicy, Fallback};
use crate::protocol;
use crate::request::Deadline;
use kernel::alloc::flags::{__GFP_NOWARN, GFP_KERNEL_ACCOUNT};
use kernel::bindings::{self, loff_t};
use kernel::prelude::*;
use kernel::sync::{new_mutex, Arc, Mutex};
use kernel::uaccess::{UserSliceReader, UserSliceWriter};

/// The per-open-file state.
#[pin_data]
pub(crate) struct DevFile {
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

/// A new open file (`open`): `EACCES` unless the caller may use the
/// device (`dev_gid`).
pub(crate) fn open() -> Result<Arc<DevFile>> {
    if !sys::dev_allowed() {
        return Err(EACCES);
    }
    Arc::pin_init(
        pin_init!(DevFile {
            answer <- new_mutex!(None, "virtio_nn_devfile"),
        }),
        GFP_KERNEL,
    )
}

/// A `write()`: one request; returns once it is answered.
pub(crate) fn write(df: &DevFile, mut data: UserSliceReader, pos: &mut loff_t) -> Result<isize> {
    let count = data.len();
    dev_abi::check_write_len(count).map_err(request_error)?;
    // The header alone first: a bad one is refused before any input is
    // copied or any buffer the size of the write is allocated.
    let mut header = [0u8; dev_abi::HEADER_LEN];
    data.read_slice(&mut header)?;
    let r = Request::parse_header(&header, count).map_err(request_error)?;
    if r.num_samples > protocol::MAX_BATCH || r.in_dim > protocol::MAX_DIM {
        return Err(EINVAL);
    }
    let num_samples = r.num_samples as usize;
    let n = r.value_count().ok_or(EINVAL)?;
    let mut inputs = KVVec::from_elem(0i32, n, GFP_KERNEL_ACCOUNT | __GFP_NOWARN)?;
    data.read_slice(values_as_bytes_mut(&mut inputs))?;
    // The wire is little-endian (a no-op on little-endian machines).
    for v in inputs.iter_mut() {
        *v = i32::from_le(*v);
    }
    let deadline = Deadline::after_ms_or_default(r.timeout_ms);
    let predict = |fallback| {
        crate::predict::run_with_generation(
            &inputs,
            num_samples,
            None,
            &deadline,
            CachePolicy::Bypass,
            fallback,
        )
    };
    let answer = match r.kind {
        Kind::Predict => predict(Fallback::Allow)?,
        Kind::PredictDeviceOnly => predict(Fallback::Deny)?,
        Kind::Null => crate::predict::Answer {
            outputs: KVVec::new(),
            generation: crate::predict::null(&inputs, num_samples, &deadline)?,
            fallback: false,
        },
    };
    drop(inputs);
    let header = Response {
        num_samples: r.num_samples,
        out_dim: (answer.outputs.len() / num_samples) as u32,
        generation: answer.generation,
    };
    let header = if answer.fallback {
        header.fallback_header()
    } else {
        header.header()
    };
    let outputs = answer.outputs;
    let mut answer = KVVec::with_capacity(
        dev_abi::HEADER_LEN + outputs.len() * 4,
        GFP_KERNEL_ACCOUNT | __GFP_NOWARN,
    )?;
    answer.extend_from_slice(&header, GFP_KERNEL_ACCOUNT)?;
    if cfg!(target_endian = "little") {
        answer.extend_from_slice(values_as_bytes(&outputs), GFP_KERNEL_ACCOUNT)?;
    } else {
        for v in outputs.iter() {
            answer.extend_from_slice(&v.to_le_bytes(), GFP_KERNEL_ACCOUNT)?;
        }
    }
    *df.answer.lock() = Some(answer);
    user::written(count, pos)
}

/// A `read()`: the answer of the last successful write.
pub(crate) fn read(df: &DevFile, out: UserSliceWriter, pos: &mut loff_t) -> Result<isize> {
    let guard = df.answer.lock();
    let answer = guard
        .as_ref()
        .ok_or(Error::from_errno(-(bindings::ENODATA as i32)))?;
    user::read_answer(answer, out, pos)
}
