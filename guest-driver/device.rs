// SPDX-License-Identifier: GPL-2.0

//! The virtio-nn device: the request queues and predictions (probe and
//! remove are in `device/probe.rs`).
//!
//! Queues: the device has `num_req_queues` request queues (config space)
//! and, after them, the event queue. The driver uses all request queues: a
//! request goes to queue `cpu % n` of the submitting CPU, so CPUs do not
//! share a queue lock unless there are fewer queues than CPUs.
//!
//! Locking:
//! * [`ReqQueue::vq`] (a spinlock taken with interrupts disabled, one per
//!   request queue) protects that virtqueue; it is taken by submitters and by
//!   the queue's interrupt callback. A null queue pointer means the device is
//!   going away: nothing is submitted any more.
//! * [`NnDevice::config`] (a mutex) protects the cached config space and
//!   serialises config reads, which sleep (each is a round trip to the host).
//!   A null `vdev` there means the device is going away. Predictions read a
//!   lock-free copy ([`ConfigSnapshot`], a sequence lock) unless the config
//!   is stale; with the RCU device lookup of [`crate::Globals`] and the
//!   per-CPU queues, the hot path takes no lock shared by all CPUs.

mod probe;

use crate::config_snap::ConfigSnapshot;
use crate::events::EventQueue;
use crate::glue;
use crate::irq_lock::{new_irq_spinlock, IrqSpinLock};
use crate::orphans::Orphans;
use crate::protocol::{self, cfg, DeviceConfig, ResponseHeader};
use crate::request::{etimedout, Completed, Deadline, Op, Request};
use core::ptr;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, Ordering};
use kernel::bindings;
use kernel::prelude::*;
use kernel::sync::{new_mutex, Arc, Mutex};
use kernel::types::Opaque;

/// Whether a message that a request can cause may be printed now: one rate
/// limit (the kernel's default) for all of them, so that no caller can flood
/// the log.
pub(crate) fn ratelimit() -> bool {
    crate::bind::sys::ratelimit()
}

/// `pr_warn!`, rate-limited by [`ratelimit`].
macro_rules! warn_ratelimited {
    ($($arg:tt)*) => {
        if $crate::device::ratelimit() {
            pr_warn!($($arg)*);
        }
    };
}

/// `pr_err!`, rate-limited by [`ratelimit`].
macro_rules! err_ratelimited {
    ($($arg:tt)*) => {
        if $crate::device::ratelimit() {
            pr_err!($($arg)*);
        }
    };
}

/// How often a config read is retried when the generation changed under it.
const CONFIG_READ_RETRIES: u32 = 5;

/// Least time between config reads that no event asked for (polls of a
/// device without an event queue whose status is not ready, retries after a
/// failed read), in ms: each read is ~14 round trips to the host.
const UNASKED_READ_INTERVAL_MS: u32 = 1000;

/// How often a request is sent again because a newer model generation of
/// another output width answered it (each time the model was swapped again
/// between the config read and the device taking the request).
const SWAP_RETRIES: u32 = 16;

/// Most request queues the driver uses.
const MAX_REQ_QUEUES: usize = 64;

/// Most request queues the driver sets up to reach the event queue after
/// them.
const MAX_FIND_QUEUES: usize = 256;

/// State protected by [`NnDevice::vq`].
struct VqState {
    /// The request queue; null once the device is being removed.
    vq: *mut bindings::virtqueue,
}

// SAFETY: The queue pointer is only used with the lock held, from any thread.
unsafe impl Send for VqState {}

/// State protected by [`NnDevice::config`].
struct ConfigState {
    /// The virtio device; null once it is being removed.
    vdev: *mut bindings::virtio_device,
    /// The config space as last read.
    cfg: DeviceConfig,
    /// The last config read failed.
    read_failed: bool,
    /// Until when reads that no event asked for wait (see
    /// [`UNASKED_READ_INTERVAL_MS`]).
    next_unasked_read: Option<Deadline>,
}

// SAFETY: `vdev` is only used with the lock held, from any thread.
unsafe impl Send for ConfigState {}

