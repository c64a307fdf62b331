// SPDX-License-Identifier: GPL-2.0

//! One prediction request: its buffers, its completion and its lifetime.
//!
//! A [`Request`] is a reference-counted object that holds the
//! device-readable part of the descriptor chain (a [`RequestHeader`] and the
//! inputs) and the device-writable part (room for a [`ResponseHeader`] and
//! the outputs), each split into chunks (see [`Chunking`]) and described by
//! a scatterlist of one entry per chunk. The waiter holds one reference;
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
//!
//! Size limits: a request whose two parts together exceed
//! [`max_request_bytes`] (the module parameter `max_request_kib`, by default
//! the largest request the protocol allows) fails with `E2BIG`, as does one
//! that cannot be split into as few descriptors as the queue's ring holds.
//! The chunks are allocated with `__GFP_NOWARN`: a failed allocation is
//! `ENOMEM`, never a warning in the kernel log.

use crate::bind::sys;
use crate::glue;
use crate::protocol::{RequestHeader, ResponseHeader, MAX_BATCH, MAX_DIM, OP_NULL, OP_PREDICT};
use core::ffi::c_void;
use core::ptr;
use core::sync::atomic::{AtomicI32, AtomicPtr, AtomicU32, Ordering};
use kernel::alloc::flags::{__GFP_NOWARN, GFP_KERNEL_ACCOUNT};
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

/// Largest chunk of a request's buffers: 4 MiB, and never more than the
/// largest kmalloc (`KMALLOC_MAX_SIZE`) or a segment the platform can map
/// (`virtio_max_dma_size()`, see [`QueueLimits`]).
const MAX_CHUNK: usize = 4 << 20;

/// The largest request the protocol allows: both parts at their largest
/// ([`MAX_BATCH`] samples of [`MAX_DIM`] values each way).
pub(crate) const PROTOCOL_MAX_REQUEST_BYTES: usize =
    RequestHeader::SIZE + ResponseHeader::SIZE + 2 * 4 * MAX_BATCH as usize * MAX_DIM as usize;

/// The most bytes (readable and writable parts together) one request may
/// take: the module parameter `max_request_kib`, or with 0 (the default)
/// [`PROTOCOL_MAX_REQUEST_BYTES`]. Larger requests fail with `E2BIG`.
pub(crate) fn max_request_bytes() -> usize {
    // SAFETY: No preconditions.
    let kib = unsafe { glue::virtio_nn_max_request_kib() } as usize;
    if kib == 0 {
        PROTOCOL_MAX_REQUEST_BYTES
    } else {
        kib.saturating_mul(1024)
    }
}

/// What the request queue a request goes to can carry.
#[derive(Clone, Copy)]
pub(crate) struct QueueLimits {
    /// Descriptors one chain may have: the ring size (with or without
    /// indirect descriptors, a chain may not be longer than the ring).
    pub(crate) descs: usize,
    /// Largest segment the platform can map (`virtio_max_dma_size()`:
    /// bounce buffers of SEV/TDX guests or an IOMMU bound it).
    pub(crate) max_seg: usize,
}

/// How a request's parts are split: every chunk `1 << shift` bytes long
/// (the last one of each part shorter), the size chosen by
/// [`Chunking::new`].
#[derive(Clone, Copy)]
struct Chunking {
    shift: u32,
}

impl Chunking {
    /// The smallest power-of-two chunk size, from a page up, that splits
    /// parts of `readable` and `writable` bytes into at most
    /// `limits.descs` chunks, each within [`MAX_CHUNK`], the largest kmalloc
    /// and `limits.max_seg`; `E2BIG` if none does.
    fn new(readable: usize, writable: usize, limits: &QueueLimits) -> Result<Self> {
        // SAFETY: No preconditions.
        let kmalloc_max = unsafe { glue::virtio_nn_kmalloc_max_size() };
        let max = MAX_CHUNK.min(kmalloc_max).min(limits.max_seg);
        if max == 0 {
            return Err(E2BIG);
        }
        // The largest power of two within `max`, and a page or less.
        let max_shift = usize::BITS - 1 - max.leading_zeros();
        let mut c = Self {
            shift: kernel::page::PAGE_SHIFT.min(max_shift as usize) as u32,
        };
        loop {
            let descs = c
                .count(readable)
                .zip(c.count(writable))
                .and_then(|(r, w)| r.checked_add(w));
            if descs.is_some_and(|d| d <= limits.descs) {
                return Ok(c);
            }
            if c.shift >= max_shift {
                return Err(E2BIG);
            }
            c.shift += 1;
        }
    }

    /// Chunk size in bytes.
    fn size(self) -> usize {
        1 << self.shift
    }

    /// Chunks of a part of `len` bytes (`None` on overflow).
    fn count(self, len: usize) -> Option<usize> {
        Some(len.checked_add(self.size() - 1)? >> self.shift)
    }

