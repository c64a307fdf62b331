// SPDX-License-Identifier: GPL-2.0

//! The driver's copy of the served model, for the CPU fallback
//! ([`crate::fallback`]).
//!
//! A work item on `system_long_wq` (the C glue's; never a caller's path)
//! reads the model file the device serves with `GET_MODEL`, in chunks of
//! [`CHUNK`] bytes, each a normal request (its own deadline; a chunk the
//! device does not answer is an orphan as any other request). It runs after
//! probe, after a config-change event, when `fallback_max_bytes` is
//! written, and again (at most once a second) after a device answer while
//! the last fetch did not complete or the copy is of another generation.
//!
//! Every chunk names the generation of config space; `MODEL_CHANGED` (a
//! hot-swap between two chunks) starts again with the config read anew, up
//! to [`RESTARTS`] times. The assembled file must have the size and CRC-32C
//! config space gives for that generation, and parse with nn-core's
//! `model_view` (which never panics on bad bytes and checks the tensor
//! data's own checksum); its layer widths must be config space's. Only then
//! does it replace the copy ([`crate::Globals`], module level: it survives
//! device remove and probe, so it answers while a device is unplugged).
//!
//! A model file above `fallback_max_bytes` (default 1 MiB) is not copied:
//! the copy is dropped (no fallback for that model) and one line says so.
//! `fallback_max_bytes` 0 drops the copy and turns the fallback off.

use crate::bind::sys;
use crate::device::NnDevice;
use crate::model_view;
use crate::protocol::{self, DeviceConfig, ModelRequest, MAX_BATCH, MAX_LAYERS};
use crate::reference;
use crate::request::Deadline;
use core::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use kernel::alloc::flags::__GFP_NOWARN;
use kernel::prelude::*;
use kernel::sync::Arc;
use kernel::time::Ktime;

/// Bytes asked for per `GET_MODEL` request: the request's one buffer (both
/// parts, 80 bytes of headers) stays within 16 KiB.
const CHUNK: u32 = 16 * 1024 - 128;

/// How often a fetch starts again after `MODEL_CHANGED`.
const RESTARTS: u32 = 8;

/// How long one chunk may take, in ms.
const CHUNK_TIMEOUT_MS: u32 = 5000;

/// Least time between fetches a device answer asks for, in ns.
const RETRY_INTERVAL_NS: i64 = 1_000_000_000;

/// The last fetch did not complete (a failure, not a refusal): a device
/// answer asks for another one.
static WANTED: AtomicBool = AtomicBool::new(true);

/// When a device answer last asked for a fetch (`ktime_get()`, ns).
static LAST_ASKED_NS: AtomicI64 = AtomicI64::new(i64::MIN);

/// `(generation << 32) | crc` of the last model refused for its size, so
/// that the refusal is logged once.
static REFUSED: AtomicU64 = AtomicU64::new(0);

/// A verified copy of a served model file.
pub(crate) struct ModelCopy {
    /// The canonical model file (`model_view` reads it).
    bytes: KVVec<u8>,
    /// The generation it was served as.
    generation: u32,
    /// Its size and CRC-32C, as config space gave them.
    size: u32,
    crc: u32,
    /// The CRC-32C of its tensor data (the file's `checksum` metadata),
    /// verified at the fetch.
    data_crc: u32,
    /// Layer widths, input first, and the number of layers.
    dims: [u32; MAX_LAYERS + 1],
    num_layers: usize,
    /// Values each scratch buffer of the forward pass needs.
    scratch: usize,
}

impl ModelCopy {
    /// The generation the copy was served as.
    pub(crate) fn generation(&self) -> u32 {
        self.generation
    }

    /// Input and output width.
    pub(crate) fn widths(&self) -> (usize, usize) {
        let last = self.dims.get(self.num_layers).copied().unwrap_or(0);
        (self.dims[0] as usize, last as usize)
    }

    /// The copy described as a config space with a ready model (for
    /// `model_info` and `neural_api_get_info` without a device).
    pub(crate) fn config(&self) -> DeviceConfig {
        let mut dims = [0usize; MAX_LAYERS + 1];
        for (d, s) in dims.iter_mut().zip(self.dims.iter()) {
            *d = *s as usize;
        }
        let used = dims.get(..=self.num_layers).unwrap_or(&[]);
        DeviceConfig {
            magic: protocol::CONFIG_MAGIC,
            version: protocol::PROTOCOL_VERSION,
            generation: self.generation,
            status: protocol::DEVICE_STATUS_READY,
            num_layers: self.num_layers as u32,
            max_batch: protocol::max_batch_for(used),
            num_req_queues: 0,
            dims: self.dims,
            model_size: self.size,
            model_crc32c: self.crc,
        }
    }