/// One request queue.
#[pin_data]
pub(crate) struct ReqQueue {
    /// The virtqueue.
    #[pin]
    vq: IrqSpinLock<VqState>,
    /// Woken when the device hands buffers back (room on the queue) and
    /// when it goes away, after `space_seq` changed.
    #[pin]
    vq_space: Opaque<bindings::wait_queue_head>,
    /// Changed (under or after the queue lock) before each wake-up of
    /// `vq_space`: a submitter that found the queue full waits, without
    /// the lock, until it differs from the value it saw under the lock.
    space_seq: AtomicU32,
    /// The virtqueue, kept for `teardown` after `vq` is cleared.
    raw: AtomicPtr<bindings::virtqueue>,
    /// Requests put on this queue.
    submitted: AtomicU64,
    /// Orphans on this queue: requests whose waiter gave up, not yet
    /// handed back (see [`crate::orphans`]).
    orphans: AtomicU32,
}

// SAFETY: `vq_space` is a kernel wait queue, which its own spinlock makes
// safe to use from any thread (as `CondVar`'s); the other fields are a lock
// and atomics.
unsafe impl Send for ReqQueue {}
// SAFETY: See `Send`.
unsafe impl Sync for ReqQueue {}

impl ReqQueue {
    fn new() -> impl PinInit<Self> {
        pin_init!(Self {
            raw: AtomicPtr::new(ptr::null_mut()),
            submitted: AtomicU64::new(0),
            orphans: AtomicU32::new(0),
            vq <- new_irq_spinlock!(VqState { vq: ptr::null_mut() }, "virtio_nn_vq"),
            // SAFETY: `slot` is valid for writes and pinned: the wait queue
            // stays where it is initialised.
            vq_space <- Opaque::ffi_init(|slot| unsafe { glue::virtio_nn_init_waitqueue_head(slot) }),
            space_seq: AtomicU32::new(0),
        })
    }

    /// Wakes the submitters waiting for room (or for the device to go).
    fn notify_space(&self) {
        self.space_seq.fetch_add(1, Ordering::Release);
        // SAFETY: `vq_space` was initialised in `new`.
        unsafe { glue::virtio_nn_wake_up_all(self.vq_space.get()) };
    }
}

/// A bound virtio-nn device.
#[pin_data]
pub(crate) struct NnDevice {
    /// The virtio device index (`virtioN`), for messages.
    index: u32,
    /// The request queues (virtqueues `0..queues.len()`).
    queues: KVec<Pin<KBox<ReqQueue>>>,
    /// The cached config space.
    #[pin]
    config: Mutex<ConfigState>,
    /// Set when the cached config may be out of date (config change
    /// interrupt, or an answer from another model generation).
    config_stale: AtomicBool,
    /// A lock-free copy of `config.cfg`, for the prediction fast path.
    #[pin]
    snapshot: ConfigSnapshot,
    /// Set when the device is going away (as `config.vdev` null).
    gone: AtomicBool,
    /// Set when a request went unanswered until its deadline; cleared by
    /// the next answer. `model_info` and `health` show it.
    unresponsive: AtomicBool,
    /// Id of the next request.
    next_id: AtomicU64,
    /// The event queue, if the device has one.
    #[pin]
    events: EventQueue,
    /// Orphans per uid.
    #[pin]
    orphans: Orphans,
}

/// A summary of the model for `model_info`.
pub(crate) struct ModelInfo {
    /// The cached config space.
    pub(crate) cfg: DeviceConfig,
}

impl NnDevice {
    fn new(
        vdev: *mut bindings::virtio_device,
        cfg: DeviceConfig,
        queues: KVec<Pin<KBox<ReqQueue>>>,
    ) -> impl PinInit<Self> {
        // SAFETY: `vdev` is the valid device being probed.
        let index = unsafe { (*vdev).index } as u32;
        pin_init!(Self {
            index,
            queues,
            config <- new_mutex!(
                ConfigState {
                    vdev,
                    cfg,
                    read_failed: false,
                    next_unasked_read: None,
                },
                "virtio_nn_config"
            ),
            config_stale: AtomicBool::new(false),
            snapshot <- ConfigSnapshot::new(&cfg),
            gone: AtomicBool::new(false),
            unresponsive: AtomicBool::new(false),
            next_id: AtomicU64::new(1),
            events <- EventQueue::new(),
            orphans <- Orphans::new(),
        })
    }

