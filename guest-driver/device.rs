// SPDX-License-Identifier: GPL-2.0

//! The virtio-nn device: the request queues and predictions (probe and
//! remove are in `device/probe.rs`, suspend and resume in `device/pm.rs`).
//!
//! Queues: the device has `num_req_queues` request queues (config space)
//! and, after them, the event queue. The driver uses all request queues: a
//! request goes to queue `cpu % n` of the submitting CPU, so CPUs do not
//! share a queue lock unless there are fewer queues than CPUs.
//!
//! Locking:
//! * [`ReqQueue::vq`] (a spinlock taken with interrupts disabled, one per
//!   request queue) protects that virtqueue; it is taken by submitters and by
//!   the queue's interrupt callback. No queue there means the device is
//!   going away or frozen: nothing is submitted.
//! * [`NnDevice::config`] (a mutex) protects the cached config space and
//!   serialises config reads, which sleep (each is a round trip to the host).
//!   No `vdev` there means the device is going away. Predictions read a
//!   lock-free copy ([`ConfigSnapshot`], a sequence lock) unless the config
//!   is stale; with the RCU device lookup of [`crate::Globals`] and the
//!   per-CPU queues, the hot path takes no lock shared by all CPUs.

mod pm;
pub(crate) mod probe;

use crate::bind::dma::QueueLimits;
use crate::bind::kvec::values_as_bytes_mut;
use crate::bind::rcu::ReadGuard;
use crate::bind::sync::{SeqWait, Wait};
use crate::bind::virtio::{VirtioDevice, Virtqueue};
use crate::config_snap::ConfigSnapshot;
use crate::events::EventQueue;
use crate::irq_lock::{new_irq_spinlock, IrqSpinLock};
use crate::orphans::Orphans;
use crate::protocol::{self, cfg, DeviceConfig, ResponseHeader};
use crate::request::{etimedout, Completed, Deadline, Op, Request};
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use kernel::alloc::flags::{__GFP_NOWARN, GFP_KERNEL_ACCOUNT};
use kernel::prelude::*;
use kernel::sync::{new_mutex, Arc, Mutex};

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

/// State protected by [`NnDevice::config`].
struct ConfigState {
    /// The virtio device; `None` once it is being removed.
    vdev: Option<VirtioDevice>,
    /// The config space as last read.
    cfg: DeviceConfig,
    /// The last config read failed.
    read_failed: bool,
    /// Until when reads that no event asked for wait (see
    /// [`UNASKED_READ_INTERVAL_MS`]).
    next_unasked_read: Option<Deadline>,
}

/// One request queue.
#[pin_data]
pub(crate) struct ReqQueue {
    /// The virtqueue; `None` once the device is being removed, or while it
    /// is frozen (see [`pm`]).
    #[pin]
    vq: IrqSpinLock<Option<Virtqueue<Request>>>,
    /// Notified when the device hands buffers back (room on the queue) and
    /// when it goes away: a submitter that found the queue full reads its
    /// counter under the lock and waits, without the lock, until it
    /// changes.
    #[pin]
    space: SeqWait,
    /// Requests put on this queue.
    submitted: AtomicU64,
    /// Orphans on this queue: requests whose waiter gave up, not yet
    /// handed back (see [`crate::orphans`]).
    orphans: AtomicU32,
}

impl ReqQueue {
    fn new() -> impl PinInit<Self> {
        pin_init!(Self {
            submitted: AtomicU64::new(0),
            orphans: AtomicU32::new(0),
            vq <- new_irq_spinlock!(None, "virtio_nn_vq"),
            space <- SeqWait::new(),
        })
    }

    /// What a request for this queue must fit: the ring size and the
    /// largest segment the platform maps. `ENODEV` while the queue is not
    /// set up.
    fn limits(&self) -> Result<QueueLimits> {
        self.vq.lock().as_ref().map(|vq| vq.limits()).ok_or(ENODEV)
    }

    /// Wakes the submitters waiting for room (or for the device to go).
    fn notify_space(&self) {
        self.space.notify();
    }

