// SPDX-License-Identifier: GPL-2.0

//! The virtio-nn device: probe, remove, the request queue and predictions.
//!
//! Locking:
//! * [`NnDevice::vq`] (a spinlock taken with interrupts disabled) protects
//!   the virtqueue; it is taken by submitters and by the queue's interrupt
//!   callback. A null queue pointer means the device is going away: nothing
//!   is submitted any more.
//! * [`NnDevice::config`] (a mutex) protects the cached config space and
//!   serialises config reads, which sleep (each is a round trip to the host).
//!   A null `vdev` there means the device is going away.

use crate::events::EventQueue;
use crate::glue;
use crate::irq_lock::{new_irq_spinlock, IrqSpinLock};
use crate::protocol::{self, cfg, DeviceConfig, ResponseHeader};
use crate::request::{Completed, Request};
use core::ffi::c_void;
use core::ptr;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use kernel::bindings;
use kernel::ffi::c_int;
use kernel::prelude::*;
use kernel::sync::{new_condvar, new_mutex, Arc, ArcBorrow, CondVar, CondVarTimeoutResult, Mutex};
use kernel::{c_str, error::from_result};

/// How often a config read is retried when the generation changed under it.
const CONFIG_READ_RETRIES: u32 = 5;

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
}

// SAFETY: `vdev` is only used with the lock held, from any thread.
unsafe impl Send for ConfigState {}

/// A bound virtio-nn device.
#[pin_data]
pub(crate) struct NnDevice {
    /// The virtio device index (`virtioN`), for messages.
    index: u32,
    /// The request queue.
    #[pin]
    vq: IrqSpinLock<VqState>,
    /// Notified when the device hands buffers back (room on the queue) and
    /// when it goes away.
    #[pin]
    vq_space: CondVar,
    /// The cached config space.
    #[pin]
    config: Mutex<ConfigState>,
    /// Set when the cached config may be out of date (config change
    /// interrupt, or an answer from another model generation).
    config_stale: AtomicBool,
    /// Id of the next request.
    next_id: AtomicU64,
    /// The event queue, if the device has one.
    #[pin]
    events: EventQueue,
}

/// A summary of the model for `model_info`.
pub(crate) struct ModelInfo {
    /// The cached config space.
    pub(crate) cfg: DeviceConfig,
}

impl NnDevice {
    fn new(vdev: *mut bindings::virtio_device, cfg: DeviceConfig) -> impl PinInit<Self> {
        // SAFETY: `vdev` is the valid device being probed.
        let index = unsafe { (*vdev).index } as u32;
        pin_init!(Self {
            index,
            vq <- new_irq_spinlock!(VqState { vq: ptr::null_mut() }, "virtio_nn_vq"),
            vq_space <- new_condvar!("virtio_nn_vq_space"),
            config <- new_mutex!(ConfigState { vdev, cfg }, "virtio_nn_config"),
            config_stale: AtomicBool::new(false),
            next_id: AtomicU64::new(1),
            events <- EventQueue::new(),
        })
    }

    /// The model description: the cached config, read again first if an
    /// event said it changed.
    pub(crate) fn model_info(&self) -> ModelInfo {
        let mut state = self.config.lock();
        if !state.vdev.is_null() && self.config_stale.swap(false, Ordering::Relaxed) {
            match read_config(state.vdev, self.index) {
                Ok(cfg) => state.cfg = cfg,
                Err(_) => self.config_stale.store(true, Ordering::Relaxed),
            }
        }
        ModelInfo { cfg: state.cfg }
    }

    /// Runs the model on one sample; `inputs` are Q16.16 values and must
    /// be as many as the model's input width. Returns the Q16.16 outputs.
    ///
    /// If the model was swapped for one with another output width while the
    /// request was built (the answer comes from a newer generation and does
    /// not fit), the config is read again and the request sent once more.
    pub(crate) fn predict(&self, inputs: &[i32]) -> Result<KVec<i32>> {
        let mut retried = false;
        loop {
            let mut cfg = self.current_config(false)?;
            if inputs.len() != cfg.input_dim() as usize {
                // Wrong width, or a model swap the driver has not heard of:
                // one round trip (the generation) tells.
                cfg = self.current_config(true)?;
                if inputs.len() != cfg.input_dim() as usize {
                    return Err(EINVAL);
                }
            }
            let out_dim = cfg.output_dim() as usize;
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            let req = Request::new(id, inputs, out_dim)?;
            self.submit(&req)?;
            let done = req.wait()?;
            match self.check_answer(&done, &cfg, id, out_dim)? {
                Some(outputs) => return Ok(outputs),
                None if !retried => retried = true,
                None => return Err(EIO),
            }
        }
    }

