// SPDX-License-Identifier: GPL-2.0

//! One prediction request: its buffers, its completion and its lifetime.
//!
//! A [`Request`] is a reference-counted object that holds the
//! device-readable part of the descriptor chain (a [`RequestHeader`] and the
//! inputs) and the device-writable part (room for a [`ResponseHeader`] and
//! the outputs), in chunked [`DeviceBufs`]. The waiter holds one reference;
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
//! the rings with abandoned requests. The request remembers the uid's slot
//! ([`Request::orphan`]); whoever completes it releases the counts
//! ([`Request::complete`] says whether it was an orphan).
//!
//! Size limits: a request whose two parts together exceed
//! [`max_request_bytes`] (the module parameter `max_request_kib`, by default
//! the largest request the protocol allows) fails with `E2BIG`, as does one
//! that cannot be split into as few descriptors as the queue's ring holds.
//! The chunks are allocated with `__GFP_NOWARN`: a failed allocation is
//! `ENOMEM`, never a warning in the kernel log.

use crate::bind::dma::{DeviceBufs, QueueLimits};
use crate::bind::kvec::values_as_bytes;
use crate::bind::sync::{Completion, Wait};
use crate::bind::sys;
use crate::bind::virtio::HasBufs;
use crate::protocol::{
    ModelChunk, ModelRequest, RequestHeader, ResponseHeader, MAX_BATCH, MAX_DIM, OP_GET_MODEL,
    OP_NULL, OP_PREDICT,
};
use core::sync::atomic::{AtomicI32, AtomicU32, AtomicUsize, Ordering};
use kernel::alloc::flags::GFP_KERNEL_ACCOUNT;
use kernel::bindings;
use kernel::ffi::{c_long, c_ulong};
use kernel::prelude::*;
use kernel::sync::Arc;

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

/// The largest request the protocol allows: both parts at their largest
/// ([`MAX_BATCH`] samples of [`MAX_DIM`] values each way).
pub(crate) const PROTOCOL_MAX_REQUEST_BYTES: usize =
    RequestHeader::SIZE + ResponseHeader::SIZE + 2 * 4 * MAX_BATCH as usize * MAX_DIM as usize;

/// The most bytes (readable and writable parts together) one request may
/// take: the module parameter `max_request_kib`, or with 0 (the default)
/// [`PROTOCOL_MAX_REQUEST_BYTES`]. Larger requests fail with `E2BIG`.
pub(crate) fn max_request_bytes() -> usize {
    let kib = sys::max_request_kib() as usize;
    if kib == 0 {
        PROTOCOL_MAX_REQUEST_BYTES
    } else {
        kib.saturating_mul(1024)
    }
}

/// A prediction request for one sample or a batch.
#[pin_data]
pub(crate) struct Request {
    /// Completed once the device has handed the request back (or will
    /// never do so because it went away).
    #[pin]
    done: Completion,
    /// The id in the request header, echoed by the device.
    id: u64,
    /// The header and inputs (device-readable), room for the answer
    /// (device-writable).
    bufs: DeviceBufs,
    /// Bytes the device wrote into the writable part (the used length).
    used_len: AtomicU32,
    /// 0, or a negative errno if the request was failed without an answer.
    error: AtomicI32,
    /// [`WAITING`], [`ORPHANED`] or [`DONE`].
    state: AtomicU32,
    /// The orphan slot of the uid it is charged to, once orphaned.
    orphan_slot: AtomicUsize,
}

/// [`Request::state`]: the waiter waits for the answer (or has not given up
/// yet).
const WAITING: u32 = 0;
/// The waiter gave up while the device held the request: an orphan.
const ORPHANED: u32 = 1;
/// The device handed the request back (or it was failed).
const DONE: u32 = 2;

impl HasBufs for Request {
    fn bufs(&self) -> &DeviceBufs {
        &self.bufs
    }
}