    /// Length of chunk `i` of a part of `len` bytes.
    fn len_of(self, len: usize, i: usize) -> usize {
        (len - (i << self.shift)).min(self.size())
    }
}

/// One chunk of a request's buffers, kmalloc'd (so in the linear map, as a
/// scatterlist entry needs). The device writes the writable part's chunks
/// while the driver holds shared references to the request, so each byte is
/// an [`Opaque`] (interior mutability).
type Chunk = KVec<Opaque<u8>>;

/// Allocates a zeroed chunk of `len` bytes, charged to the caller's memory
/// cgroup (the request may outlive the call: an orphan), without a warning
/// if the allocation fails.
fn alloc_chunk(len: usize) -> Result<Chunk> {
    let buf = KVec::from_elem(0u8, len, GFP_KERNEL_ACCOUNT | __GFP_NOWARN)?;
    let (ptr, len, cap) = buf.into_raw_parts();
    // SAFETY: `ptr`, `len` and `cap` come from `into_raw_parts` of a `KVec`
    // of the same allocator, and `Opaque<u8>` has the layout of `u8`
    // (`repr(transparent)` over `UnsafeCell<MaybeUninit<u8>>`); the `len`
    // bytes are initialised.
    Ok(unsafe { KVec::<Opaque<u8>>::from_raw_parts(ptr.cast(), len, cap) })
}

/// The bytes of `values`, in native byte order: the wire's (little-endian)
/// on little-endian machines, where they are copied as they are.
pub(crate) fn values_as_bytes(values: &[i32]) -> &[u8] {
    // SAFETY: `i32` has no padding, so its bytes are initialised `u8`s;
    // the slice covers the same memory with the same lifetime.
    unsafe { core::slice::from_raw_parts(values.as_ptr().cast::<u8>(), 4 * values.len()) }
}