    /// The config space, read again if it may have changed (or, with
    /// `recheck`, if its generation field changed). Fails with `ENODEV` if
    /// the device is gone or has no model.
    fn current_config(&self, recheck: bool) -> Result<DeviceConfig> {
        let mut state = self.config.lock();
        if state.vdev.is_null() {
            return Err(ENODEV);
        }
        if recheck && cread(state.vdev, cfg::GENERATION) != state.cfg.generation {
            self.config_stale.store(true, Ordering::Relaxed);
        }
        if self.config_stale.swap(false, Ordering::Relaxed)
            || state.cfg.status != protocol::DEVICE_STATUS_READY
        {
            match read_config(state.vdev, self.index) {
                Ok(cfg) => state.cfg = cfg,
                Err(e) => {
                    self.config_stale.store(true, Ordering::Relaxed);
                    return Err(e);
                }
            }
        }
        match state.cfg.status {
            protocol::DEVICE_STATUS_READY => Ok(state.cfg),
            protocol::DEVICE_STATUS_NO_MODEL => Err(ENODEV),
            _ => Err(EIO),
        }
    }

    /// Puts `req` on the request queue and notifies the device. Waits (as
    /// long as the module's timeout, interruptibly) while the queue is full.
    fn submit(&self, req: &Arc<Request>) -> Result {
        let mut state = self.vq.lock();
        loop {
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
                // SAFETY: As above.
                unsafe { bindings::virtqueue_kick(state.vq) };
                return Ok(());
            }
            // SAFETY: The token was not added, so its reference is still ours.
            unsafe { Request::drop_token(token) };
            if ret != ENOSPC.to_errno() {
                return Err(Error::from_errno(ret));
            }
            // SAFETY: No preconditions.
            let timeout = unsafe { glue::virtio_nn_timeout_jiffies() } as kernel::time::Jiffies;
            match self
                .vq_space
                .wait_interruptible_timeout(&mut state, timeout)
            {
                CondVarTimeoutResult::Woken { .. } => continue,
                CondVarTimeoutResult::Timeout => {
                    return Err(Error::from_errno(-(bindings::ETIMEDOUT as i32)))
                }
                CondVarTimeoutResult::Signal { .. } => return Err(EINTR),
            }
        }
    }

    /// Checks the device's answer to request `id` and returns its outputs,
    /// or `None` if a model of another generation answered and the answer
    /// does not fit what `cfg` describes (the config is then stale).
    fn check_answer(
        &self,
        done: &Completed<'_>,
        cfg: &DeviceConfig,
        id: u64,
        out_dim: usize,
    ) -> Result<Option<KVec<i32>>> {
        let resp = done.response();
        let Some(header) = resp.first_chunk::<{ ResponseHeader::SIZE }>() else {
            pr_warn!(
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
            pr_warn!(
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
        if model_changed && header.num_samples == 1 && header.out_dim as usize != out_dim {
            return Ok(None);
        }
        if header.num_samples != 1 || header.out_dim as usize != out_dim {
            pr_warn!(
                "virtio{}: answer has {} samples of {} values, expected 1 of {}\n",
                self.index,
                header.num_samples,
                header.out_dim,
                out_dim
            );
            return Err(EIO);
        }
        let payload = &resp[ResponseHeader::SIZE..];
        if payload.len() < out_dim * 4 {
            pr_warn!(
                "virtio{}: short answer ({} bytes)\n",
                self.index,
                resp.len()
            );
            return Err(EIO);
        }
        let mut outputs = KVec::from_elem(0i32, out_dim, GFP_KERNEL)?;
        // Like `protocol::decode_values`, whose `chunks_exact` brings a
        // division-by-zero panic path that the objtool of Linux 6.12 does not
        // know as `noreturn` (it warns).
        for (i, o) in outputs.iter_mut().enumerate() {
            let b = &payload[4 * i..4 * i + 4];
            *o = i32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        }
        Ok(Some(outputs))
    }

    /// Completes every request the device has handed back. Runs in
    /// interrupt context.
    fn vq_done(&self, vq: *mut bindings::virtqueue) {
        let mut any = false;
        {
            let state = self.vq.lock();
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
            self.vq_space.notify_all();
        }
    }

    /// Stops the device and fails every request still on its queue with
    /// `ENODEV`.
    ///
    /// # Safety
    ///
    /// `vdev` must be the device this was probed with, and still bound.
    unsafe fn teardown(&self, vdev: *mut bindings::virtio_device) {
        self.config.lock().vdev = ptr::null_mut();
        let vq = core::mem::replace(&mut self.vq.lock().vq, ptr::null_mut());
        let event_vq = self.events.stop();
        // Submitters waiting for room see the device gone.
        self.vq_space.notify_all();
        // SAFETY: `vdev` is valid (caller). After the reset the device uses
        // no buffer and no callback runs any more.
        unsafe { bindings::virtio_reset_device(vdev) };
        if !vq.is_null() {
            let mut failed = 0u32;
            {
                let _guard = self.vq.lock();
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
        pr_err!(
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
        if cread(vdev, cfg::GENERATION) != c.generation {
            continue;
        }
        if let Err(e) = c.validate() {
            pr_err!("virtio{}: bad config space: {:?}\n", index, e);
            return Err(EIO);
        }
        return Ok(c);
    }
    pr_err!("virtio{}: config space keeps changing\n", index);
    Err(EAGAIN)
}

fn probe(vdev: *mut bindings::virtio_device) -> Result {
    // SAFETY: `vdev` is the device being probed.
    let index = unsafe { (*vdev).index } as u32;
    // SAFETY: As above.
    if !unsafe { glue::virtio_nn_has_feature(vdev, bindings::VIRTIO_F_VERSION_1) } {
        pr_err!("virtio{}: legacy device (no VIRTIO_F_VERSION_1)\n", index);
        return Err(ENODEV);
    }
    let globals = crate::globals()?;
    if globals.device.lock().is_some() {
        pr_err!("virtio{}: only one virtio-nn device is supported\n", index);
        return Err(EBUSY);
    }
    let cfg = read_config(vdev, index)?;
    if cfg.num_req_queues == 0 {
        pr_err!("virtio{}: device has no request queue\n", index);
        return Err(ENODEV);
    }
    let dev = Arc::pin_init(NnDevice::new(vdev, cfg), GFP_KERNEL)?;
    // The queue callback finds the device through `priv`; that reference is
    // dropped in `remove`.
    // SAFETY: `vdev` is valid and its queues do not exist yet.
    unsafe { (*vdev).priv_ = Arc::into_raw(dev.clone()).cast_mut().cast() };
    let (vq, event_vq) = match find_vqs(vdev, cfg.num_req_queues == 1) {
        Ok(vqs) => vqs,
        Err(e) => {
            // SAFETY: `priv` holds the reference taken above; no callback
            // can run without queues.
            unsafe { drop_priv(vdev) };
            pr_err!("virtio{}: cannot set up the queues: {:?}\n", index, e);
            return Err(e);
        }
    };
    dev.vq.lock().vq = vq;
    // SAFETY: `vdev` is valid and its queues are set up.
    unsafe { glue::virtio_nn_device_ready(vdev) };
    if let Some(event_vq) = event_vq {
        // SAFETY: The event queue was just set up and the device is ready.
        unsafe { dev.events.start(event_vq) };
    }

    {
        let mut current = globals.device.lock();
        if current.is_none() {
            *current = Some(dev.clone());
            drop(current);
            pr_info!(
                "virtio{}: {}, generation {}\n",
                index,
                crate::sysfs::ModelName(&cfg),
                cfg.generation
            );
            return Ok(());
        }
    }
    // Another device won a race with this probe.
    // SAFETY: `vdev` is this device, still bound.
    unsafe { dev.teardown(vdev) };
    // SAFETY: As above, and no callback runs after `teardown`.
    unsafe { drop_priv(vdev) };
    Err(EBUSY)
}

/// Sets up request queue 0 and, if `with_events`, the event queue after it
/// (queue 1); falls back to the request queue alone if the device has no
/// event queue.
fn find_vqs(
    vdev: *mut bindings::virtio_device,
    with_events: bool,
) -> Result<(*mut bindings::virtqueue, Option<*mut bindings::virtqueue>)> {
    let infos = [
        bindings::virtqueue_info {
            name: c_str!("requests").as_char_ptr(),
            callback: Some(virtio_nn_vq_done),
            ctx: false,
        },
        bindings::virtqueue_info {
            name: c_str!("events").as_char_ptr(),
            callback: Some(virtio_nn_event_done),
            ctx: false,
        },
    ];
    let mut vqs = [ptr::null_mut(); 2];
    if with_events {
        let mut infos = infos;
        // SAFETY: `vdev` is valid, without queues; both arrays have 2 entries.
        let ret =
            unsafe { glue::virtio_nn_find_vqs(vdev, 2, vqs.as_mut_ptr(), infos.as_mut_ptr()) };
        if ret == 0 {
            return Ok((vqs[0], Some(vqs[1])));
        }
    }
    let mut infos = infos;
    // SAFETY: `vdev` is valid, without queues; the arrays have 1 entry or
    // more.
    let ret = unsafe { glue::virtio_nn_find_vqs(vdev, 1, vqs.as_mut_ptr(), infos.as_mut_ptr()) };
    kernel::error::to_result(ret)?;
    Ok((vqs[0], None))
}

/// Drops the device reference held by `vdev->priv` and clears it.
///
/// # Safety
///
/// `vdev->priv` must hold a reference from `Arc::into_raw` and no queue
/// callback may run any more.
unsafe fn drop_priv(vdev: *mut bindings::virtio_device) {
    // SAFETY: Guaranteed by the caller.
    unsafe {
        let p = core::mem::replace(&mut (*vdev).priv_, ptr::null_mut());
        drop(Arc::from_raw(p.cast::<NnDevice>()));
    }
}

/// `virtio_driver.probe`.
#[no_mangle]
pub(crate) extern "C" fn virtio_nn_probe(vdev: *mut bindings::virtio_device) -> c_int {
    from_result(|| probe(vdev).map(|()| 0))
}

/// `virtio_driver.remove`: unpublishes the device, resets it and fails its
/// requests in flight with `ENODEV`.
#[no_mangle]
pub(crate) extern "C" fn virtio_nn_remove(vdev: *mut bindings::virtio_device) {
    // Take over the reference of `priv`; `priv` stays set for the queue
    // callback until `teardown` has stopped it.
    // SAFETY: A bound device's `priv` holds the reference taken in `probe`.
    let dev = unsafe { Arc::<NnDevice>::from_raw((*vdev).priv_.cast()) };
    if let Ok(globals) = crate::globals() {
        let mut current = globals.device.lock();
        if current.as_ref().is_some_and(|d| Arc::ptr_eq(d, &dev)) {
            *current = None;
        }
    }
    // SAFETY: `vdev` is the device `dev` was probed with, still bound.
    unsafe { dev.teardown(vdev) };
    // SAFETY: No callback runs after `teardown`; the reference was taken
    // over above.
    unsafe { (*vdev).priv_ = ptr::null_mut() };
    pr_info!("virtio{}: removed\n", dev.index);
}

/// `virtio_driver.config_changed`: may run in interrupt context, so it only
/// marks the cached config stale; the next prediction reads it again.
#[no_mangle]
pub(crate) extern "C" fn virtio_nn_config_changed(vdev: *mut bindings::virtio_device) {
    // SAFETY: The device is bound, so `priv` holds a reference.
    let p = unsafe { (*vdev).priv_ } as *const NnDevice;
    if !p.is_null() {
        // SAFETY: `p` is the live device of the `priv` reference.
        unsafe { &*p }.config_stale.store(true, Ordering::Relaxed);
    }
}

/// The virtqueue callback (interrupt context).
#[no_mangle]
pub(crate) extern "C" fn virtio_nn_vq_done(vq: *mut bindings::virtqueue) {
    // SAFETY: The callback only runs for live queues of a bound device.
    let p = unsafe { (*(*vq).vdev).priv_ } as *const c_void;
    if p.is_null() {
        return;
    }
    // SAFETY: `priv` holds a reference until `remove` (or a failed probe)
    // drops it, and that happens only after the queue is gone.
    let dev = unsafe { ArcBorrow::<NnDevice>::from_raw(p.cast()) };
    dev.vq_done(vq);
}

/// The event queue callback (interrupt context).
#[no_mangle]
pub(crate) extern "C" fn virtio_nn_event_done(vq: *mut bindings::virtqueue) {
    // SAFETY: The callback only runs for live queues of a bound device.
    let p = unsafe { (*(*vq).vdev).priv_ } as *const c_void;
    if p.is_null() {
        return;
    }
    // SAFETY: As in `virtio_nn_vq_done`.
    let dev = unsafe { ArcBorrow::<NnDevice>::from_raw(p.cast()) };
    if dev.events.done(vq) {
        dev.config_stale.store(true, Ordering::Relaxed);
    }
}
