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
//! none came since), `no model`, `error`, `no device`, or `fallback` instead
//! of the last four while the CPU fallback answers for the device (see
//! [`crate::fallback`]; without a device the other lines then describe its
//! copy of the model); `Predictions` counts the successful predictions since
//! the module was loaded.

use crate::device::NnDevice;
use crate::protocol::{self, DeviceConfig};
use core::fmt::{self, Write};
use core::sync::atomic::Ordering;
use kernel::prelude::*;
use kernel::sync::Arc;

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

/// The status of `dev` with config `cfg` as `model_info` shows it:
/// `fallback` while the device does not answer and the CPU fallback does.
fn status_of(dev: &NnDevice, cfg: &DeviceConfig) -> &'static str {
    let status = match cfg.status {
        protocol::DEVICE_STATUS_READY if dev.unresponsive() => "unresponsive",
        protocol::DEVICE_STATUS_READY => return "active",
        protocol::DEVICE_STATUS_NO_MODEL => "no model",
        _ => "error",
    };
    if crate::fallback::available() {
        "fallback"
    } else {
        status
    }
}

/// The device status as `model_info` shows it, the cached config (without
/// a device the CPU fallback's copy's, or the default) and the device.
fn device_state() -> Result<(&'static str, DeviceConfig, Option<Arc<NnDevice>>)> {
    let globals = crate::globals()?;
    let Some(dev) = globals.current_device() else {
        if let (true, Some(copy)) = (crate::fallback::enabled(), globals.model_copy()) {
            return Ok(("fallback", copy.config(), None));
        }
        return Ok(("no device", DeviceConfig::default(), None));
    };
    let cfg = dev.model_info().cfg;
    Ok((status_of(&dev, &cfg), cfg, Some(dev)))
}

/// `model_info` into `out` (a page).
pub(crate) fn model_info(out: &mut [u8]) -> Result<isize> {
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

/// `performance` into `out` (a page).
pub(crate) fn performance(out: &mut [u8]) -> Result<isize> {
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
}

/// `health` into `out` (a page).
pub(crate) fn health(out: &mut [u8]) -> Result<isize> {
    let (status, _, _) = device_state()?;
    let mut w = SliceWriter { buf: out, len: 0 };
    crate::health::HEALTH
        .show(&mut w, status)
        .map_err(|_| EINVAL)?;
    Ok(w.len as isize)
}

// The files of the device's own sysfs directory; the values of
// `enum virtio_nn_dev_attr` in `virtio_nn_glue.h`.
const ATTR_GENERATION: i32 = 0;
const ATTR_STATUS: i32 = 1;
const ATTR_INPUT_DIM: i32 = 2;
const ATTR_OUTPUT_DIM: i32 = 3;
const ATTR_NUM_LAYERS: i32 = 4;
const ATTR_MAX_BATCH: i32 = 5;
const ATTR_QUEUES: i32 = 6;

/// `show` of the one-value files in
/// `/sys/bus/virtio/devices/virtioN/neural_network/`: `generation`,
/// `status`, `input_dim`, `output_dim`, `num_layers`, `max_batch`,
/// `queues`, each one value and `\n`, as in `model_info`.
pub(crate) fn dev_attr(dev: &NnDevice, attr: i32, out: &mut [u8]) -> Result<isize> {
    let cfg = dev.model_info().cfg;
    let has_model = cfg.status == protocol::DEVICE_STATUS_READY;
    let mut w = SliceWriter { buf: out, len: 0 };
    let r = match attr {
        ATTR_GENERATION => writeln!(w, "{}", cfg.generation),
        ATTR_STATUS => writeln!(w, "{}", status_of(dev, &cfg)),
        ATTR_INPUT_DIM => writeln!(w, "{}", if has_model { cfg.input_dim() } else { 0 }),
        ATTR_OUTPUT_DIM => writeln!(w, "{}", if has_model { cfg.output_dim() } else { 0 }),
        ATTR_NUM_LAYERS => writeln!(w, "{}", if has_model { cfg.num_layers } else { 0 }),
        ATTR_MAX_BATCH => writeln!(w, "{}", cfg.max_batch),
        ATTR_QUEUES => writeln!(w, "{}", dev.num_queues()),
        _ => return Err(EINVAL),
    };
    r.map_err(|_| EINVAL)?;
    Ok(w.len as isize)
}
