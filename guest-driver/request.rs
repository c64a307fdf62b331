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
//!
//! Such a request, given up by its waiter but still held by the device, is an
//! *orphan*: it is counted (per request queue and per uid, see
//! [`crate::orphans`]) from the moment its waiter gives up until the device
//! hands it back (or the device goes away), so that one user cannot fill
//! the rings with abandoned requests.

use crate::bind::sys;
use crate::glue;
use crate::protocol::{
    ModelChunk, ModelRequest, RequestHeader, ResponseHeader, OP_GET_MODEL, OP_NULL, OP_PREDICT,
};
use core::ffi::c_void;
use core::ptr;
use core::sync::atomic::{AtomicI32, AtomicPtr, AtomicU32, Ordering};
use kernel::alloc::flags::GFP_KERNEL_ACCOUNT;
use kernel::bindings;
use kernel::ffi::{c_long, c_ulong};
use kernel::prelude::*;
use kernel::sync::Arc;
use kernel::types::Opaque;

/// `ETIMEDOUT`, which `kernel::error::code` of Linux 6.12 lacks.
pub(crate) fn etimedout() -> Error {
    Error::from_errno(-(bindings::ETIMEDOUT as i32))
}

/// The shortest timeout a caller may choose, in ms: shorter ones (the
/// `/dev` header's `timeout_ms`, the kernel API's) are raised to it, so that
/// a caller cannot abandon requests at a high rate.
pub(crate) const MIN_TIMEOUT_MS: u32 = 10;

/// When a wait for the device ends.
#[derive(Clone, Copy)]
pub(crate) struct Deadline {
    /// The jiffies value at which it ends; `None`: never.
    end: Option<c_ulong>,
    /// Whether a timeout may mark the device unresponsive: only one at
    /// least as long as the module's `timeout_ms` (a caller's short timeout
    /// says nothing about the device).
    marks_unresponsive: bool,
}

impl Deadline {
    /// `ms` milliseconds from now (at least [`MIN_TIMEOUT_MS`]); 0 means no
    /// limit.
    pub(crate) fn after_ms(ms: u32) -> Self {
        if ms == 0 {
            return Self {
                end: None,
                marks_unresponsive: true,
            };
        }
        let ms = ms.max(MIN_TIMEOUT_MS);
        let module = sys::timeout_ms();
        let end = sys::jiffies_after_ms(ms);
        Self {
            end: Some(end),
            marks_unresponsive: module != 0 && ms >= module,
        }
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
        Self::after_ms(sys::timeout_ms())
    }

    /// Whether running out may mark the device unresponsive (the timeout
    /// is at least the module's `timeout_ms`).
    pub(crate) fn marks_unresponsive(&self) -> bool {
        self.marks_unresponsive
    }

    /// Jiffies left (0 once it has passed), `c_long::MAX`
    /// (`MAX_SCHEDULE_TIMEOUT`) without a limit.
    pub(crate) fn left(&self) -> c_long {
        match self.end {
            None => c_long::MAX,
            Some(end) => sys::jiffies_until(end),
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
    /// [`WAITING`], [`ORPHANED`] or [`DONE`].
    state: AtomicU32,
    /// The orphan counter of the queue the request was put on (null before).
    queue_orphans: AtomicPtr<AtomicU32>,
    /// The orphan counter of the uid it is charged to, once orphaned.
    uid_orphans: AtomicPtr<AtomicU32>,
}

/// [`Request::state`]: the waiter waits for the answer (or has not given up
/// yet).
const WAITING: u32 = 0;
/// The waiter gave up while the device held the request: an orphan.
const ORPHANED: u32 = 1;
/// The device handed the request back (or it was failed).
const DONE: u32 = 2;

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
        // Charged to the caller's memory cgroup: the request may outlive
        // the call (an orphan).
        let mut buf = KVec::with_capacity(readable_len + writable_len, GFP_KERNEL_ACCOUNT)?;
        buf.extend_from_slice(&header.to_bytes(), GFP_KERNEL_ACCOUNT)?;
        for v in inputs {
            buf.extend_from_slice(&v.to_le_bytes(), GFP_KERNEL_ACCOUNT)?;
        }
        buf.extend_with(writable_len, 0, GFP_KERNEL_ACCOUNT)?;
        Self::from_buf(id, buf, readable_len)
    }