    /// Runs `num_samples` rows of `inputs` through the copy with nn-core's
    /// scalar reference (the device's arithmetic, bit for bit), in the
    /// caller's context, rescheduling between samples. `expect` (input and
    /// output width), if given, must be the copy's; else `EINVAL`, as for
    /// rows of another width or more than `MAX_BATCH` of them. Returns the
    /// outputs, row after row.
    pub(crate) fn run(
        &self,
        inputs: &[i32],
        num_samples: usize,
        expect: Option<(usize, usize)>,
    ) -> Result<KVVec<i32>> {
        let (in_dim, out_dim) = self.widths();
        if num_samples == 0
            || num_samples > MAX_BATCH as usize
            || num_samples.checked_mul(in_dim) != Some(inputs.len())
            || expect.is_some_and(|e| e != (in_dim, out_dim))
        {
            return Err(EINVAL);
        }
        // The data's CRC was verified at the fetch: this parse only lays the
        // layers over the bytes again.
        let view = model_view::parse(&self.bytes, |_| self.data_crc).map_err(|_| EIO)?;
        let layers = view.layers();
        let mut a = KVec::from_elem(0i32, self.scratch, GFP_KERNEL)?;
        let mut b = KVec::from_elem(0i32, self.scratch, GFP_KERNEL)?;
        let total = num_samples.checked_mul(out_dim).ok_or(EINVAL)?;
        let mut outputs = KVVec::from_elem(0i32, total, GFP_KERNEL | __GFP_NOWARN)?;
        for s in 0..num_samples {
            let x = s
                .checked_mul(in_dim)
                .and_then(|i| inputs.get(i..i.checked_add(in_dim)?))
                .ok_or(EINVAL)?;
            let y = s
                .checked_mul(out_dim)
                .and_then(|o| outputs.get_mut(o..o.checked_add(out_dim)?))
                .ok_or(EINVAL)?;
            reference::forward_checked(layers, x, &mut a, &mut b, y).map_err(|_| EIO)?;
            sys::cond_resched();
        }
        Ok(outputs)
    }
}

/// The next fetch reads the file even if the copy is of it already.
static FORCE: AtomicBool = AtomicBool::new(false);

/// Fetches the model again, whatever the copy holds (the device keeps
/// failing: the reload of [`crate::predict`]).
pub(crate) fn reload() {
    FORCE.store(true, Ordering::Relaxed);
    sys::schedule_model_fetch();
}

/// A device answered with `generation`: asks for a fetch (at most once a
/// second) if the last one did not complete or the copy is of another
/// generation.
pub(crate) fn note_generation(generation: u32) {
    if sys::fallback_max_bytes() == 0 {
        return;
    }
    let Ok(globals) = crate::globals() else {
        return;
    };
    let differs = globals
        .model_copy()
        .is_some_and(|c| c.generation != generation);
    if !differs && !WANTED.load(Ordering::Relaxed) {
        return;
    }
    let now = Ktime::ktime_get().to_ns();
    let last = LAST_ASKED_NS.load(Ordering::Relaxed);
    if now.saturating_sub(last) < RETRY_INTERVAL_NS {
        return;
    }
    if LAST_ASKED_NS
        .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
        .is_ok()
    {
        sys::schedule_model_fetch();
    }
}

/// The fetch work's callback (process context, `system_long_wq`).
#[no_mangle]
pub(crate) extern "C" fn virtio_nn_model_fetch_run() {
    let Ok(globals) = crate::globals() else {
        return;
    };
    let cap = sys::fallback_max_bytes();
    if cap == 0 {
        globals.set_model_copy(None);
        WANTED.store(false, Ordering::Relaxed);
        return;
    }
    let Some(dev) = globals.current_device() else {
        return;
    };
    if dev.unresponsive() {
        // Nothing to fetch from; a late answer asks again.
        WANTED.store(true, Ordering::Relaxed);
        return;
    }
    WANTED.store(true, Ordering::Relaxed);
    let cfg = dev.model_info().cfg;
    match fetch(&dev, cfg, cap) {
        Ok(Some(copy)) => {
            pr_info!(
                "CPU fallback: copy of generation {} ({}, {} bytes, crc32c {:08x})\n",
                copy.generation,
                crate::sysfs::ModelName(&copy.config()),
                copy.size,
                copy.crc
            );
            match Arc::new(copy, GFP_KERNEL) {
                Ok(copy) => {
                    globals.set_model_copy(Some(copy));
                    WANTED.store(false, Ordering::Relaxed);
                    REFUSED.store(0, Ordering::Relaxed);
                }
                Err(_) => pr_warn!("CPU fallback: no memory for the copy\n"),
            }
        }
        Ok(None) => WANTED.store(false, Ordering::Relaxed),
        Err(e) => {
            if sys::ratelimit() {
                pr_warn!(
                    "CPU fallback: fetching generation {} failed ({:?}); the copy of generation {} stays\n",
                    cfg.generation,
                    e,
                    globals.model_copy().map_or(0, |c| c.generation)
                );
            }
        }
    }
}

/// Whether `cfg` describes the file `copy` holds.
fn same_file(copy: &ModelCopy, cfg: &DeviceConfig) -> bool {
    copy.generation == cfg.generation && copy.size == cfg.model_size && copy.crc == cfg.model_crc32c
}

