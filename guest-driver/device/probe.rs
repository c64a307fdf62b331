// SPDX-License-Identifier: GPL-2.0

//! Probe and remove of the virtio-nn device, and the virtio callbacks
//! (queue interrupts, config change) that find the device through
//! `vdev->priv`.

use super::{read_config, NnDevice, ReqQueue, MAX_FIND_QUEUES, MAX_REQ_QUEUES};
use crate::glue;
use core::ffi::c_void;
use core::ptr;
use core::sync::atomic::Ordering;
use kernel::bindings;
use kernel::ffi::c_int;
use kernel::prelude::*;
use kernel::sync::{Arc, ArcBorrow};
use kernel::{c_str, error::from_result};

fn probe(vdev: *mut bindings::virtio_device) -> Result {
    // SAFETY: `vdev` is the device being probed.
    let index = unsafe { (*vdev).index } as u32;
    // SAFETY: As above.
    if !unsafe { glue::virtio_nn_has_feature(vdev, bindings::VIRTIO_F_VERSION_1) } {
        pr_err!("virtio{}: legacy device (no VIRTIO_F_VERSION_1)\n", index);
        return Err(ENODEV);
    }
    let globals = crate::globals()?;
    if globals.has_device() {
        pr_err!("virtio{}: only one virtio-nn device is supported\n", index);
        return Err(EBUSY);
    }
    let cfg = read_config(vdev, index)?;
    if cfg.num_req_queues == 0 {
        pr_err!("virtio{}: device has no request queue\n", index);
        return Err(ENODEV);
    }
    let dev_queues = cfg.num_req_queues as usize;
    let nq = dev_queues.min(MAX_REQ_QUEUES);
    let mut queues = KVec::with_capacity(nq, GFP_KERNEL)?;
    for _ in 0..nq {
        queues.push(KBox::pin_init(ReqQueue::new(), GFP_KERNEL)?, GFP_KERNEL)?;
    }
    let dev = Arc::pin_init(NnDevice::new(vdev, cfg, queues), GFP_KERNEL)?;
    // The queue callback finds the device through `priv`; that reference is
    // dropped in `remove`.
    // SAFETY: `vdev` is valid and its queues do not exist yet.
    unsafe { (*vdev).priv_ = Arc::into_raw(dev.clone()).cast_mut().cast() };
    let (vqs, event_vq) = match find_vqs(vdev, dev_queues, nq) {
        Ok(vqs) => vqs,
        Err(e) => {
            // SAFETY: `priv` holds the reference taken above; no callback
            // can run without queues.
            unsafe { drop_priv(vdev) };
            pr_err!("virtio{}: cannot set up the queues: {:?}\n", index, e);
            return Err(e);
        }
    };
    for (q, &vq) in dev.queues.iter().zip(vqs.iter()) {
        q.raw.store(vq, Ordering::Relaxed);
        q.vq.lock().vq = vq;
    }
    // SAFETY: `vdev` is valid and its queues are set up.
    unsafe { glue::virtio_nn_device_ready(vdev) };
    if let Some(event_vq) = event_vq {
        // SAFETY: The event queue was just set up and the device is ready.
        unsafe { dev.events.start(event_vq) };
    }

    // Answers cached from an earlier device (every daemon starts at
    // generation 1) must not answer for this one.
    globals.cache.new_epoch();
    if globals.publish(&dev) {
        pr_info!(
            "virtio{}: {}, generation {}, {} request queues{}\n",
            index,
            crate::sysfs::ModelName(&cfg),
            cfg.generation,
            dev.num_queues(),
            if event_vq.is_some() { ", events" } else { "" }
        );
        // The CPU fallback's copy of this device's model.
        crate::bind::sys::schedule_model_fetch();
        return Ok(());
    }
    // Another device won a race with this probe.
    // SAFETY: `vdev` is this device, still bound.
    unsafe { dev.teardown(vdev) };
    // SAFETY: As above, and no callback runs after `teardown`.
    unsafe { drop_priv(vdev) };
    Err(EBUSY)
}

/// Sets up the device's `dev_queues` request queues and the event queue
/// after them (queue `dev_queues`); falls back to the first `nq` request
/// queues alone if the device has no event queue (or too many request
/// queues). Returns the first `nq` request queues and the event queue.
#[allow(clippy::type_complexity)]
fn find_vqs(
    vdev: *mut bindings::virtio_device,
    dev_queues: usize,
    nq: usize,
) -> Result<(
    KVec<*mut bindings::virtqueue>,
    Option<*mut bindings::virtqueue>,
)> {
    let request = bindings::virtqueue_info {
        name: c_str!("requests").as_char_ptr(),
        callback: Some(virtio_nn_vq_done),
        ctx: false,
    };
    let event = bindings::virtqueue_info {
        name: c_str!("events").as_char_ptr(),
        callback: Some(virtio_nn_event_done),
        ctx: false,
    };
    if dev_queues <= MAX_FIND_QUEUES {
        let total = dev_queues + 1;
        let mut infos = KVec::from_elem(request, total, GFP_KERNEL)?;
        infos[dev_queues] = event;
        let mut vqs = KVec::from_elem(ptr::null_mut(), total, GFP_KERNEL)?;
        // SAFETY: `vdev` is valid, without queues; both arrays have `total`
        // entries.
        let ret = unsafe {
            glue::virtio_nn_find_vqs(vdev, total as u32, vqs.as_mut_ptr(), infos.as_mut_ptr())
        };
        if ret == 0 {
            let event_vq = vqs[dev_queues];
            return Ok((vqs, Some(event_vq)));
        }
    }
    let mut infos = KVec::from_elem(request, nq, GFP_KERNEL)?;
    let mut vqs = KVec::from_elem(ptr::null_mut(), nq, GFP_KERNEL)?;
    // SAFETY: `vdev` is valid, without queues; both arrays have `nq`
    // entries.
    let ret =
        unsafe { glue::virtio_nn_find_vqs(vdev, nq as u32, vqs.as_mut_ptr(), infos.as_mut_ptr()) };
    kernel::error::to_result(ret)?;
    Ok((vqs, None))
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
        globals.unpublish(&dev);
        globals.cache.new_epoch();
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
        // A new generation: fetch its copy for the CPU fallback.
        crate::bind::sys::schedule_model_fetch();
    }
}