    /// Creates an `OP_GET_MODEL` request for the chunk `model` names; the
    /// answer has room for the [`ModelChunk`] header and `model.length`
    /// bytes.
    pub(crate) fn new_get_model(id: u64, model: &ModelRequest) -> Result<Arc<Self>> {
        let header = RequestHeader {
            opcode: OP_GET_MODEL,
            flags: 0,
            id,
            num_samples: 0,
            in_dim: 0,
        };
        let readable_len = RequestHeader::SIZE + ModelRequest::SIZE;
        let writable_len = ResponseHeader::SIZE + ModelChunk::SIZE + model.length as usize;
        let mut buf = KVec::with_capacity(readable_len + writable_len, GFP_KERNEL_ACCOUNT)?;
        buf.extend_from_slice(&header.to_bytes(), GFP_KERNEL_ACCOUNT)?;
        buf.extend_from_slice(&model.to_bytes(), GFP_KERNEL_ACCOUNT)?;
        buf.extend_with(writable_len, 0, GFP_KERNEL_ACCOUNT)?;
        Self::from_buf(id, buf, readable_len)
    }

    /// The request of `buf`: `readable_len` device-readable bytes, then the
    /// device-writable part.
    fn from_buf(id: u64, buf: KVec<u8>, readable_len: usize) -> Result<Arc<Self>> {
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
                state: AtomicU32::new(WAITING),
                queue_orphans: AtomicPtr::new(core::ptr::null_mut()),
                uid_orphans: AtomicPtr::new(core::ptr::null_mut()),
            }),
            GFP_KERNEL_ACCOUNT,
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

    /// Records the orphan counter of the queue the request is put on.
    ///
    /// # Safety
    ///
    /// `counter` must stay valid until the request is handed back or failed
    /// ([`Request::complete_token`]).
    pub(crate) unsafe fn set_queue_orphans(&self, counter: &AtomicU32) {
        self.queue_orphans
            .store(ptr::from_ref(counter).cast_mut(), Ordering::Relaxed);
    }

    /// Makes the request an orphan charged to `uid_counter`, already
    /// incremented by the caller (and to its queue's counter): its waiter
    /// gives up. If the device has handed it back already, it is not one:
    /// the counter is decremented again and false returned.
    ///
    /// # Safety
    ///
    /// The request must be on a queue (submitted), and `uid_counter` must
    /// stay valid until the request is handed back or failed.
    pub(crate) unsafe fn orphan(&self, uid_counter: &AtomicU32) -> bool {
        let queue = self.queue_orphans.load(Ordering::Relaxed);
        // Counted first: the device may hand it back at any moment.
        // SAFETY: Set at submission, valid while the request is on the
        // queue (caller).
        if let Some(q) = unsafe { queue.as_ref() } {
            q.fetch_add(1, Ordering::Relaxed);
        }
        self.uid_orphans
            .store(ptr::from_ref(uid_counter).cast_mut(), Ordering::Relaxed);
        if self
            .state
            .compare_exchange(WAITING, ORPHANED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            return true;
        }
        // Handed back meanwhile: not an orphan.
        uid_counter.fetch_sub(1, Ordering::Relaxed);
        // SAFETY: As above.
        if let Some(q) = unsafe { queue.as_ref() } {
            q.fetch_sub(1, Ordering::Relaxed);
        }
        false
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
        if req.state.swap(DONE, Ordering::AcqRel) == ORPHANED {
            // SAFETY: An orphan's counters are set before it becomes one and
            // stay valid until now (`orphan`, `set_queue_orphans`).
            unsafe {
                if let Some(u) = req.uid_orphans.load(Ordering::Relaxed).as_ref() {
                    u.fetch_sub(1, Ordering::Relaxed);
                }
                if let Some(q) = req.queue_orphans.load(Ordering::Relaxed).as_ref() {
                    q.fetch_sub(1, Ordering::Relaxed);
                }
            }
        }
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
