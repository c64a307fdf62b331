// SPDX-License-Identifier: GPL-2.0

//! Probe and remove of the virtio-nn device (the entry points, which find
//! the device through `vdev->priv`, are in [`crate::bind::virtio`]; freeze
//! and restore are in `pm.rs`).

use super::{read_config, NnDevice, ReqQueue, MAX_FIND_QUEUES, MAX_REQ_QUEUES};
use crate::bind::virtio::VirtioDevice;
use kernel::bindings;
use kernel::prelude::*;
use kernel::sync::Arc;

/// `virtio_driver.probe`.
pub(crate) fn probe(vdev: VirtioDevice) -> Result {
    let index = vdev.index();
    if !vdev.has_feature(bindings::VIRTIO_F_VERSION_1) {
        pr_err!("virtio{}: legacy device (no VIRTIO_F_VERSION_1)\n", index);
        return Err(ENODEV);
    }
    let globals = crate::globals()?;
    if globals.has_device() {
        pr_err!("virtio{}: only one virtio-nn device is supported\n", index);
        return Err(EBUSY);
    }
    let cfg = read_config(vdev)?;
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
    // The queue callbacks find the device through `priv`; that reference is
    // dropped in `remove` (or below).
    vdev.set_drvdata(dev.clone());
    let (vqs, event_vq) = match vdev.find_vqs(dev_queues, nq, MAX_FIND_QUEUES) {
        Ok(vqs) => vqs,
        Err(e) => {
            // No queue, so no callback can run.
            drop(vdev.take_drvdata());
            pr_err!("virtio{}: cannot set up the queues: {:?}\n", index, e);
            return Err(e);
        }
    };
    let events = event_vq.is_some();
    dev.start_queues(vdev, vqs, event_vq);

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
            if events { ", events" } else { "" }
        );
        // The CPU fallback's copy of this device's model.
        crate::bind::sys::schedule_model_fetch();
        return Ok(());
    }
    // Another device won a race with this probe.
    dev.teardown(vdev);
    // No callback runs after `teardown` (the device is reset).
    drop(vdev.take_drvdata());
    Err(EBUSY)
}

/// `virtio_driver.remove`: unpublishes the device, resets it and fails its
/// requests in flight with `ENODEV`.
pub(crate) fn remove(vdev: VirtioDevice) {
    // `priv` stays set for the queue callbacks until `teardown` has stopped
    // them.
    let Some(dev) = vdev.drvdata_arc() else {
        return;
    };
    if let Ok(globals) = crate::globals() {
        globals.unpublish(&dev);
        globals.cache.new_epoch();
    }
    dev.teardown(vdev);
    // No callback runs after `teardown` (the device is reset).
    drop(vdev.take_drvdata());
    pr_info!("virtio{}: removed\n", dev.index);
}
