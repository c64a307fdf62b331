// SPDX-License-Identifier: GPL-2.0

//! `/sys/kernel/neural_network/`: `model_info`, `performance` (see
//! [`crate::stats`]) and `health` (see [`crate::health`]).
//!
//! ```text
//! Model: 16x32x4
//! Status: active
//! Generation: 1
//! Predictions: 42
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
//! no round trip to the host, unless an event said the config changed (then
//! it is read again first). `Status` is `active`, `unresponsive` (the last
//! request got no answer before its deadline — e.g. the daemon died — and
//! none came since), `no model`, `error` or `no device`; `Predictions` counts the successful predictions since the
//! module was loaded.

use crate::device::NnDevice;
use crate::glue;
use crate::protocol::{self, DeviceConfig};
use core::fmt::{self, Write};
use core::sync::atomic::Ordering;
use kernel::bindings;
use kernel::ffi::c_char;
use kernel::page::PAGE_SIZE;
use kernel::prelude::*;
use kernel::sync::Arc;
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

/// The device status as `model_info` shows it, the cached config (default
/// without a device) and the device.
fn device_state() -> Result<(&'static str, DeviceConfig, Option<Arc<NnDevice>>)> {
    let globals = crate::globals()?;
    let device = globals.current_device();
    let dev = device.clone();
    let cfg = device.map(|d| d.model_info().cfg);
    let unresponsive = dev.as_ref().is_some_and(|d| d.unresponsive());
    let status = match cfg.map(|c| c.status) {
        None => "no device",
        Some(protocol::DEVICE_STATUS_READY) if unresponsive => "unresponsive",
        Some(protocol::DEVICE_STATUS_READY) => "active",
        Some(protocol::DEVICE_STATUS_NO_MODEL) => "no model",
        Some(_) => "error",
    };
    Ok((status, cfg.unwrap_or_default(), dev))
}

fn model_info(out: &mut [u8]) -> Result<isize> {
    let globals = crate::globals()?;
    let (status, cfg, dev) = device_state()?;
    let queues = dev.as_ref().map_or(0, |d| d.num_queues());
    let has_model = cfg.status == protocol::DEVICE_STATUS_READY;
    let mut w = SliceWriter { buf: out, len: 0 };
    write!(
        w,
        "Model: {}\nStatus: {}\nGeneration: {}\nPredictions: {}\nInput: {}\nOutput: {}\n\
         Layers: {}\nMax batch: {}\nQueues: {}\n",
        ModelName(&cfg),
        status,
        cfg.generation,
        globals.predictions.load(Ordering::Relaxed),
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