impl Request {
    /// Creates a request with the given id and `num_samples` rows of
    /// inputs whose answer has room for `num_samples` rows of `out_dim`
    /// outputs (0 for [`Op::Null`]), for a queue of `limits`.
    ///
    /// Fails with `EINVAL` if `inputs` is not `num_samples` whole rows,
    /// `E2BIG` if the request is larger than [`max_request_bytes`] or needs
    /// more descriptors than the queue's ring has, `ENOMEM` if a chunk
    /// cannot be allocated. The buffers are charged to the caller's memory
    /// cgroup (the request may outlive the call: an orphan).
    pub(crate) fn new(
        op: Op,
        id: u64,
        inputs: &[i32],
        num_samples: usize,
        out_dim: usize,
        limits: &QueueLimits,
    ) -> Result<Arc<Self>> {
        if num_samples == 0 || inputs.len() % num_samples != 0 {
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
        let readable_len = inputs
            .len()
            .checked_mul(4)
            .and_then(|n| n.checked_add(RequestHeader::SIZE))
            .ok_or(E2BIG)?;
        let writable_len = num_samples
            .checked_mul(out_dim)
            .and_then(|n| n.checked_mul(4))
            .and_then(|n| n.checked_add(ResponseHeader::SIZE))
            .ok_or(E2BIG)?;
        if readable_len
            .checked_add(writable_len)
            .map_or(true, |n| n > max_request_bytes())
        {
            return Err(E2BIG);
        }
        let mut bufs = DeviceBufs::new(readable_len, writable_len, limits, GFP_KERNEL_ACCOUNT)?;
        bufs.write_readable(0, &header.to_bytes())?;
        if cfg!(target_endian = "little") {
            bufs.write_readable(RequestHeader::SIZE, values_as_bytes(inputs))?;
        } else {
            for (i, v) in inputs.iter().enumerate() {
                bufs.write_readable(RequestHeader::SIZE + 4 * i, &v.to_le_bytes())?;
            }
        }
        Self::with_bufs(id, bufs)
    }

    /// Creates an `OP_GET_MODEL` request for the chunk `model` names, for a
    /// queue of `limits`; the answer has room for the [`ModelChunk`] header
    /// and `model.length` bytes.
    pub(crate) fn new_get_model(
        id: u64,
        model: &ModelRequest,
        limits: &QueueLimits,
    ) -> Result<Arc<Self>> {
        let header = RequestHeader {
            opcode: OP_GET_MODEL,
            flags: 0,
            id,
            num_samples: 0,
            in_dim: 0,
        };
        let readable_len = RequestHeader::SIZE + ModelRequest::SIZE;
        let writable_len = ResponseHeader::SIZE + ModelChunk::SIZE + model.length as usize;
        let mut bufs = DeviceBufs::new(readable_len, writable_len, limits, GFP_KERNEL_ACCOUNT)?;
        bufs.write_readable(0, &header.to_bytes())?;
        bufs.write_readable(RequestHeader::SIZE, &model.to_bytes())?;
        Self::with_bufs(id, bufs)
    }

    /// The request of id `id` with the filled buffers `bufs`.
    fn with_bufs(id: u64, bufs: DeviceBufs) -> Result<Arc<Self>> {
        Arc::pin_init(
            pin_init!(Self {
                done <- Completion::new(),
                id,
                bufs,
                used_len: AtomicU32::new(0),
                error: AtomicI32::new(0),
                state: AtomicU32::new(WAITING),
                orphan_slot: AtomicUsize::new(0),
            }),
            GFP_KERNEL_ACCOUNT,
        )
    }

    /// Makes the request an orphan charged to the uid slot `slot` (whose
    /// count, and the queue's, the caller incremented): its waiter gives
    /// up. If the device has handed it back already, it is not one: false
    /// is returned and the caller takes the counts back.
    pub(crate) fn orphan(&self, slot: usize) -> bool {
        // Stored first: `complete` reads it once it sees `ORPHANED`.
        self.orphan_slot.store(slot, Ordering::Relaxed);
        self.state
            .compare_exchange(WAITING, ORPHANED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Completes the request handed back by the device (`error` 0,
    /// `used_len` from the used ring) or failed (`error` a negative errno).
    /// May run in interrupt context. Returns the uid slot of an orphan,
    /// whose counts (and its queue's) the caller releases.
    pub(crate) fn complete(&self, used_len: u32, error: i32) -> Option<usize> {
        self.used_len.store(used_len, Ordering::Release);
        self.error.store(error, Ordering::Release);
        let was = self.state.swap(DONE, Ordering::AcqRel);
        self.done.complete();
        (was == ORPHANED).then(|| self.orphan_slot.load(Ordering::Relaxed))
    }

    /// Waits until the request completes, until `deadline` at most; fatal
    /// signals interrupt the wait. On error, the caller must drop its
    /// reference without touching the buffers.
    pub(crate) fn wait(&self, deadline: &Deadline) -> Result<Completed<'_>> {
        match self.done.wait_killable(deadline.left()) {
            Wait::Done => {}
            Wait::TimedOut => return Err(etimedout()),
            Wait::Killed => return Err(EINTR),
        }
        let error = self.error.load(Ordering::Acquire);
        if error != 0 {
            return Err(Error::from_errno(error));
        }
        Ok(Completed { req: self })
    }
}

/// A request the device has answered: its response may be read.
pub(crate) struct Completed<'a> {
    req: &'a Request,
}

impl Completed<'_> {
    /// How many bytes of the response the device wrote (the used length,
    /// within the writable part).
    pub(crate) fn response_len(&self) -> usize {
        let used = self.req.used_len.load(Ordering::Acquire) as usize;
        used.min(self.req.bufs.writable_len())
    }

    /// Copies the response bytes `offset..offset + dst.len()` into `dst`;
    /// `EIO` if the device wrote fewer bytes than that.
    pub(crate) fn read_response(&self, offset: usize, dst: &mut [u8]) -> Result {
        let end = offset.checked_add(dst.len()).ok_or(EIO)?;
        if end > self.response_len() {
            return Err(EIO);
        }
        self.req.bufs.read_writable(offset, dst).map_err(|_| EIO)
    }
}
