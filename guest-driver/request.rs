// SPDX-License-Identifier: GPL-2.0

//! One prediction request: its buffers, its completion and its lifetime.
//!
//! A [`Request`] is a reference-counted object that holds, in one kmalloc'd
//! buffer, the device-readable part of the descriptor chain (a
//! [`RequestHeader`] and the inputs) followed by the device-writable part (room
//! for a [`ResponseHeader`] and the outputs). The waiter holds one reference;
//! while the request is on the virtqueue the device holds another, as the
//! queue's token. Whoever drops the last reference frees the buffers, so a
//! waiter that gives up (timeout, fatal signal) never frees memory that the
//! device may still write: a late answer lands in memory that is still ours and
//! is dropped when the device hands the buffers back.

use crate::glue;
use crate::protocol::{RequestHeader, ResponseHeader, OP_NULL, OP_PREDICT};
use core::ffi::c_void;
use core::sync::atomic::{AtomicI32, AtomicU32, Ordering};
use kernel::bindings;
use kernel::ffi::{c_long, c_ulong};
use kernel::prelude::*;
use kernel::sync::Arc;
use kernel::types::Opaque;

/// `ETIMEDOUT`, which `kernel::error::code` of Linux 6.12 lacks.
pub(crate) fn etimedout() -> Error {
    Error::from_errno(-(bindings::ETIMEDOUT as i32))
}

/// When a wait for the device ends.
#[derive(Clone, Copy)]
pub(crate) struct Deadline {
    /// The jiffies value at which it ends; `None`: never.
    end: Option<c_ulong>,
}

impl Deadline {
    /// `ms` milliseconds from now; 0 means no limit.
    pub(crate) fn after_ms(ms: u32) -> Self {
        if ms == 0 {
            return Self { end: None };
        }
        // SAFETY: the C helper only reads `jiffies` and converts `ms`; it has
        // no preconditions.
        let end = unsafe { glue::virtio_nn_jiffies_after_ms(ms) };
        Self { end: Some(end) }
    }

    /// `ms` milliseconds from now; 0 means the module's `timeout_ms`.
    pub(crate) fn after_ms_or_default(ms: u32) -> Self {
        if ms == 0 {
            Self::module_default()
        } else {
            Self::after_ms(ms)
        }
    }

    /// The module's `timeout_ms` from now.
    pub(crate) fn module_default() -> Self {
        // SAFETY: No preconditions.
        Self::after_ms(unsafe { glue::virtio_nn_timeout_ms() })
    }

    /// Jiffies left (0 once it has passed), `c_long::MAX`
    /// (`MAX_SCHEDULE_TIMEOUT`) without a limit.
    pub(crate) fn left(&self) -> c_long {
        match self.end {
            None => c_long::MAX,
            // SAFETY: No preconditions.
            Some(end) => unsafe { glue::virtio_nn_jiffies_until(end) },
        }
    }
}

/// What a request asks of the device.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    /// Run the model on every sample (`OP_PREDICT`).
    Predict,
    /// The same round trip without inference: the device reads the inputs
    /// and answers with the response header only (`OP_NULL`), for
    /// measuring the transport.
    Null,
}

/// A prediction request for one sample or a batch.
#[pin_data]
pub(crate) struct Request {
    /// Completed once the device has handed the request back (or will
    /// never do so because it went away).
    #[pin]
    done: Opaque<bindings::completion>,
    /// The id in the request header, echoed by the device.
    id: u64,
    /// The device-readable part (`readable_len` bytes), then the
    /// device-writable part. The device writes the latter while the driver
    /// holds shared references to the request, so each byte is an
    /// [`Opaque`] (interior mutability); the driver reads it only after
    /// `done`.
    buf: KVec<Opaque<u8>>,
    /// Length of the device-readable part.
    readable_len: usize,
    /// Bytes the device wrote into the writable part (the used length).
    used_len: AtomicU32,
    /// 0, or a negative errno if the request was failed without an answer.
    error: AtomicI32,
}

