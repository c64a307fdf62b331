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
//! Errors of a write (nothing changes on error): `EINVAL` for a short
//! write, a wrong magic, `num_samples` 0 or above the device's max batch,
//! `in_dim` not the model's, a length that is not `16 + 4 * num_samples *
//! in_dim`, or a negative timeout (the checks of [`Request::parse`], then
//! the device's limits); `E2BIG` for a write over
//! [`dev_abi::MAX_WRITE_LEN`]; then as for `/proc` (`ENODEV`, `ETIMEDOUT`,
//! `EINTR`, `EIO`), and `EAGAIN` when the caller's uid has `max_orphans`
//! abandoned requests in flight (see [`crate::orphans`]). A header
//! `timeout_ms` below [`crate::request::MIN_TIMEOUT_MS`] is raised to it. A
//! read before any successful write fails with `ENODATA`. Answers never
//! come from the result cache.
//!
//! Who may open it: the node's mode is the module parameter `dev_mode`
//! (default 0666, the seed's interface); with `dev_gid` set, `open` also
//! requires membership of that group (or `CAP_DAC_OVERRIDE`), else
//! `EACCES`.

use crate::bind::{sys, user};
use crate::dev_abi::{self, Kind, Request, RequestError, Response};
use crate::predict::{CachePolicy, Fallback};
use crate::request::Deadline;
use kernel::alloc::flags::GFP_KERNEL_ACCOUNT;
use kernel::bindings::{self, loff_t};
use kernel::prelude::*;
use kernel::sync::{new_mutex, Arc, Mutex};
use kernel::uaccess::{UserSliceReader, UserSliceWriter};

/// The per-open-file state.
#[pin_data]
pub(crate) struct DevFile {
    /// The answer of the last successful write.
    #[pin]
    answer: Mutex<Option<KVec<u8>>>,
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
pub(crate) fn write(df: &DevFile, data: UserSliceReader, pos: &mut loff_t) -> Result<isize> {
    let count = data.len();
    dev_abi::check_write_len(count).map_err(request_error)?;
    let req = user::copy_in(data)?;
    let r = Request::parse(&req).map_err(request_error)?;
    let num_samples = r.num_samples as usize;
    let n = r.value_count().ok_or(EINVAL)?;
    let mut inputs = KVec::with_capacity(n, GFP_KERNEL_ACCOUNT)?;
    for v in Request::inputs(&req) {
        inputs.push(v, GFP_KERNEL_ACCOUNT)?;
    }
    drop(req);
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
            outputs: KVec::new(),
            generation: crate::predict::null(&inputs, num_samples, &deadline)?,
            fallback: false,
        },
    };
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
    let len = dev_abi::HEADER_LEN + outputs.len() * 4;
    let mut answer = KVec::with_capacity(len, GFP_KERNEL_ACCOUNT)?;
    answer.extend_from_slice(&header, GFP_KERNEL_ACCOUNT)?;
    for v in outputs.iter() {
        answer.extend_from_slice(&v.to_le_bytes(), GFP_KERNEL_ACCOUNT)?;
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