/// Fetches the model `cfg` describes, unless the copy is of it already or
/// there is nothing to copy (`Ok(None)`; a file above `cap` also drops the
/// copy). Starts again on `MODEL_CHANGED`.
fn fetch(dev: &NnDevice, mut cfg: DeviceConfig, cap: u32) -> Result<Option<ModelCopy>> {
    let globals = crate::globals()?;
    let force = FORCE.swap(false, Ordering::Relaxed);
    for _ in 0..RESTARTS {
        if cfg.status != protocol::DEVICE_STATUS_READY
            || cfg.model_size == 0
            || cfg.model_size == u32::MAX
        {
            // No model, an error (the copy keeps answering for it), or a
            // device without the file's size in config space.
            return Ok(None);
        }
        if cfg.model_size > cap {
            let tag = (u64::from(cfg.generation) << 32) | u64::from(cfg.model_crc32c);
            if REFUSED.swap(tag, Ordering::Relaxed) != tag {
                pr_warn!(
                    "CPU fallback: off for generation {}: its model file is {} bytes, above fallback_max_bytes ({})\n",
                    cfg.generation,
                    cfg.model_size,
                    cap
                );
            }
            globals.set_model_copy(None);
            return Ok(None);
        }
        if !force && globals.model_copy().is_some_and(|c| same_file(&c, &cfg)) {
            return Ok(None);
        }
        if let Some(copy) = fetch_generation(dev, &cfg)? {
            return Ok(Some(copy));
        }
        // Swapped between two chunks: the config of the new model.
        dev.mark_config_stale();
        cfg = dev.model_info().cfg;
    }
    Err(EAGAIN)
}

/// Reads generation `cfg.generation`'s file chunk by chunk and verifies it;
/// `None` if the device answered `MODEL_CHANGED`.
fn fetch_generation(dev: &NnDevice, cfg: &DeviceConfig) -> Result<Option<ModelCopy>> {
    let size = cfg.model_size as usize;
    let mut bytes = KVVec::with_capacity(size, GFP_KERNEL)?;
    while bytes.len() < size {
        let offset = u32::try_from(bytes.len()).map_err(|_| EIO)?;
        let req = ModelRequest {
            generation: cfg.generation,
            offset,
            length: cfg.model_size.saturating_sub(offset).min(CHUNK),
            reserved: 0,
        };
        let deadline = Deadline::after_ms(CHUNK_TIMEOUT_MS);
        let (status, generation, chunk) = dev.get_model_chunk(&req, &mut bytes, &deadline)?;
        match status {
            protocol::STATUS_OK => {}
            protocol::STATUS_MODEL_CHANGED => return Ok(None),
            s => {
                pr_warn!(
                    "CPU fallback: GET_MODEL answered {} ({})\n",
                    protocol::status_name(s),
                    s
                );
                return Err(EIO);
            }
        }
        if generation != cfg.generation
            || chunk.model_size != cfg.model_size
            || chunk.model_crc32c != cfg.model_crc32c
            || chunk.length == 0
            || bytes.len() > size
        {
            pr_warn!(
                "CPU fallback: chunk at {} of generation {} ({} of {} bytes, crc32c {:08x}) does not match config space (generation {}, {} bytes, crc32c {:08x})\n",
                offset,
                generation,
                chunk.length,
                chunk.model_size,
                chunk.model_crc32c,
                cfg.generation,
                cfg.model_size,
                cfg.model_crc32c
            );
            return Err(EIO);
        }
    }
    let crc = sys::crc32c(&bytes);
    if crc != cfg.model_crc32c {
        pr_warn!(
            "CPU fallback: the copy of generation {} has CRC-32C {:08x}, config space says {:08x}\n",
            cfg.generation,
            crc,
            cfg.model_crc32c
        );
        return Err(EIO);
    }
    let (dims, num_layers, scratch, data_crc) = {
        let view = match model_view::parse(&bytes, sys::crc32c) {
            Ok(v) => v,
            Err(e) => {
                pr_warn!(
                    "CPU fallback: the model file of generation {} is not usable: {}\n",
                    cfg.generation,
                    e
                );
                return Err(EIO);
            }
        };
        let layers = view.layers();
        let mut dims = [0u32; MAX_LAYERS + 1];
        for (i, l) in layers.iter().enumerate() {
            if i == 0 {
                dims[0] = l.in_dim as u32;
            }
            if let Some(d) = dims.get_mut(i + 1) {
                *d = l.out_dim as u32;
            }
        }
        if reference::check(layers).is_err() {
            return Err(EIO);
        }
        (dims, layers.len(), view.scratch_len(), view.checksum())
    };
    if num_layers != cfg.num_layers as usize || dims != cfg.dims {
        pr_warn!(
            "CPU fallback: the model file of generation {} has other layer widths than config space\n",
            cfg.generation
        );
        return Err(EIO);
    }
    Ok(Some(ModelCopy {
        bytes,
        generation: cfg.generation,
        size: cfg.model_size,
        crc: cfg.model_crc32c,
        data_crc,
        dims,
        num_layers,
        scratch,
    }))
}