impl Request {
    /// Creates a request with the given id and `num_samples` rows of
    /// inputs whose answer has room for `num_samples` rows of `out_dim`
    /// outputs (0 for [`Op::Null`]).
    pub(crate) fn new(
        op: Op,
        id: u64,
        inputs: &[i32],
        num_samples: usize,
        out_dim: usize,
    ) -> Result<Arc<Self>> {
        if num_samples == 0 {
            return Err(EINVAL);
        }
        let in_dim = u32::try_from(inputs.len() / num_samples).map_err(|_| EINVAL)?;
        let header = RequestHeader {
            opcode: match op {
                Op::Predict => OP_PREDICT,
                Op::Null => OP_NULL,
            },
            flags: 0,
            id,
            num_samples: u32::try_from(num_samples).map_err(|_| EINVAL)?,
            in_dim,
        };
        let readable_len = RequestHeader::SIZE + inputs.len() * 4;
        let writable_len = ResponseHeader::SIZE + num_samples * out_dim * 4;
        let mut buf = KVec::with_capacity(readable_len + writable_len, GFP_KERNEL)?;
        buf.extend_from_slice(&header.to_bytes(), GFP_KERNEL)?;
        for v in inputs {
            buf.extend_from_slice(&v.to_le_bytes(), GFP_KERNEL)?;
        }
        buf.extend_with(writable_len, 0, GFP_KERNEL)?;
        let (ptr, len, cap) = buf.into_raw_parts();
        // SAFETY: `ptr`, `len` and `cap` come from `into_raw_parts` of a
        // `KVec` of the same allocator, and `Opaque<u8>` has the layout of
        // `u8` (`repr(transparent)` over `UnsafeCell<MaybeUninit<u8>>`); the
        // `len` bytes are initialised.
        let buf = unsafe { KVec::<Opaque<u8>>::from_raw_parts(ptr.cast(), len, cap) };
        Arc::pin_init(
            pin_init!(Self {
                // SAFETY: `slot` is valid for writes and pinned: the
                // completion stays where it is initialised.
                done <- Opaque::ffi_init(|slot| unsafe { glue::virtio_nn_init_completion(slot) }),
                id,
                buf,
                readable_len,
                used_len: AtomicU32::new(0),
                error: AtomicI32::new(0),
            }),
            GFP_KERNEL,
        )
    }

    /// Address and length of the device-readable part.
    pub(crate) fn readable(&self) -> (*const u8, usize) {
        (self.buf.as_ptr().cast::<u8>(), self.readable_len)
    }

    /// Address and length of the device-writable part. The device may
    /// write through it while shared references exist: the bytes are
    /// [`Opaque`].
    pub(crate) fn writable(&self) -> (*mut u8, usize) {
        // `Opaque::raw_get` keeps the provenance of the whole buffer.
        let start = Opaque::raw_get(self.buf.as_ptr());
        // SAFETY: `readable_len <= buf.len()`, so the result is within (or one
        // past the end of) the allocation.
        let start = unsafe { start.add(self.readable_len) };
        (start, self.buf.len() - self.readable_len)
    }

    /// Gives the device a reference: the token to put on the virtqueue.
    pub(crate) fn into_token(this: Arc<Self>) -> *mut c_void {
        Arc::into_raw(this).cast_mut().cast()
    }

    /// Takes back the reference of a token that never reached the device.
    ///
    /// # Safety
    ///
    /// `token` must come from [`Request::into_token`] and not have been
    /// given back before.
    pub(crate) unsafe fn drop_token(token: *mut c_void) {
        // SAFETY: Guaranteed by the caller.
        drop(unsafe { Arc::from_raw(token.cast::<Self>()) });
    }

    /// Completes the request of a token the device handed back (`error` 0,
    /// `used_len` from the used ring) or that is failed (`error` a negative
    /// errno), and drops the device's reference. May run in interrupt
    /// context.
    ///
    /// # Safety
    ///
    /// `token` must come from [`Request::into_token`] and not have been
    /// given back before, and the device must no longer access the buffers.
    pub(crate) unsafe fn complete_token(token: *mut c_void, used_len: u32, error: i32) {
        // SAFETY: Guaranteed by the caller.
        let req = unsafe { Arc::from_raw(token.cast::<Self>()) };
        req.used_len.store(used_len, Ordering::Release);
        req.error.store(error, Ordering::Release);
        // SAFETY: `done` was initialised in `new`.
        unsafe { bindings::complete(req.done.get()) };
    }

    /// Waits until the request completes, until `deadline` at most; fatal
    /// signals interrupt the wait. On error, the caller must drop its
    /// reference without touching the buffers.
    pub(crate) fn wait(&self, deadline: &Deadline) -> Result<Completed<'_>> {
        let timeout = deadline.left();
        // SAFETY: `done` was initialised in `new`; `timeout` is not negative
        // (0 only checks whether the request is done).
        let left = unsafe {
            bindings::wait_for_completion_killable_timeout(self.done.get(), timeout as _)
        };
        if left == 0 {
            return Err(etimedout());
        }
        if left < 0 {
            return Err(EINTR);
        }
        let error = self.error.load(Ordering::Acquire);
        if error != 0 {
            return Err(Error::from_errno(error));
        }
        Ok(Completed { req: self })
    }
}

// SAFETY: The device writes the buffer's writable part, whose bytes are
// `Opaque`, and the driver reads it only through `Completed`, which exists
// only once the device is done with it; everything else is immutable, atomic
// or the completion, which has its own locking.
unsafe impl Send for Request {}
// SAFETY: See `Send`.
unsafe impl Sync for Request {}

/// A request the device has answered: its response may be read.
pub(crate) struct Completed<'a> {
    req: &'a Request,
}

impl Completed<'_> {
    /// The bytes the device wrote: the response header and the outputs.
    pub(crate) fn response(&self) -> &[u8] {
        let used = self.req.used_len.load(Ordering::Acquire) as usize;
        let (start, len) = self.req.writable();
        // SAFETY: The `len` bytes at `start` are initialised (zeroed in
        // `new`, then written by the device) and, the request being complete,
        // nothing writes them any more while `self` borrows the request.
        unsafe { core::slice::from_raw_parts(start, used.min(len)) }
    }
}
