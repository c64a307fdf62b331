// SPDX-License-Identifier: GPL-2.0

//! `/sys/kernel/neural_network/`: `model_info`, `performance` (see
//! [`crate::stats`]) and `health` (see [`crate::health`]).
//!
//! ```text
//! Model: 16x32x4
//! Status: active
//! Predictions: 42
//! Generation: 1
//! Input: 16
//! Output: 4
//! Layers: 2
//! Max batch: 4096
//! Queues: 2
//! Queue requests: 12,9
//! ```
//!
//! The values come from the config space as last read by the driver (at
//! probe, and again when the model may have changed): reading this file costs
//! no round trip to the host, unless an event said the config changed and
//! the device is not unresponsive (then it is read again first, see
//! `NnDevice::refresh`). `Status` is `active`, `unresponsive` (the last
//! request got no answer before its deadline — e.g. the daemon died — and
//! none came since), `no model`, `error` or `no device`; `Predictions` counts the successful predictions since the
//! module was loaded.

use crate::device::NnDevice;
use crate::glue;
use crate::protocol::{self, DeviceConfig};
use core::fmt::{self, Write};
use core::sync::atomic::Ordering;
use kernel::bindings;
use kernel::ffi::{c_char, c_int};
use kernel::page::PAGE_SIZE;
use kernel::prelude::*;
use kernel::sync::{Arc, ArcBorrow};
use kernel::{c_str, error::from_result};

/// Shows the layer widths of a model, e.g. `16x32x4`.
pub(crate) struct ModelName<'a>(pub(crate) &'a DeviceConfig);

impl fmt::Display for ModelName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = self.0;
        if c.status == protocol::DEVICE_STATUS_NO_MODEL || c.num_layers == 0 {
            return f.write_str("none");
        }
        let used = (c.num_layers as usize).min(protocol::MAX_LAYERS);
        for (i, d) in c.dims[..=used].iter().enumerate() {
            if i > 0 {
                f.write_char('x')?;
            }
            write!(f, "{}", d)?;
        }
        Ok(())
    }
}

/// `/sys/kernel/neural_network`; removed on drop.
pub(crate) struct SysfsDir {
    kobj: *mut bindings::kobject,
}

// SAFETY: The kobject pointer is only used to remove it, from any thread.
unsafe impl Send for SysfsDir {}
// SAFETY: `SysfsDir` has no `&self` methods.
unsafe impl Sync for SysfsDir {}

impl SysfsDir {
    /// Creates `/sys/kernel/neural_network/{model_info,performance,health}`.
    pub(crate) fn new() -> Result<Self> {
        // SAFETY: The name is a static C string; `kernel_kobj` is set up at
        // boot.
        let kobj = unsafe {
            bindings::kobject_create_and_add(
                c_str!("neural_network").as_char_ptr(),
                bindings::kernel_kobj,
            )
        };
        if kobj.is_null() {
            return Err(ENOMEM);
        }
        // SAFETY: `kobj` is live.
        let ret = unsafe { glue::virtio_nn_sysfs_create_file(kobj) };
        if ret != 0 {
            // SAFETY: `kobj` is ours.
            unsafe { bindings::kobject_put(kobj) };
            return Err(Error::from_errno(ret));
        }
        Ok(Self { kobj })
    }
}

impl Drop for SysfsDir {
    fn drop(&mut self) {
        // SAFETY: `kobj` is live and has the attribute. Removing the file
        // waits for running `show` calls.
        unsafe {
            glue::virtio_nn_sysfs_remove_file(self.kobj);
            bindings::kobject_put(self.kobj);
        }
    }
}

/// Writes into a byte slice, failing when it is full.
struct SliceWriter<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl Write for SliceWriter<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len.checked_add(s.len()).ok_or(fmt::Error)?;
        self.buf
            .get_mut(self.len..end)
            .ok_or(fmt::Error)?
            .copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// The status of `dev` with config `cfg` as `model_info` shows it.
fn status_of(dev: &NnDevice, cfg: &DeviceConfig) -> &'static str {
    match cfg.status {
        protocol::DEVICE_STATUS_READY if dev.unresponsive() => "unresponsive",
        protocol::DEVICE_STATUS_READY => "active",
        protocol::DEVICE_STATUS_NO_MODEL => "no model",
        _ => "error",
    }
}

/// The device status as `model_info` shows it, the cached config (default
/// without a device) and the device.
fn device_state() -> Result<(&'static str, DeviceConfig, Option<Arc<NnDevice>>)> {
    let globals = crate::globals()?;
    let Some(dev) = globals.current_device() else {
        return Ok(("no device", DeviceConfig::default(), None));
    };
    let cfg = dev.model_info().cfg;
    Ok((status_of(&dev, &cfg), cfg, Some(dev)))
}