/// The bytes of `values`, writable: the buffer to copy wire values into,
/// before converting each with `i32::from_le`.
pub(crate) fn values_as_bytes_mut(values: &mut [i32]) -> &mut [u8] {
    // SAFETY: Every bit pattern is a valid `i32` and `i32` has no padding;
    // the slice covers the same memory, borrowed mutably for as long.
    unsafe { core::slice::from_raw_parts_mut(values.as_mut_ptr().cast::<u8>(), 4 * values.len()) }
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
    /// The chunks of the device-readable part (`readable_chunks` of them),
    /// then those of the device-writable part, split as `chunking` says.
    /// The driver reads the writable ones only after `done`.
    chunks: KVec<Chunk>,
    /// One scatterlist entry per chunk, in the same order: the readable
    /// part's entries (a list ended after its last entry), then the
    /// writable part's (another). Only the virtqueue reads them, while the
    /// request is added under the queue lock.
    sg: KVec<Opaque<bindings::scatterlist>>,
    /// Chunks of the readable part.
    readable_chunks: usize,
    /// Length of the device-readable part.
    readable_len: usize,
    /// Length of the device-writable part.
    writable_len: usize,
    /// How the parts are split.
    chunking: Chunking,
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
    /// outputs (0 for [`Op::Null`]), for a queue of `limits`.
    ///
    /// Fails with `EINVAL` if `inputs` is not `num_samples` whole rows,
    /// `E2BIG` if the request is larger than [`max_request_bytes`] or needs
    /// more descriptors than the queue's ring has, `ENOMEM` if a chunk
    /// cannot be allocated.
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
        let chunking = Chunking::new(readable_len, writable_len, limits)?;
        // Both counts are within `limits.descs` (`Chunking::new`).
        let readable_chunks = chunking.count(readable_len).ok_or(E2BIG)?;
        let writable_chunks = chunking.count(writable_len).ok_or(E2BIG)?;
        let total = readable_chunks + writable_chunks;
        let mut chunks = KVec::with_capacity(total, GFP_KERNEL_ACCOUNT)?;
        for i in 0..readable_chunks {
            chunks.push(
                alloc_chunk(chunking.len_of(readable_len, i))?,
                GFP_KERNEL_ACCOUNT,
            )?;
        }
        for i in 0..writable_chunks {
            chunks.push(
                alloc_chunk(chunking.len_of(writable_len, i))?,
                GFP_KERNEL_ACCOUNT,
            )?;
        }
        let readable = &chunks[..readable_chunks];
        copy_in(readable, chunking, 0, &header.to_bytes());
        if cfg!(target_endian = "little") {
            copy_in(
                readable,
                chunking,
                RequestHeader::SIZE,
                values_as_bytes(inputs),
            );
        } else {
            for (i, v) in inputs.iter().enumerate() {
                copy_in(
                    readable,
                    chunking,
                    RequestHeader::SIZE + 4 * i,
                    &v.to_le_bytes(),
                );
            }
        }

        let mut sg = KVec::with_capacity(total, GFP_KERNEL_ACCOUNT)?;
        for _ in 0..total {
            sg.push(
                Opaque::<bindings::scatterlist>::uninit(),
                GFP_KERNEL_ACCOUNT,
            )?;
        }
        let sg_base = Opaque::raw_get(sg.as_ptr());
        for (start, n) in [(0, readable_chunks), (readable_chunks, writable_chunks)] {
            // SAFETY: Entries `start..start + n` are within `sg`, which is
            // not shared yet; `n` is at least 1 (each part holds a header).
            unsafe { bindings::sg_init_table(sg_base.add(start), n as u32) };
        }
        for (i, chunk) in chunks.iter().enumerate() {
            // SAFETY: Entry `i` is within `sg` and initialised above; the
            // chunk is kmalloc'd (in the linear map), at most `MAX_CHUNK`
            // bytes long, and lives as long as the request, so as long as
            // any queue holds the request.
            unsafe {
                glue::virtio_nn_sg_set_buf(
                    sg_base.add(i),
                    chunk.as_ptr().cast(),
                    chunk.len() as u32,
                )
            };
        }
        Arc::pin_init(
            pin_init!(Self {
                // SAFETY: `slot` is valid for writes and pinned: the
                // completion stays where it is initialised.
                done <- Opaque::ffi_init(|slot| unsafe { glue::virtio_nn_init_completion(slot) }),
                id,
                chunks,
                sg,
                readable_chunks,
                readable_len,
                writable_len,
                chunking,
                used_len: AtomicU32::new(0),
                error: AtomicI32::new(0),
                state: AtomicU32::new(WAITING),
                queue_orphans: AtomicPtr::new(core::ptr::null_mut()),
                uid_orphans: AtomicPtr::new(core::ptr::null_mut()),
            }),
            GFP_KERNEL_ACCOUNT,
        )
    }

    /// Descriptors the request takes on a ring without indirect
    /// descriptors: one per chunk (at most the `limits.descs` it was built
    /// for).
    pub(crate) fn descriptors(&self) -> usize {
        self.chunks.len()
    }

    /// The scatterlists of the device-readable part and of the
    /// device-writable part, for `virtqueue_add_sgs` (one out list, one
    /// in list). They stay valid as long as the request.
    pub(crate) fn scatterlists(&self) -> [*mut bindings::scatterlist; 2] {
        let base = Opaque::raw_get(self.sg.as_ptr());
        // SAFETY: `readable_chunks < sg.len()`: the writable part has at
        // least one chunk.
        [base, unsafe { base.add(self.readable_chunks) }]
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

// SAFETY: The device writes the writable part's chunks, whose bytes are
// `Opaque`, and the driver reads them only through `Completed`, which exists
// only once the device is done with them; the scatterlist entries are written
// only in `new`, before the request is shared, and then only read (by the
// virtqueue, under the queue lock); everything else is immutable, atomic or
// the completion, which has its own locking.
unsafe impl Send for Request {}
// SAFETY: See `Send`.
unsafe impl Sync for Request {}

/// Copies `src` into the part made of `chunks` (split as `chunking` says),
/// from byte `offset` on; the part must be long enough.
fn copy_in(chunks: &[Chunk], chunking: Chunking, mut offset: usize, mut src: &[u8]) {
    while !src.is_empty() {
        let chunk = &chunks[offset >> chunking.shift];
        let at = offset & (chunking.size() - 1);
        let n = src.len().min(chunk.len() - at);
        let dst = Opaque::raw_get(chunk.as_ptr());
        // SAFETY: `at + n <= chunk.len()`; the chunk's bytes are `Opaque`
        // and nothing else accesses them now (a request is filled before
        // anything else sees it).
        unsafe { ptr::copy_nonoverlapping(src.as_ptr(), dst.add(at), n) };
        offset += n;
        src = &src[n..];
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
        used.min(self.req.writable_len)
    }

    /// Copies the response bytes `offset..offset + dst.len()` into `dst`;
    /// `EIO` if the device wrote fewer bytes than that.
    pub(crate) fn read_response(&self, offset: usize, dst: &mut [u8]) -> Result {
        let end = offset.checked_add(dst.len()).ok_or(EIO)?;
        if end > self.response_len() {
            return Err(EIO);
        }
        let req = self.req;
        let chunks = &req.chunks[req.readable_chunks..];
        let mut offset = offset;
        let mut done = 0;
        while done < dst.len() {
            let chunk = &chunks[offset >> req.chunking.shift];
            let at = offset & (req.chunking.size() - 1);
            let n = (dst.len() - done).min(chunk.len() - at);
            let src = Opaque::raw_get(chunk.as_ptr());
            // SAFETY: `at + n <= chunk.len()`; the bytes are initialised
            // (zeroed at allocation, then written by the device) and, the
            // request being complete, nothing writes them any more while
            // `self` borrows the request.
            unsafe {
                ptr::copy_nonoverlapping(src.add(at).cast_const(), dst[done..].as_mut_ptr(), n)
            };
            offset += n;
            done += n;
        }
        Ok(())
    }
}