    /// The model description: the cached config, read again first if it
    /// may have changed (see [`Self::refresh`]).
    pub(crate) fn model_info(&self) -> ModelInfo {
        let mut state = self.config.lock();
        // A failed read keeps the config as it was; `model_info` shows that.
        let _ = self.refresh(&mut state);
        ModelInfo { cfg: state.cfg }
    }

    /// Reads the config space again into `state` when it may have changed:
    /// at once when an event (or an answer from another model) marked it
    /// stale; without an event queue, while the status is not ready, at most
    /// every [`UNASKED_READ_INTERVAL_MS`], as are retries after a failed
    /// read. Never while the device is unresponsive: QEMU 11.1 aborts on a
    /// config read once its vhost-user backend has died, and any user can
    /// make a request, or read `model_info`, at any time.
    fn refresh(&self, state: &mut ConfigState) -> Result {
        if state.vdev.is_null() {
            return Err(ENODEV);
        }
        if self.unresponsive() {
            return Ok(());
        }
        let stale = self.config_stale.load(Ordering::Relaxed);
        let poll = state.cfg.status != protocol::DEVICE_STATUS_READY && !self.events.present();
        if !stale && !poll {
            return Ok(());
        }
        let unasked = !stale || state.read_failed;
        if unasked && state.next_unasked_read.is_some_and(|d| d.left() > 0) {
            return Ok(());
        }
        self.config_stale.store(false, Ordering::Relaxed);
        let result = read_config(state.vdev, self.index);
        state.next_unasked_read = Some(Deadline::after_ms(UNASKED_READ_INTERVAL_MS));
        state.read_failed = result.is_err();
        match result {
            Ok(cfg) => {
                state.cfg = cfg;
                self.snapshot.store(&cfg);
                Ok(())
            }
            Err(e) => {
                self.config_stale.store(true, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    /// Whether the last request went unanswered until its deadline (no
    /// answer since).
    pub(crate) fn unresponsive(&self) -> bool {
        self.unresponsive.load(Ordering::Relaxed)
    }

    /// Number of request queues in use.
    pub(crate) fn num_queues(&self) -> usize {
        self.queues.len()
    }

    /// Requests submitted on each request queue, written as `a,b,...`.
    pub(crate) fn write_queue_counts(&self, w: &mut impl core::fmt::Write) -> core::fmt::Result {
        for (i, q) in self.queues.iter().enumerate() {
            if i > 0 {
                w.write_char(',')?;
            }
            write!(w, "{}", q.submitted.load(Ordering::Relaxed))?;
        }
        Ok(())
    }

    /// Orphans in flight on all request queues.
    pub(crate) fn orphans(&self) -> u32 {
        self.queues
            .iter()
            .map(|q| q.orphans.load(Ordering::Relaxed))
            .sum()
    }

    /// Orphans on each request queue, written as `a,b,...`.
    pub(crate) fn write_queue_orphans(&self, w: &mut impl core::fmt::Write) -> core::fmt::Result {
        for (i, q) in self.queues.iter().enumerate() {
            if i > 0 {
                w.write_char(',')?;
            }
            write!(w, "{}", q.orphans.load(Ordering::Relaxed))?;
        }
        Ok(())
    }

    /// Runs the model on `num_samples` samples (one request, the device's
    /// batch format); `inputs` holds `num_samples` rows of Q16.16 values,
    /// each as wide as the model's input. Returns the Q16.16 outputs, row
    /// after row, and the model generation that answered. `expect` (input and output width), if given, must match
    /// the current model (else `EINVAL`). Waits until `deadline` at most.
    ///
    /// If the model was swapped for one with another output width while the
    /// request was built (the answer comes from a newer generation and does
    /// not fit), the config is read again and the request sent again (up to
    /// [`SWAP_RETRIES`] times, within the deadline: swaps in quick
    /// succession can overtake a request more than once).
    ///
    /// With [`Op::Null`] the device does the same round trip without
    /// inference: the outputs are empty.
    pub(crate) fn predict(
        &self,
        op: Op,
        inputs: &[i32],
        num_samples: usize,
        expect: Option<(usize, usize)>,
        deadline: &Deadline,
    ) -> Result<(KVec<i32>, u32)> {
        if num_samples == 0 || inputs.len() % num_samples != 0 {
            return Err(EINVAL);
        }
        let in_dim = inputs.len() / num_samples;
        let mut retries = 0;
        loop {
            let fits = |c: &DeviceConfig| {
                in_dim == c.input_dim() as usize
                    && expect.map_or(true, |(i, o)| i == in_dim && o == c.output_dim() as usize)
            };
            let mut cfg = self.current_config(false)?;
            if !fits(&cfg) {
                // Wrong width, or a model swap the driver has not heard of.
                // With an event queue the device announces every swap, so
                // the cached config is current and the width is wrong: no
                // config read, which matters because QEMU (11.1) aborts on
                // a config read once its vhost-user backend has died, and
                // any user may write a wrong width to `/proc`. Without one,
                // one round trip (the generation) tells.
                if self.events.present() {
                    return Err(EINVAL);
                }
                cfg = self.current_config(true)?;
                if !fits(&cfg) {
                    return Err(EINVAL);
                }
            }
            let out_dim = match op {
                Op::Predict => cfg.output_dim() as usize,
                Op::Null => 0,
            };
            if num_samples > cfg.max_batch.max(1) as usize {
                return Err(EINVAL);
            }
            let uid = crate::bind::sys::current_euid();
            self.orphans.check(uid)?;
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            let req = Request::new(op, id, inputs, num_samples, out_dim)?;
            self.submit(&req, deadline)?;
            let done = match req.wait(deadline) {
                Ok(done) => done,
                Err(e) => {
                    // SAFETY: `req` was submitted; the counters belong to
                    // this device, whose queues hand back or fail every
                    // request before it is freed.
                    let orphaned = unsafe { req.orphan(self.orphans.charge(uid)) };
                    if orphaned
                        && deadline.marks_unresponsive()
                        && e.to_errno() == etimedout().to_errno()
                    {
                        self.unresponsive.store(true, Ordering::Relaxed);
                    }
                    return Err(e);
                }
            };
            self.unresponsive.store(false, Ordering::Relaxed);
            match self.check_answer(&done, &cfg, id, num_samples, out_dim)? {
                Some(outputs) => return Ok(outputs),
                // Swapped again meanwhile: the config is stale, read it
                // again and resend, while time is left.
                None if retries < SWAP_RETRIES && deadline.left() > 0 => {
                    retries += 1;
                    crate::stats::STATS.resend();
                }
                None if retries < SWAP_RETRIES => return Err(etimedout()),
                None => return Err(EIO),
            }
        }
    }

    /// One `GET_MODEL` round trip for the chunk `model` names, waiting until
    /// `deadline` at most. On success (status `STATUS_OK`) the chunk's bytes
    /// are appended to `dest`. Returns the response status, the generation
    /// that answered and the chunk header (default unless the status is
    /// `STATUS_OK`). `EIO` for an answer that is not one to this request.
    pub(crate) fn get_model_chunk(
        &self,
        model: &protocol::ModelRequest,
        dest: &mut KVVec<u8>,
        deadline: &Deadline,
    ) -> Result<(u32, u32, protocol::ModelChunk)> {
        if self.gone.load(Ordering::Acquire) {
            return Err(ENODEV);
        }
        let uid = crate::bind::sys::current_euid();
        self.orphans.check(uid)?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let req = Request::new_get_model(id, model)?;
        self.submit(&req, deadline)?;
        let done = match req.wait(deadline) {
            Ok(done) => done,
            Err(e) => {
                // SAFETY: As in `predict`: `req` was submitted and the
                // counters belong to this device.
                unsafe { req.orphan(self.orphans.charge(uid)) };
                return Err(e);
            }
        };
        self.unresponsive.store(false, Ordering::Relaxed);
        let resp = done.response();
        let header = resp
            .first_chunk::<{ ResponseHeader::SIZE }>()
            .map(ResponseHeader::from_bytes)
            .ok_or(EIO)?;
        if header.id != id {
            return Err(EIO);
        }
        if header.status != protocol::STATUS_OK {
            return Ok((header.status, header.generation, Default::default()));
        }
        let chunk_end = ResponseHeader::SIZE + protocol::ModelChunk::SIZE;
        let chunk = resp
            .get(ResponseHeader::SIZE..chunk_end)
            .and_then(|b| b.try_into().ok())
            .map(protocol::ModelChunk::from_bytes)
            .ok_or(EIO)?;
        if chunk.offset != model.offset || chunk.length > model.length {
            return Err(EIO);
        }
        let bytes = chunk_end
            .checked_add(chunk.length as usize)
            .and_then(|end| resp.get(chunk_end..end))
            .ok_or(EIO)?;
        dest.extend_from_slice(bytes, GFP_KERNEL)?;
        Ok((header.status, header.generation, chunk))
    }

    /// Marks the cached config stale: the next prediction or `model_info`
    /// reads it again (unless the device is unresponsive).
    pub(crate) fn mark_config_stale(&self) {
        self.config_stale.store(true, Ordering::Relaxed);
    }

    /// The config space, read again if it may have changed (see
    /// [`Self::refresh`]; with `recheck`, also if its generation field
    /// changed, unless the device is unresponsive). Fails with `ENODEV` if
    /// the device is gone or has no model, `EIO` if its status is an error.
    pub(crate) fn current_config(&self, recheck: bool) -> Result<DeviceConfig> {
        // Fast path, without the mutex: the config is known and usable.
        if !recheck
            && !self.gone.load(Ordering::Acquire)
            && !self.config_stale.load(Ordering::Relaxed)
        {
            let c = self.snapshot.load();
            if c.status == protocol::DEVICE_STATUS_READY {
                return Ok(c);
            }
        }
        let mut state = self.config.lock();
        if state.vdev.is_null() {
            return Err(ENODEV);
        }
        if recheck
            && !self.unresponsive()
            && cread(state.vdev, cfg::GENERATION) != state.cfg.generation
        {
            self.config_stale.store(true, Ordering::Relaxed);
        }
        self.refresh(&mut state)?;
        match state.cfg.status {
            protocol::DEVICE_STATUS_READY => Ok(state.cfg),
            protocol::DEVICE_STATUS_NO_MODEL => Err(ENODEV),
            _ => Err(EIO),
        }
    }

    /// The request queue of the calling CPU.
    fn my_queue(&self) -> Option<&ReqQueue> {
        // A stale CPU number (preemption) only picks another queue. Probe
        // makes at least one queue; `checked_rem` and `get` leave no panic
        // path.
        let cpu = crate::bind::sys::cpu() as usize;
        let i = cpu.checked_rem(self.queues.len())?;
        self.queues.get(i).map(|q| &**q)
    }

    /// Puts `req` on the calling CPU's request queue and notifies the
    /// device. Fails with `ETIMEDOUT` at once if `deadline` has passed;
    /// waits (until `deadline`; only a fatal signal interrupts it) while the
    /// queue is full.
    ///
    /// The notification (a VM exit) is prepared under the queue lock and
    /// sent after it is released, with interrupts enabled; an RCU read-side
    /// section keeps the virtqueue alive until then (`teardown` waits for a
    /// grace period before it deletes the queues).
    fn submit(&self, req: &Arc<Request>, deadline: &Deadline) -> Result {
        let q = self.my_queue().ok_or(ENODEV)?;
        loop {
            // The deadline first: a call whose time is up queues nothing.
            let left = deadline.left();
            if left == 0 {
                return Err(etimedout());
            }
            let rcu = RcuReadLock::new();
            let state = q.vq.lock();
            if state.vq.is_null() {
                return Err(ENODEV);
            }
            let (rd, rd_len) = req.readable();
            let (wr, wr_len) = req.writable();
            let mut sg_out = core::mem::MaybeUninit::<bindings::scatterlist>::zeroed();
            let mut sg_in = core::mem::MaybeUninit::<bindings::scatterlist>::zeroed();
            // SAFETY: The scatterlists are writable; the buffers are
            // kmalloc'd (in the linear map) and live at least as long as the
            // token added below.
            unsafe {
                bindings::sg_init_one(sg_out.as_mut_ptr(), rd.cast(), rd_len as u32);
                bindings::sg_init_one(sg_in.as_mut_ptr(), wr.cast(), wr_len as u32);
            }
            let mut sgs = [sg_out.as_mut_ptr(), sg_in.as_mut_ptr()];
            let token = Request::into_token(req.clone());
            // SAFETY: The queue is live while the lock is held and its
            // pointer is not null; `sgs` holds one readable then one
            // writable initialised scatterlist; interrupts are disabled, so
            // the allocation must be atomic.
            let ret = unsafe {
                bindings::virtqueue_add_sgs(
                    state.vq,
                    sgs.as_mut_ptr(),
                    1,
                    1,
                    token,
                    bindings::GFP_ATOMIC,
                )
            };
            if ret == 0 {
                let vq = state.vq;
                // SAFETY: The queue outlives the requests on it (`teardown`
                // fails those left before the device is freed).
                unsafe { req.set_queue_orphans(&q.orphans) };
                // SAFETY: As above.
                let notify = unsafe { bindings::virtqueue_kick_prepare(vq) };
                q.submitted.fetch_add(1, Ordering::Relaxed);
                drop(state);
                if notify {
                    // SAFETY: `vq` was live under the lock, and `teardown`
                    // deletes it only after an RCU grace period that follows
                    // its clearing of `state.vq`, so it is still live inside
                    // this read-side section (`rcu`, not dropped yet).
                    unsafe { bindings::virtqueue_notify(vq) };
                }
                drop(rcu);
                return Ok(());
            }
            // SAFETY: The token was not added, so its reference is still ours.
            unsafe { Request::drop_token(token) };
            if ret != ENOSPC.to_errno() {
                return Err(Error::from_errno(ret));
            }
            // Read under the lock: any buffer handed back after this point
            // changes it.
            let seen = q.space_seq.load(Ordering::Acquire);
            drop(state);
            drop(rcu);
            // SAFETY: `vq_space` was initialised in `new`; `space_seq` is a
            // live `u32`; `left` is positive.
            let ret = unsafe {
                glue::virtio_nn_wait_seq_killable(
                    q.vq_space.get(),
                    q.space_seq.as_ptr(),
                    seen,
                    left,
                )
            };
            if ret < 0 {
                return Err(EINTR);
            }
            if ret == 0 {
                return Err(etimedout());
            }
        }
    }

    /// Checks the device's answer to request `id` and returns its outputs,
    /// and the generation that answered, or `None` if a model of another
    /// generation answered and the answer
    /// does not fit what `cfg` describes (the config is then stale).
    fn check_answer(
        &self,
        done: &Completed<'_>,
        cfg: &DeviceConfig,
        id: u64,
        num_samples: usize,
        out_dim: usize,
    ) -> Result<Option<(KVec<i32>, u32)>> {
        let resp = done.response();
        let Some(header) = resp.first_chunk::<{ ResponseHeader::SIZE }>() else {
            warn_ratelimited!(
                "virtio{}: short answer ({} bytes)\n",
                self.index,
                resp.len()
            );
            return Err(EIO);
        };
        let header = ResponseHeader::from_bytes(header);
        let model_changed = header.generation != cfg.generation;
        if model_changed {
            // Another model answered: read its dims before the next request.
            self.config_stale.store(true, Ordering::Relaxed);
        }
        if header.id != id {
            warn_ratelimited!(
                "virtio{}: answer id {} for request {}\n",
                self.index,
                header.id,
                id
            );
            return Err(EIO);
        }
        match header.status {
            protocol::STATUS_OK => {}
            protocol::STATUS_NO_SPACE if model_changed => return Ok(None),
            status => {
                if matches!(
                    status,
                    protocol::STATUS_NO_MODEL
                        | protocol::STATUS_BAD_DIMS
                        | protocol::STATUS_NO_SPACE
                ) {
                    self.config_stale.store(true, Ordering::Relaxed);
                }
                return Err(status_to_error(status));
            }
        }
        let samples_ok = header.num_samples as usize == num_samples;
        if model_changed && samples_ok && header.out_dim as usize != out_dim {
            return Ok(None);
        }
        if !samples_ok || header.out_dim as usize != out_dim {
            warn_ratelimited!(
                "virtio{}: answer has {} samples of {} values, expected {} of {}\n",
                self.index,
                header.num_samples,
                header.out_dim,
                num_samples,
                out_dim
            );
            return Err(EIO);
        }
        let total = num_samples * out_dim;
        let payload = &resp[ResponseHeader::SIZE..];
        if payload.len() < total * 4 {
            warn_ratelimited!(
                "virtio{}: short answer ({} bytes)\n",
                self.index,
                resp.len()
            );
            return Err(EIO);
        }
        let mut outputs = KVec::from_elem(0i32, total, GFP_KERNEL)?;
        // Like `protocol::decode_values`, whose `chunks_exact` brings a
        // division-by-zero panic path that the objtool of Linux 6.12 does not
        // know as `noreturn` (it warns).
        for (i, o) in outputs.iter_mut().enumerate() {
            let b = &payload[4 * i..4 * i + 4];
            *o = i32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        }
        Ok(Some((outputs, header.generation)))
    }

    /// Completes every request the device has handed back on request queue
    /// `vq`. Runs in interrupt context.
    fn vq_done(&self, vq: *mut bindings::virtqueue) {
        // SAFETY: `vq` is a live queue of this device.
        let qi = unsafe { (*vq).index } as usize;
        let Some(q) = self.queues.get(qi) else {
            return;
        };
        let mut any = false;
        {
            let state = q.vq.lock();
            if state.vq.is_null() {
                // Being removed: `teardown` fails everything left.
                return;
            }
            loop {
                let mut len: u32 = 0;
                // SAFETY: `vq` is live (callbacks stop before it is
                // deleted) and the lock serialises it.
                let token = unsafe { bindings::virtqueue_get_buf(vq, &mut len) };
                if token.is_null() {
                    break;
                }
                // SAFETY: Every token on the queue comes from `into_token`,
                // and the device handed this one back.
                unsafe { Request::complete_token(token, len, 0) };
                any = true;
            }
        }
        if any {
            // An answer, late ones included: the device is alive again.
            self.unresponsive.store(false, Ordering::Relaxed);
            q.notify_space();
        }
    }

    /// Stops the device and fails every request still on its queues with
    /// `ENODEV`.
    ///
    /// # Safety
    ///
    /// `vdev` must be the device this was probed with, and still bound.
    unsafe fn teardown(&self, vdev: *mut bindings::virtio_device) {
        self.gone.store(true, Ordering::Release);
        self.config.lock().vdev = ptr::null_mut();
        for q in self.queues.iter() {
            q.vq.lock().vq = ptr::null_mut();
            // Submitters waiting for room see the device gone.
            q.notify_space();
        }
        // Submitters notify the device after the queue lock, inside an RCU
        // read-side section: wait for them before the queues go.
        // SAFETY: No preconditions; may sleep (process context: remove or
        // a failed probe).
        unsafe { bindings::synchronize_rcu() };
        let event_vq = self.events.stop();
        // SAFETY: `vdev` is valid (caller). After the reset the device uses
        // no buffer and no callback runs any more.
        unsafe { bindings::virtio_reset_device(vdev) };
        let mut failed = 0u32;
        for q in self.queues.iter() {
            let vq = q.raw.load(Ordering::Relaxed);
            if vq.is_null() {
                continue;
            }
            let _guard = q.vq.lock();
            loop {
                // SAFETY: The queue still exists and the device is reset.
                let token = unsafe { bindings::virtqueue_detach_unused_buf(vq) };
                if token.is_null() {
                    break;
                }
                // SAFETY: The token comes from `into_token` and the device
                // no longer uses it.
                unsafe { Request::complete_token(token, 0, ENODEV.to_errno()) };
                failed += 1;
            }
        }
        if failed > 0 {
            pr_info!(
                "virtio{}: failed {} requests in flight\n",
                self.index,
                failed
            );
        }
        if !event_vq.is_null() {
            // SAFETY: From `stop`; the queue exists and the device is reset.
            unsafe { self.events.drain(event_vq) };
        }
        // SAFETY: `vdev` is valid and reset; its queues are unused.
        unsafe { glue::virtio_nn_del_vqs(vdev) };
    }
}

/// The errno of a non-OK response status.
fn status_to_error(status: u32) -> Error {
    match status {
        protocol::STATUS_NO_MODEL => ENODEV,
        protocol::STATUS_BAD_DIMS | protocol::STATUS_MALFORMED | protocol::STATUS_BAD_BATCH => {
            EINVAL
        }
        _ => EIO,
    }
}

/// Reads one config-space field (one round trip to the host).
fn cread(vdev: *mut bindings::virtio_device, offset: usize) -> u32 {
    // SAFETY: The callers pass a live device; offsets are within the config
    // space.
    unsafe { glue::virtio_nn_cread32(vdev, offset as u32) }
}

/// Reads the config space field by field, consistently (generation retry
/// loop), and validates it.
fn read_config(vdev: *mut bindings::virtio_device, index: u32) -> Result<DeviceConfig> {
    let mut c = DeviceConfig {
        magic: cread(vdev, cfg::MAGIC),
        version: cread(vdev, cfg::VERSION),
        ..Default::default()
    };
    if c.magic != protocol::CONFIG_MAGIC || c.version != protocol::PROTOCOL_VERSION {
        err_ratelimited!(
            "virtio{}: not a virtio-nn v{} device (magic {:#x}, version {})\n",
            index,
            protocol::PROTOCOL_VERSION,
            c.magic,
            c.version
        );
        return Err(ENODEV);
    }
    for _ in 0..CONFIG_READ_RETRIES {
        c.generation = cread(vdev, cfg::GENERATION);
        c.status = cread(vdev, cfg::STATUS);
        c.num_layers = cread(vdev, cfg::NUM_LAYERS);
        c.max_batch = cread(vdev, cfg::MAX_BATCH);
        c.num_req_queues = cread(vdev, cfg::NUM_REQ_QUEUES);
        c.dims = Default::default();
        if (1..=protocol::MAX_LAYERS as u32).contains(&c.num_layers) {
            for i in 0..=c.num_layers as usize {
                c.dims[i] = cread(vdev, cfg::DIMS + 4 * i);
            }
        }
        c.model_size = cread(vdev, cfg::MODEL_SIZE);
        c.model_crc32c = cread(vdev, cfg::MODEL_CRC32C);
        if cread(vdev, cfg::GENERATION) != c.generation {
            continue;
        }
        if let Err(e) = c.validate() {
            err_ratelimited!("virtio{}: bad config space: {:?}\n", index, e);
            return Err(EIO);
        }
        return Ok(c);
    }
    err_ratelimited!("virtio{}: config space keeps changing\n", index);
    Err(EAGAIN)
}

/// An RCU read-side critical section, ended on drop.
struct RcuReadLock;

impl RcuReadLock {
    fn new() -> Self {
        // SAFETY: No preconditions; ended in `drop`.
        unsafe { glue::virtio_nn_rcu_read_lock() };
        Self
    }
}

impl Drop for RcuReadLock {
    fn drop(&mut self) {
        // SAFETY: Begun in `new`.
        unsafe { glue::virtio_nn_rcu_read_unlock() };
    }
}