    /// Completes `req`, handed back by the device or failed, and releases
    /// the counts of an orphan.
    fn complete(&self, orphans: &Orphans, req: &Request, used_len: u32, error: i32) {
        if let Some(slot) = req.complete(used_len, error) {
            orphans.release(slot);
            self.orphans.fetch_sub(1, Ordering::Relaxed);
        }
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
    /// Suspend and resume.
    #[pin]
    pm: pm::PmState,
}

/// A summary of the model for `model_info`.
pub(crate) struct ModelInfo {
    /// The cached config space.
    pub(crate) cfg: DeviceConfig,
}

impl NnDevice {
    fn new(
        vdev: VirtioDevice,
        cfg: DeviceConfig,
        queues: KVec<Pin<KBox<ReqQueue>>>,
    ) -> impl PinInit<Self> {
        pin_init!(Self {
            index: vdev.index(),
            queues,
            config <- new_mutex!(
                ConfigState {
                    vdev: Some(vdev),
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
            pm <- pm::PmState::new(),
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
        let Some(vdev) = state.vdev else {
            return Err(ENODEV);
        };
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
        let result = read_config(vdev);
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
    ///
    /// A request larger than the module's cap, or that cannot be split
    /// into as few descriptors as the ring holds, fails with `E2BIG` (see
    /// [`Request::new`]).
    ///
    /// A request that finds the device frozen for system sleep, or that the
    /// device still held when it was frozen, is sent again once the device
    /// is restored, within the deadline (see [`pm`]).
    pub(crate) fn predict(
        &self,
        op: Op,
        inputs: &[i32],
        num_samples: usize,
        expect: Option<(usize, usize)>,
        deadline: &Deadline,
    ) -> Result<(KVVec<i32>, u32)> {
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
            let q = self.my_queue().ok_or(ENODEV)?;
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            let sent = match q.limits() {
                Ok(limits) => {
                    let req = Request::new(op, id, inputs, num_samples, out_dim, &limits)?;
                    self.submit(q, &req, deadline).map(|()| req)
                }
                Err(_) => Err(self.stopped_error()),
            };
            let req = match sent {
                Ok(req) => req,
                // Frozen: send it once the device is back.
                Err(e) if pm::is_suspended(&e) => {
                    self.wait_thawed(deadline)?;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let done = match req.wait(deadline) {
                Ok(done) => done,
                // The device was frozen (reset) before answering: send it
                // again once the device is back.
                Err(e) if pm::is_suspended(&e) => {
                    self.wait_thawed(deadline)?;
                    continue;
                }
                Err(e) => return Err(self.abandon(q, &req, uid, deadline, e)),
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
        let q = self.my_queue().ok_or(ENODEV)?;
        // Frozen or going away: the fetch is tried again later.
        let limits = q.limits().map_err(|_| EAGAIN)?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let req = Request::new_get_model(id, model, &limits)?;
        self.submit(q, &req, deadline)
            .map_err(|e| if pm::is_suspended(&e) { EAGAIN } else { e })?;
        let done = match req.wait(deadline) {
            Ok(done) => done,
            Err(e) if pm::is_suspended(&e) => return Err(EAGAIN),
            Err(e) => return Err(self.abandon(q, &req, uid, deadline, e)),
        };
        self.unresponsive.store(false, Ordering::Relaxed);
        let mut head = [0u8; ResponseHeader::SIZE];
        done.read_response(0, &mut head)?;
        let header = ResponseHeader::from_bytes(&head);
        if header.id != id {
            return Err(EIO);
        }
        if header.status != protocol::STATUS_OK {
            return Ok((header.status, header.generation, Default::default()));
        }
        let mut chunk = [0u8; protocol::ModelChunk::SIZE];
        done.read_response(ResponseHeader::SIZE, &mut chunk)?;
        let chunk = protocol::ModelChunk::from_bytes(&chunk);
        if chunk.offset != model.offset || chunk.length > model.length {
            return Err(EIO);
        }
        let start = dest.len();
        dest.extend_with(chunk.length as usize, 0, GFP_KERNEL)?;
        let bytes = dest.get_mut(start..).ok_or(EIO)?;
        done.read_response(ResponseHeader::SIZE + protocol::ModelChunk::SIZE, bytes)?;
        Ok((header.status, header.generation, chunk))
    }

    /// The waiter of `req` (submitted to `q` by `uid`) gives up with `e`:
    /// the request becomes an orphan unless the device handed it back
    /// meanwhile; a timeout at least as long as the module's marks the
    /// device unresponsive. Returns `e`.
    fn abandon(
        &self,
        q: &ReqQueue,
        req: &Request,
        uid: u32,
        deadline: &Deadline,
        e: Error,
    ) -> Error {
        // Counted first: the device may hand it back at any moment, and then
        // releases the counts.
        let slot = self.orphans.charge(uid);
        q.orphans.fetch_add(1, Ordering::Relaxed);
        let orphaned = req.orphan(slot);
        if !orphaned {
            // Handed back meanwhile: not an orphan.
            self.orphans.release(slot);
            q.orphans.fetch_sub(1, Ordering::Relaxed);
        }
        if orphaned && deadline.marks_unresponsive() && e.to_errno() == etimedout().to_errno() {
            self.unresponsive.store(true, Ordering::Relaxed);
        }
        e
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
        let Some(vdev) = state.vdev else {
            return Err(ENODEV);
        };
        if recheck && !self.unresponsive() && vdev.cread32(cfg::GENERATION) != state.cfg.generation
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

    /// Puts `req` on request queue `q` and notifies the device. Fails with
    /// `ETIMEDOUT` at once if `deadline` has passed, with `E2BIG` if the
    /// request has more descriptors than the ring; waits (until `deadline`;
    /// only a fatal signal interrupts it) while the ring has too few free
    /// descriptors for it (one with indirect descriptors, else one per
    /// chunk): each buffer the device hands back wakes the wait. Fails with
    /// `ENODEV` once the device is going away, and with [`pm`]'s internal
    /// error while it is frozen.
    ///
    /// The notification (a VM exit) is prepared under the queue lock and
    /// sent after it is released, with interrupts enabled; an RCU read-side
    /// section keeps the virtqueue alive until then (`teardown` waits for a
    /// grace period before it deletes the queues).
    fn submit(&self, q: &ReqQueue, req: &Arc<Request>, deadline: &Deadline) -> Result {
        loop {
            // The deadline first: a call whose time is up queues nothing.
            let left = deadline.left();
            if left == 0 {
                return Err(etimedout());
            }
            let rcu = ReadGuard::new();
            let mut state = q.vq.lock();
            let Some(vq) = state.as_mut() else {
                return Err(self.stopped_error());
            };
            let err = match vq.add(req.clone()) {
                Ok(()) => {
                    let notify = vq.kick_prepare(&rcu);
                    q.submitted.fetch_add(1, Ordering::Relaxed);
                    drop(state);
                    if let Some(n) = notify {
                        n.notify();
                    }
                    return Ok(());
                }
                Err((e, _)) => e,
            };
            if err != ENOSPC {
                return Err(err);
            }
            // Read under the lock: any buffer handed back after this point
            // changes it.
            let seen = q.space.seq();
            drop(state);
            drop(rcu);
            match q.space.wait_killable(seen, left) {
                Wait::Done => {}
                Wait::TimedOut => return Err(etimedout()),
                Wait::Killed => return Err(EINTR),
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
    ) -> Result<Option<(KVVec<i32>, u32)>> {
        let resp_len = done.response_len();
        let mut header = [0u8; ResponseHeader::SIZE];
        if done.read_response(0, &mut header).is_err() {
            warn_ratelimited!("virtio{}: short answer ({} bytes)\n", self.index, resp_len);
            return Err(EIO);
        }
        let header = ResponseHeader::from_bytes(&header);
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
        // Up to 64 MiB: kvmalloc (vmalloc when no contiguous memory is
        // free); a failure is ENOMEM, without a warning.
        let mut outputs = KVVec::from_elem(0i32, total, GFP_KERNEL_ACCOUNT | __GFP_NOWARN)?;
        if done
            .read_response(ResponseHeader::SIZE, values_as_bytes_mut(&mut outputs))
            .is_err()
        {
            warn_ratelimited!("virtio{}: short answer ({} bytes)\n", self.index, resp_len);
            return Err(EIO);
        }
        // The wire is little-endian (a no-op on little-endian machines).
        for o in outputs.iter_mut() {
            *o = i32::from_le(*o);
        }
        Ok(Some((outputs, header.generation)))
    }

    /// Completes every request the device has handed back on request queue
    /// `index`. Runs in interrupt context.
    pub(crate) fn vq_done(&self, index: usize) {
        let Some(q) = self.queues.get(index) else {
            return;
        };
        let mut any = false;
        {
            let mut state = q.vq.lock();
            // No queue: being removed or frozen; `stop_queues` completes
            // everything left.
            let Some(vq) = state.as_mut() else {
                return;
            };
            while let Some((req, len)) = vq.get_buf() {
                q.complete(&self.orphans, &req, len, 0);
                any = true;
            }
        }
        if any {
            // An answer, late ones included: the device is alive again.
            self.unresponsive.store(false, Ordering::Relaxed);
            q.notify_space();
        }
    }

    /// The event queue's callback (interrupt context): marks the config
    /// stale when an event announced a change.
    pub(crate) fn event_done(&self) {
        if self.events.done() {
            self.config_stale.store(true, Ordering::Relaxed);
            // A new generation: fetch its copy for the CPU fallback.
            crate::bind::sys::schedule_model_fetch();
        }
    }

    /// The config-change callback (may run in interrupt context): marks
    /// the cached config stale; the next prediction reads it again.
    pub(crate) fn config_changed(&self) {
        self.config_stale.store(true, Ordering::Relaxed);
    }

    /// Stops the device and fails every request still on its queues with
    /// `ENODEV`. `vdev` is the device this was probed with, still bound.
    fn teardown(&self, vdev: VirtioDevice) {
        self.gone.store(true, Ordering::Release);
        self.config.lock().vdev = None;
        // Callers waiting for a frozen device to come back see it gone.
        self.pm.wake();
        let failed = self.stop_queues(vdev, ENODEV);
        if failed > 0 {
            pr_info!(
                "virtio{}: failed {} requests in flight\n",
                self.index,
                failed
            );
        }
    }

    /// Stops using the queues: nothing is submitted any more (submitters
    /// waiting for room are woken), the device is reset, every request
    /// still on a request queue is completed with `error`, the event
    /// buffers are freed and the virtqueues deleted. Returns how many
    /// requests it completed. The caller marks the device gone or frozen
    /// first, so that submitters tell why the queues are missing. `vdev` is
    /// the device this was probed with, still bound; process context.
    fn stop_queues(&self, vdev: VirtioDevice, error: Error) -> u32 {
        let mut vqs: [Option<Virtqueue<Request>>; MAX_REQ_QUEUES] = core::array::from_fn(|_| None);
        for (q, slot) in self.queues.iter().zip(vqs.iter_mut()) {
            *slot = q.vq.lock().take();
            // Submitters waiting for room see the queue gone.
            q.notify_space();
        }
        let event_vq = self.events.stop();
        let any_vq = vqs.iter().any(Option::is_some) || event_vq.is_some();
        let reset = vdev.reset();
        let mut failed = 0u32;
        for (q, vq) in self.queues.iter().zip(vqs.iter_mut()) {
            let Some(vq) = vq else {
                continue;
            };
            while let Some(req) = vq.detach_unused(&reset) {
                q.complete(&self.orphans, &req, 0, error.to_errno());
                failed += 1;
            }
        }
        if let Some(mut event_vq) = event_vq {
            EventQueue::drain(&mut event_vq, &reset);
        }
        // The queues are gone already if a restore could not set them up
        // again.
        if any_vq {
            vdev.del_vqs(reset);
        }
        failed
    }

    /// Starts using the queues `vqs` (request queues in order) and
    /// `event_vq`: makes the device ready, then lets submitters use them.
    fn start_queues(
        &self,
        vdev: VirtioDevice,
        vqs: KVec<Virtqueue<Request>>,
        event_vq: Option<Virtqueue<crate::events::EventBuf>>,
    ) {
        vdev.ready();
        // Submitters may notify the device from here on: after DRIVER_OK.
        for (q, vq) in self.queues.iter().zip(vqs) {
            *q.vq.lock() = Some(vq);
        }
        if let Some(event_vq) = event_vq {
            self.events.start(event_vq);
        }
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

fn read_config(vdev: VirtioDevice) -> Result<DeviceConfig> {
    let index = vdev.index();
    let cread = |offset| vdev.cread32(offset);
    let mut c = DeviceConfig {
        magic: cread(cfg::MAGIC),
        version: cread(cfg::VERSION),
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
        c.generation = cread(cfg::GENERATION);
        c.status = cread(cfg::STATUS);
        c.num_layers = cread(cfg::NUM_LAYERS);
        c.max_batch = cread(cfg::MAX_BATCH);
        c.num_req_queues = cread(cfg::NUM_REQ_QUEUES);
        c.dims = Default::default();
        if (1..=protocol::MAX_LAYERS as u32).contains(&c.num_layers) {
            for i in 0..=c.num_layers as usize {
                c.dims[i] = cread(cfg::DIMS + 4 * i);
            }
        }
        c.model_size = cread(cfg::MODEL_SIZE);
        c.model_crc32c = cread(cfg::MODEL_CRC32C);
        if cread(cfg::GENERATION) != c.generation {
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