fn model_info(out: &mut [u8]) -> Result<isize> {
    let globals = crate::globals()?;
    let (status, cfg, dev) = device_state()?;
    let queues = dev.as_ref().map_or(0, |d| d.num_queues());
    let has_model = cfg.status == protocol::DEVICE_STATUS_READY;
    let mut w = SliceWriter { buf: out, len: 0 };
    write!(
        w,
        "Model: {}\nStatus: {}\nPredictions: {}\nGeneration: {}\nInput: {}\nOutput: {}\n\
         Layers: {}\nMax batch: {}\nQueues: {}\n",
        ModelName(&cfg),
        status,
        globals.predictions.load(Ordering::Relaxed),
        cfg.generation,
        if has_model { cfg.input_dim() } else { 0 },
        if has_model { cfg.output_dim() } else { 0 },
        if has_model { cfg.num_layers } else { 0 },
        cfg.max_batch,
        queues,
    )
    .map_err(|_| EINVAL)?;
    w.write_str("Queue requests: ").map_err(|_| EINVAL)?;
    if let Some(d) = &dev {
        d.write_queue_counts(&mut w).map_err(|_| EINVAL)?;
    }
    w.write_char('\n').map_err(|_| EINVAL)?;
    w.write_str("Queue orphans: ").map_err(|_| EINVAL)?;
    if let Some(d) = &dev {
        d.write_queue_orphans(&mut w).map_err(|_| EINVAL)?;
    }
    w.write_char('\n').map_err(|_| EINVAL)?;
    Ok(w.len as isize)
}

/// `show` of `performance`; `buf` is a page.
#[no_mangle]
pub(crate) extern "C" fn virtio_nn_performance_show(buf: *mut c_char) -> isize {
    // SAFETY: sysfs passes a page-sized buffer that is ours during the call.
    let out = unsafe { core::slice::from_raw_parts_mut(buf.cast::<u8>(), PAGE_SIZE) };
    from_result(|| {
        let mut w = SliceWriter { buf: out, len: 0 };
        let entries = crate::globals()?.cache.len();
        crate::stats::STATS
            .show(&mut w, entries)
            .map_err(|_| EINVAL)?;
        let orphans = crate::globals()?
            .current_device()
            .map_or(0, |d| d.orphans());
        writeln!(w, "orphans: {}", orphans).map_err(|_| EINVAL)?;
        Ok(w.len as isize)
    })
}

/// `show` of `health`; `buf` is a page.
#[no_mangle]
pub(crate) extern "C" fn virtio_nn_health_show(buf: *mut c_char) -> isize {
    // SAFETY: sysfs passes a page-sized buffer that is ours during the call.
    let out = unsafe { core::slice::from_raw_parts_mut(buf.cast::<u8>(), PAGE_SIZE) };
    from_result(|| {
        let (status, _, _) = device_state()?;
        let mut w = SliceWriter { buf: out, len: 0 };
        crate::health::HEALTH
            .show(&mut w, status)
            .map_err(|_| EINVAL)?;
        Ok(w.len as isize)
    })
}

/// `show` of `model_info`; `buf` is a page.
#[no_mangle]
pub(crate) extern "C" fn virtio_nn_model_info_show(buf: *mut c_char) -> isize {
    // SAFETY: sysfs passes a page-sized buffer that is ours during the call.
    let out = unsafe { core::slice::from_raw_parts_mut(buf.cast::<u8>(), PAGE_SIZE) };
    from_result(|| model_info(out))
}

// The files of the device's own sysfs directory; the values of
// `enum virtio_nn_dev_attr` in `virtio_nn_glue.h`.
const ATTR_GENERATION: c_int = 0;
const ATTR_STATUS: c_int = 1;
const ATTR_INPUT_DIM: c_int = 2;
const ATTR_OUTPUT_DIM: c_int = 3;
const ATTR_NUM_LAYERS: c_int = 4;
const ATTR_MAX_BATCH: c_int = 5;
const ATTR_QUEUES: c_int = 6;

/// `show` of the one-value files in
/// `/sys/bus/virtio/devices/virtioN/neural_network/`: `generation`,
/// `status`, `input_dim`, `output_dim`, `num_layers`, `max_batch`,
/// `queues`, each one value and `\n`, as in `model_info`.
#[no_mangle]
pub(crate) extern "C" fn virtio_nn_dev_attr_show(
    vdev: *mut bindings::virtio_device,
    attr: c_int,
    buf: *mut c_char,
) -> isize {
    // SAFETY: sysfs passes a page-sized buffer that is ours during the call.
    let out = unsafe { core::slice::from_raw_parts_mut(buf.cast::<u8>(), PAGE_SIZE) };
    // SAFETY: The driver core adds these files only after a successful probe
    // and removes them (waiting for running `show` calls) before `remove`, so
    // `vdev` is bound and its `priv` holds the reference that probe took with
    // `Arc::into_raw`.
    let dev = unsafe { ArcBorrow::<NnDevice>::from_raw((*vdev).priv_.cast()) };
    from_result(|| {
        let cfg = dev.model_info().cfg;
        let has_model = cfg.status == protocol::DEVICE_STATUS_READY;
        let mut w = SliceWriter { buf: out, len: 0 };
        let r = match attr {
            ATTR_GENERATION => writeln!(w, "{}", cfg.generation),
            ATTR_STATUS => writeln!(w, "{}", status_of(&dev, &cfg)),
            ATTR_INPUT_DIM => writeln!(w, "{}", if has_model { cfg.input_dim() } else { 0 }),
            ATTR_OUTPUT_DIM => writeln!(w, "{}", if has_model { cfg.output_dim() } else { 0 }),
            ATTR_NUM_LAYERS => writeln!(w, "{}", if has_model { cfg.num_layers } else { 0 }),
            ATTR_MAX_BATCH => writeln!(w, "{}", cfg.max_batch),
            ATTR_QUEUES => writeln!(w, "{}", dev.num_queues()),
            _ => return Err(EINVAL),
        };
        r.map_err(|_| EINVAL)?;
        Ok(w.len as isize)
    })
}
