// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Device logic: the served model, the config space, and turning one
//! descriptor chain into one response.
//!
//! Everything a guest sends is untrusted: every length, dim and count is
//! checked before use, and every failure that leaves room for a response
//! header is answered with an error status (see `nn-core/PROTOCOL.md`).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use log::{debug, warn};
use nn_core::protocol::{
    self, DeviceConfig, ModelChunk, ModelRequest, RequestHeader, ResponseHeader, CONFIG_MAGIC,
    CONFIG_SIZE, MAX_BATCH, MAX_LAYERS, OP_GET_MODEL, OP_NULL, OP_PREDICT, PROTOCOL_VERSION,
};
use nn_core::{Model, Scratch};

use crate::chain::Segments;
use crate::health::{Health, ModelInfo};
use crate::ratelimit::warn_limited;
use virtio_queue::DescriptorChain;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

/// Guest memory as the daemon sees it.
pub type GuestMemory = GuestMemoryMmap<()>;
/// A snapshot of guest memory.
pub type GuestMemoryRef = <GuestMemoryAtomic<GuestMemory> as GuestAddressSpace>::T;

/// A model, the file `GET_MODEL` serves for it and the generation it is
/// served under. Swapped as one `Arc`, so the model a request runs, the
/// bytes a chunk is read from and the size, CRC and generation config space
/// shows always belong together.
#[derive(Debug)]
pub struct Served {
    /// The model (`None` until the first load of a daemon started without
    /// one: requests are then answered with `STATUS_NO_MODEL`).
    pub model: Option<Model>,
    /// Generation number announced in config space and in responses.
    pub generation: u32,
    /// Where the model was loaded from.
    pub source: PathBuf,
    /// The model's canonical file (`Model::to_bytes`, what nn-core's
    /// `model_view::parse` reads), whatever form the loaded file had; empty
    /// without a model.
    file: Vec<u8>,
    /// CRC-32C of `file` (0 without a model).
    file_crc32c: u32,
}

impl Served {
    /// `model` served as `generation`, with its canonical file.
    fn new(model: Option<Model>, generation: u32, source: PathBuf) -> Self {
        let file = model.as_ref().map_or_else(Vec::new, Model::to_bytes);
        let file_crc32c = if file.is_empty() {
            0
        } else {
            nn_core::model::crc32c(&file)
        };
        Self {
            model,
            generation,
            source,
            file,
            file_crc32c,
        }
    }

    /// The file `GET_MODEL` serves (empty without a model).
    pub fn file(&self) -> &[u8] {
        &self.file
    }

    /// Size of [`Served::file`] as config space shows it. The file of a
    /// model of at most `model::MAX_FILE_SIZE` bytes is far below 4 GiB.
    pub fn file_size(&self) -> u32 {
        u32::try_from(self.file.len()).unwrap_or(u32::MAX)
    }

    /// CRC-32C of [`Served::file`] (0 without a model).
    pub fn file_crc32c(&self) -> u32 {
        self.file_crc32c
    }
}

/// State shared by all queues and connections of one daemon.
#[derive(Debug)]
pub struct NnDevice {
    served: RwLock<Arc<Served>>,
    num_req_queues: u32,
    /// Test-only: every request waits this long before it is answered, to
    /// make the device slow on purpose (guest timeout tests).
    delay_ms: AtomicU64,
    /// Written at every model change (and when a worker dies); the backend
    /// waits on it to send an event on the event queue.
    changed: EventFd,
    /// The frontend connection and the workers' states.
    health: Health,
}

/// Per-worker reusable buffers, so the data path does not allocate per
/// request. A request is served in blocks of samples ([`block_samples`]), so
/// these stay bounded by one block whatever the request's size.
#[derive(Default)]
pub struct Buffers {
    segs: Segments,
    work: Work,
}

/// The values of one block of samples, in and out.
#[derive(Default)]
struct Work {
    bytes: Vec<u8>,
    inputs: Vec<i32>,
    outputs: Vec<i32>,
    scratch: Scratch,
}

/// Most multiply-accumulates computed between two checks for a stop (a
/// stopped ring, a disconnect): about a millisecond of one core.
pub const BLOCK_MACS: u64 = 1 << 20;

/// Most bytes of inputs and outputs one block moves.
pub const BLOCK_BYTES: usize = 256 * 1024;

/// Samples per block for a model of layer widths `dims`: at most
/// [`BLOCK_MACS`] and [`BLOCK_BYTES`] worth, at least one.
pub fn block_samples(dims: &[usize]) -> usize {
    let macs = protocol::macs_per_sample(dims).max(1);
    let io = 4 * (dims.first().copied().unwrap_or(0) + dims.last().copied().unwrap_or(0));
    let by_macs = usize::try_from(BLOCK_MACS / macs).unwrap_or(usize::MAX);
    let by_bytes = BLOCK_BYTES / io.max(1);
    by_macs.min(by_bytes).max(1)
}

/// A request was abandoned because its ring stopped or the connection ended
/// while it was served: nothing may be written for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stopped;

/// What processing a chain produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Bytes written into the chain's device-writable part (the used length).
    pub used_len: u32,
    /// The status sent, or `None` if not even a header fit.
    pub status: Option<u32>,
    /// Samples answered (0 unless the status is OK).
    pub samples: u32,
}

impl Outcome {
    /// Nothing could be written: the chain is returned with used length 0.
    pub const DROPPED: Outcome = Outcome {
        used_len: 0,
        status: None,
        samples: 0,
    };
}

/// The generation after `g`. Generation 0 is never used, so a driver can
/// treat it as "none".
fn next_generation(g: u32) -> u32 {
    g.checked_add(1).unwrap_or(1)
}

impl NnDevice {
    /// A device serving `model` (loaded from `source`) as generation 1.
    pub fn new(model: Model, source: PathBuf, num_req_queues: u32) -> std::io::Result<Self> {
        Self::at_generation(model, source, num_req_queues, 1)
    }

    /// A device serving `model` as `generation` (a worker taking over from
    /// one that served it).
    pub fn at_generation(
        model: Model,
        source: PathBuf,
        num_req_queues: u32,
        generation: u32,
    ) -> std::io::Result<Self> {
        Self::serving(Some(model), source, num_req_queues, generation.max(1))
    }

    /// A device without a model (config status `NO_MODEL`, generation 0)
    /// until the first [`NnDevice::swap`].
    pub fn without_model(num_req_queues: u32) -> std::io::Result<Self> {
        Self::serving(None, PathBuf::new(), num_req_queues, 0)
    }

    fn serving(
        model: Option<Model>,
        source: PathBuf,
        num_req_queues: u32,
        generation: u32,
    ) -> std::io::Result<Self> {
        Ok(Self {
            served: RwLock::new(Arc::new(Served::new(model, generation, source))),
            num_req_queues,
            changed: EventFd::new(libc::EFD_NONBLOCK)?,
            delay_ms: AtomicU64::new(0),
            health: Health::new(num_req_queues),
        })
    }

    /// Readable after a model change or a worker's death (an eventfd
    /// counter; read it to reset).
    pub fn changed(&self) -> &EventFd {
        &self.changed
    }

    /// The frontend connection and the workers' states.
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// The admin `health` reply's content.
    pub fn health_report(&self) -> crate::health::Report {
        let served = self.current();
        self.health.report(&ModelInfo {
            name: served.model.as_ref().map(|m| m.name.clone()),
            generation: served.generation,
        })
    }

    /// Records that request queue `queue`'s worker ended with `why` (its
    /// thread stops) and tells the event queue: the status is now an error.
    pub fn worker_died(&self, queue: usize, why: String) {
        warn!("worker of queue {queue} ended: {why}");
        self.health.died(queue, why);
        if let Err(e) = self.changed.write(1) {
            warn!("cannot signal the status change to the event queue: {e}");
        }
    }

    /// The device status the config space shows: an error while a worker
    /// is stuck or dead, else no model until one is loaded, else ready.
    pub fn status(&self) -> u32 {
        if self.health.failing() {
            protocol::DEVICE_STATUS_ERROR
        } else if self.current().model.is_none() {
            protocol::DEVICE_STATUS_NO_MODEL
        } else {
            protocol::DEVICE_STATUS_READY
        }
    }

    /// Number of request queues.
    pub fn num_req_queues(&self) -> u32 {
        self.num_req_queues
    }

    /// Swaps in a new, already validated model under the next generation,
    /// which is returned. Requests already taken keep the model they started
    /// with (they hold its `Arc`); later ones see the new one.
    pub fn swap(&self, model: Model, source: PathBuf) -> u32 {
        // The file is made before the lock is taken (a large model's takes
        // a while); its generation is set under the lock.
        let mut next = Served::new(Some(model), 0, source);
        let mut served = self.served.write().unwrap_or_else(|e| e.into_inner());
        let generation = next_generation(served.generation);
        next.generation = generation;
        let old = std::mem::replace(&mut *served, Arc::new(next));
        drop(served);
        // Freed (if no request still holds it) after the lock is released:
        // freeing a large model must not hold up GET_CONFIG and requests.
        drop(old);
        if let Err(e) = self.changed.write(1) {
            warn!("cannot signal the model change to the event queue: {e}");
        }
        generation
    }

    /// The generation the next [`NnDevice::swap`] will serve under.
    pub fn next_generation(&self) -> u32 {
        next_generation(self.current().generation)
    }

    /// The model currently served. Requests keep the `Arc` they started with.
    pub fn current(&self) -> Arc<Served> {
        // A poisoned lock only means a panic elsewhere; the Arc inside is intact.
        self.served
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The config space as the guest sees it now.
    pub fn config(&self) -> DeviceConfig {
        let served = self.current();
        let dims = served.model.as_ref().map_or(Vec::new(), |m| m.mlp.dims());
        let mut cfg_dims = [0u32; MAX_LAYERS + 1];
        for (d, &v) in cfg_dims.iter_mut().zip(&dims) {
            *d = v as u32;
        }
        DeviceConfig {
            magic: CONFIG_MAGIC,
            version: PROTOCOL_VERSION,
            generation: served.generation,
            status: self.status(),
            num_layers: dims.len().saturating_sub(1) as u32,
            max_batch: if dims.is_empty() {
                MAX_BATCH
            } else {
                protocol::max_batch_for(&dims)
            },
            num_req_queues: self.num_req_queues,
            dims: cfg_dims,
            model_size: served.file_size(),
            model_crc32c: served.file_crc32c(),
        }
    }

    /// `size` bytes of config space from `offset`; out-of-range bytes read
    /// as nothing (an empty reply), as for any vhost-user device.
    pub fn read_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let bytes = self.config().to_bytes();
        let (start, len) = (offset as usize, size as usize);
        match start.checked_add(len) {
            Some(end) if end <= CONFIG_SIZE => bytes[start..end].to_vec(),
            _ => {
                warn!("guest read config [{offset}, +{size}) outside {CONFIG_SIZE} bytes");
                Vec::new()
            }
        }
    }

    /// Test-only: delays every request by `ms` (0: none) from now on.
    pub fn set_test_delay(&self, ms: u64) {
        self.delay_ms.store(ms, Ordering::Relaxed);
    }

    /// The current test delay in milliseconds.
    pub fn delay_ms(&self) -> u64 {
        self.delay_ms.load(Ordering::Relaxed)
    }

    /// Handles one request chain: reads the request, runs the model, writes
    /// the response. Never panics on guest input. A chain may hold at most
    /// [`crate::vhu_nn::QUEUE_SIZE`] descriptors.
    pub fn process_chain<M>(
        &self,
        chain: DescriptorChain<M>,
        mem: &GuestMemory,
        buf: &mut Buffers,
    ) -> Outcome
    where
        M: std::ops::Deref,
        M::Target: vm_memory::GuestMemory,
    {
        self.process_chain_until(chain, mem, buf, crate::vhu_nn::QUEUE_SIZE, &|| false)
            .unwrap_or(Outcome::DROPPED)
    }

    /// [`NnDevice::process_chain`] for a chain of at most `max_descs`
    /// descriptors (the queue size), checking `stop` between blocks of
    /// samples: once it returns true the request is abandoned and
    /// `Err(Stopped)` returned; nothing more is written for it.
    pub fn process_chain_until<M>(
        &self,
        chain: DescriptorChain<M>,
        mem: &GuestMemory,
        buf: &mut Buffers,
        max_descs: usize,
        stop: &dyn Fn() -> bool,
    ) -> Result<Outcome, Stopped>
    where
        M: std::ops::Deref,
        M::Target: vm_memory::GuestMemory,
    {
        let delay = self.delay_ms();
        if delay > 0 {
            std::thread::sleep(Duration::from_millis(delay));
        }
        if let Err(e) = buf.segs.parse(chain, mem, max_descs) {
            warn_limited!("{e}");
            return Ok(Outcome::DROPPED);
        }
        self.serve(&buf.segs, mem, &mut buf.work, stop)
    }

    /// Answers the parsed chain `segs`.
    fn serve(
        &self,
        segs: &Segments,
        mem: &GuestMemory,
        work: &mut Work,
        stop: &dyn Fn() -> bool,
    ) -> Result<Outcome, Stopped> {
        if segs.writable_len() < ResponseHeader::SIZE {
            warn_limited!(
                "writable part of {} bytes cannot hold a response header",
                segs.writable_len()
            );
            return Ok(Outcome::DROPPED);
        }
        let served = self.current();
        let (mut resp, payload) = if segs.unreadable() {
            warn_limited!("request with readable descriptors outside guest memory");
            (error(&served, 0, protocol::STATUS_DEVICE_ERROR), 0)
        } else {
            self.answer(&served, segs, mem, work, stop)?
        };
        if resp.status != protocol::STATUS_OK {
            debug!(
                "request {} answered with {}",
                resp.id,
                protocol::status_name(resp.status)
            );
        }
        let mut used = ResponseHeader::SIZE + payload;
        if let Err(e) = segs.write_at(mem, 0, &resp.to_bytes()) {
            // Room was checked and the segments are in guest memory, so
            // only a fault of the memory itself gets here.
            warn_limited!("writing response {}: {e}", resp.id);
            resp.status = protocol::STATUS_DEVICE_ERROR;
            used = 0;
        }
        Ok(Outcome {
            used_len: used as u32,
            status: Some(resp.status),
            samples: if resp.status == protocol::STATUS_OK {
                resp.num_samples
            } else {
                0
            },
        })
    }

    /// Decides the response header; on success the outputs are already
    /// written after it and their byte count is returned as the second value.
    fn answer(
        &self,
        served: &Served,
        segs: &Segments,
        mem: &GuestMemory,
        buf: &mut Work,
        stop: &dyn Fn() -> bool,
    ) -> Result<(ResponseHeader, usize), Stopped> {
        let mut hb = [0u8; RequestHeader::SIZE];
        if segs.readable_len() < RequestHeader::SIZE || segs.read_at(mem, 0, &mut hb).is_err() {
            return Ok((error(served, 0, protocol::STATUS_MALFORMED), 0));
        }
        let req = RequestHeader::from_bytes(&hb);
        let err = |status| Ok((error(served, req.id, status), 0));
        if req.flags != 0 || !matches!(req.opcode, OP_PREDICT | OP_NULL | OP_GET_MODEL) {
            return err(protocol::STATUS_UNSUPPORTED);
        }
        if req.opcode == OP_GET_MODEL {
            return Ok(model_chunk(served, segs, mem, &req));
        }
        let Some(model) = &served.model else {
            return err(protocol::STATUS_NO_MODEL);
        };
        let mlp = &model.mlp;
        let dims = mlp.dims();
        if req.num_samples == 0 || req.num_samples > protocol::max_batch_for(&dims) {
            return err(protocol::STATUS_BAD_BATCH);
        }
        if req.in_dim as usize != mlp.input_dim() {
            return err(protocol::STATUS_BAD_DIMS);
        }
        let (n, in_dim) = (req.num_samples as usize, mlp.input_dim());
        // Bounded by MAX_BATCH * MAX_DIM * 4, so no overflow.
        if segs.readable_len() != RequestHeader::SIZE + n * in_dim * 4 {
            return err(protocol::STATUS_MALFORMED);
        }
        let out_dim = if req.opcode == OP_PREDICT {
            mlp.output_dim()
        } else {
            0
        };
        let out_len = n * out_dim * 4;
        if segs.writable_len() < ResponseHeader::SIZE + out_len {
            return err(protocol::STATUS_NO_SPACE);
        }
        let ok = ResponseHeader {
            status: protocol::STATUS_OK,
            generation: served.generation,
            id: req.id,
            num_samples: req.num_samples,
            out_dim: out_dim as u32,
        };
        if req.opcode == OP_NULL {
            return Ok((ok, 0));
        }
        let block = block_samples(&dims);
        let mut done = 0;
        while done < n {
            if stop() {
                return Err(Stopped);
            }
            let k = block.min(n - done);
            let (in_bytes, out_vals) = (k * in_dim * 4, k * out_dim);
            buf.bytes.resize(in_bytes.max(out_vals * 4), 0);
            let at = RequestHeader::SIZE + done * in_dim * 4;
            if segs.read_at(mem, at, &mut buf.bytes[..in_bytes]).is_err() {
                return err(protocol::STATUS_DEVICE_ERROR);
            }
            buf.inputs.resize(k * in_dim, 0);
            protocol::decode_values(&buf.bytes[..in_bytes], &mut buf.inputs);
            buf.outputs.resize(out_vals, 0);
            if let Err(e) = mlp.predict_batch(&buf.inputs, &mut buf.outputs, &mut buf.scratch) {
                // Shapes were checked above; this would be a daemon bug.
                warn_limited!("request {}: {e}", req.id);
                return err(protocol::STATUS_DEVICE_ERROR);
            }
            protocol::encode_values(&buf.outputs, &mut buf.bytes[..out_vals * 4]);
            let at = ResponseHeader::SIZE + done * out_dim * 4;
            if segs.write_at(mem, at, &buf.bytes[..out_vals * 4]).is_err() {
                return err(protocol::STATUS_DEVICE_ERROR);
            }
            done += k;
        }
        Ok((ok, out_len))
    }
}

/// Answers a `GET_MODEL` request whose header `req` was read: checks, in
/// order, the request's layout (`MALFORMED`), a model (`NO_MODEL`), the
/// generation (`MODEL_CHANGED`), the range (`BAD_RANGE`) and the room for
/// the answer (`NO_SPACE`), then writes the chunk header and the bytes after
/// the response header, all from `served`, and returns the header and the
/// bytes written after it.
fn model_chunk(
    served: &Served,
    segs: &Segments,
    mem: &GuestMemory,
    req: &RequestHeader,
) -> (ResponseHeader, usize) {
    let err = |status| (error(served, req.id, status), 0);
    let mut mb = [0u8; ModelRequest::SIZE];
    if segs.readable_len() != RequestHeader::SIZE + ModelRequest::SIZE
        || segs.read_at(mem, RequestHeader::SIZE, &mut mb).is_err()
    {
        return err(protocol::STATUS_MALFORMED);
    }
    let m = ModelRequest::from_bytes(&mb);
    if req.num_samples != 0 || req.in_dim != 0 || m.reserved != 0 {
        return err(protocol::STATUS_MALFORMED);
    }
    if served.model.is_none() {
        return err(protocol::STATUS_NO_MODEL);
    }
    if m.generation != 0 && m.generation != served.generation {
        return err(protocol::STATUS_MODEL_CHANGED);
    }
    let file = served.file();
    let offset = m.offset as usize;
    if offset > file.len() || m.length == 0 || m.length > protocol::MAX_MODEL_CHUNK {
        return err(protocol::STATUS_BAD_RANGE);
    }
    // offset <= len and length <= MAX_MODEL_CHUNK: no overflow, in bounds.
    let n = (m.length as usize).min(file.len() - offset);
    let Some(bytes) = file.get(offset..offset + n) else {
        return err(protocol::STATUS_BAD_RANGE);
    };
    let payload = ModelChunk::SIZE + n;
    if segs.writable_len() < ResponseHeader::SIZE + payload {
        return err(protocol::STATUS_NO_SPACE);
    }
    let chunk = ModelChunk {
        model_size: served.file_size(),
        model_crc32c: served.file_crc32c(),
        offset: m.offset,
        length: n as u32,
    };
    let at = ResponseHeader::SIZE;
    if segs.write_at(mem, at, &chunk.to_bytes()).is_err()
        || segs.write_at(mem, at + ModelChunk::SIZE, bytes).is_err()
    {
        return err(protocol::STATUS_DEVICE_ERROR);
    }
    let ok = ResponseHeader {
        status: protocol::STATUS_OK,
        generation: served.generation,
        id: req.id,
        num_samples: 0,
        out_dim: 0,
    };
    (ok, payload)
}

fn error(served: &Served, id: u64, status: u32) -> ResponseHeader {
    ResponseHeader {
        status,
        generation: served.generation,
        id,
        num_samples: 0,
        out_dim: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nn_core::fixed::ONE;
    use nn_core::{Activation, Layer, Mlp};
    use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::QueueOwnedT;
    use vm_memory::{Bytes, GuestAddress};

    const REQ: u64 = 0x10_0000;
    const RESP: u64 = 0x20_0000;

    fn device() -> NnDevice {
        crate::testing::small_device("t")
    }

    fn request(opcode: u32, n: u32, in_dim: u32, inputs: &[i32]) -> Vec<u8> {
        let h = RequestHeader {
            opcode,
            flags: 0,
            id: 42,
            num_samples: n,
            in_dim,
        };
        let mut b = h.to_bytes().to_vec();
        let mut v = vec![0u8; inputs.len() * 4];
        protocol::encode_values(inputs, &mut v);
        b.extend(v);
        b
    }

    /// Runs one chain made of `descs` (addr, len, writable) over guest memory
    /// holding `req` at REQ; returns the outcome and the response bytes.
    fn run(dev: &NnDevice, req: &[u8], descs: &[(u64, u32, bool)]) -> (Outcome, Vec<u8>) {
        let mem = GuestMemoryAtomic::new(
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap(),
        );
        let m = mem.memory();
        m.write_slice(req, GuestAddress(REQ)).unwrap();
        let raw: Vec<RawDescriptor> = descs
            .iter()
            .map(|&(a, l, w)| {
                let flags = if w { VRING_DESC_F_WRITE as u16 } else { 0 };
                RawDescriptor::from(SplitDescriptor::new(a, l, flags, 0))
            })
            .collect();
        let q = MockSplitQueue::new(&*m, 16);
        q.build_desc_chain(&raw).unwrap();
        let mut queue: virtio_queue::Queue = q.create_queue().unwrap();
        let chain = queue.iter(m.clone()).unwrap().next().unwrap();
        let out = dev.process_chain(chain, &m, &mut Buffers::default());
        let mut resp = vec![0u8; out.used_len as usize];
        m.read_slice(&mut resp, GuestAddress(RESP)).unwrap();
        (out, resp)
    }

    fn header(resp: &[u8]) -> ResponseHeader {
        ResponseHeader::from_bytes(resp[..ResponseHeader::SIZE].try_into().unwrap())
    }

    #[test]
    fn predict_batch_matches_reference() {
        let dev = device();
        let inputs = [ONE, 2 * ONE, 3 * ONE, -ONE, 0, 5 * ONE];
        let req = request(OP_PREDICT, 2, 3, &inputs);
        let (out, resp) = run(
            &dev,
            &req,
            &[(REQ, req.len() as u32, false), (RESP, 24 + 16, true)],
        );
        assert_eq!(out.status, Some(protocol::STATUS_OK));
        assert_eq!(out.used_len, 40);
        let h = header(&resp);
        assert_eq!(
            (h.id, h.num_samples, h.out_dim, h.generation),
            (42, 2, 2, 1)
        );
        let mut got = [0i32; 4];
        protocol::decode_values(&resp[24..], &mut got);
        let served = dev.current();
        let mlp = &served.model.as_ref().unwrap().mlp;
        let mut want = mlp.predict(&inputs[..3]).unwrap();
        want.extend(mlp.predict(&inputs[3..]).unwrap());
        assert_eq!(got.to_vec(), want);
    }

    #[test]
    fn split_descriptors_are_gathered() {
        let dev = device();
        let req = request(OP_PREDICT, 1, 3, &[ONE, ONE, ONE]);
        // Header split mid-field, outputs split too.
        let (out, resp) = run(
            &dev,
            &req,
            &[
                (REQ, 5, false),
                (REQ + 5, 20, false),
                (REQ + 25, req.len() as u32 - 25, false),
                (RESP, 10, true),
                (RESP + 10, 22, true),
            ],
        );
        assert_eq!(out.status, Some(protocol::STATUS_OK));
        assert_eq!(header(&resp).out_dim, 2);
    }

    #[test]
    fn bad_requests_get_their_status() {
        let dev = device();
        let good = |r: &[u8]| vec![(REQ, r.len() as u32, false), (RESP, 64, true)];
        let cases: Vec<(Vec<u8>, u32)> = vec![
            (
                request(OP_PREDICT, 1, 3, &[1, 2, 3])[..20].to_vec(),
                protocol::STATUS_MALFORMED,
            ),
            (request(99, 1, 3, &[1, 2, 3]), protocol::STATUS_UNSUPPORTED),
            (
                request(OP_PREDICT, 1, 4, &[1, 2, 3, 4]),
                protocol::STATUS_BAD_DIMS,
            ),
            (request(OP_PREDICT, 0, 3, &[]), protocol::STATUS_BAD_BATCH),
            (
                request(OP_PREDICT, MAX_BATCH + 1, 3, &[1, 2, 3]),
                protocol::STATUS_BAD_BATCH,
            ),
            (
                request(OP_PREDICT, 2, 3, &[1, 2, 3]),
                protocol::STATUS_MALFORMED,
            ),
            (
                request(OP_PREDICT, 1, 3, &[1, 2, 3, 4]),
                protocol::STATUS_MALFORMED,
            ),
        ];
        for (req, want) in cases {
            let (out, resp) = run(&dev, &req, &good(&req));
            assert_eq!(out.status, Some(want), "{}", protocol::status_name(want));
            assert_eq!(out.used_len, 24);
            assert_eq!(header(&resp).status, want);
        }
        let mut flagged = request(OP_PREDICT, 1, 3, &[1, 2, 3]);
        flagged[4] = 1;
        assert_eq!(
            run(&dev, &flagged, &good(&flagged)).0.status,
            Some(protocol::STATUS_UNSUPPORTED)
        );
    }

    #[test]
    fn small_or_missing_response_buffers() {
        let dev = device();
        let req = request(OP_PREDICT, 1, 3, &[1, 2, 3]);
        let r = (REQ, req.len() as u32, false);
        // Room for the header only: NO_SPACE in the header.
        let (out, resp) = run(&dev, &req, &[r, (RESP, 24, true)]);
        assert_eq!(out.status, Some(protocol::STATUS_NO_SPACE));
        assert_eq!(header(&resp).id, 42);
        // No room for a header, or no writable part: nothing written, no panic.
        assert_eq!(run(&dev, &req, &[r, (RESP, 23, true)]).0.used_len, 0);
        assert_eq!(run(&dev, &req, &[r]).0, Outcome::DROPPED);
        // Readable part outside guest memory: a device error, still answered.
        let (out, _) = run(&dev, &req, &[(0x4000_0000, 40, false), (RESP, 64, true)]);
        assert_eq!(out.status, Some(protocol::STATUS_DEVICE_ERROR));
        // Writable part outside guest memory: nothing can be written.
        assert_eq!(
            run(&dev, &req, &[r, (0x4000_0000, 64, true)]).0.status,
            None
        );
    }

    #[test]
    fn null_request_has_no_outputs() {
        let dev = device();
        let req = request(OP_NULL, 2, 3, &[0; 6]);
        let (out, resp) = run(
            &dev,
            &req,
            &[(REQ, req.len() as u32, false), (RESP, 64, true)],
        );
        assert_eq!(
            out,
            Outcome {
                used_len: 24,
                status: Some(protocol::STATUS_OK),
                samples: 2
            }
        );
        assert_eq!((header(&resp).num_samples, header(&resp).out_dim), (2, 0));
    }

    #[test]
    fn swap_bumps_the_generation_and_changes_dims() {
        let dev = device();
        let old = dev.current();
        let l = Layer::new(5, 1, vec![ONE; 5], vec![0], Activation::Identity).unwrap();
        let g = dev.swap(Model::new(Mlp::new(vec![l]).unwrap(), "new"), "new".into());
        assert_eq!(g, 2);
        assert_eq!(
            dev.changed().read().unwrap(),
            1,
            "swap signals the event queue"
        );
        let c = dev.config();
        assert_eq!(
            (c.generation, c.num_layers, c.dims[0], c.dims[1]),
            (2, 1, 5, 1)
        );
        // A request that already holds the old model still sees it.
        assert_eq!(
            (old.generation, old.model.as_ref().unwrap().mlp.input_dim()),
            (1, 3)
        );
        let req = request(OP_PREDICT, 1, 5, &[ONE; 5]);
        let (out, resp) = run(
            &dev,
            &req,
            &[(REQ, req.len() as u32, false), (RESP, 64, true)],
        );
        assert_eq!(out.status, Some(protocol::STATUS_OK));
        assert_eq!(header(&resp).generation, 2);
        let mut y = [0i32; 1];
        protocol::decode_values(&resp[24..28], &mut y);
        assert_eq!(y[0], 5 * ONE);
    }

    /// A model of dims `[w, w]` with weights from `seed` (no ReLU).
    fn square_model(w: usize, seed: i32) -> Model {
        let weights = (0..w * w)
            .map(|i| (i as i32).wrapping_mul(seed) % ONE)
            .collect();
        let l = Layer::new(w, w, weights, vec![seed; w], Activation::Identity).unwrap();
        Model::new(Mlp::new(vec![l]).unwrap(), "square")
    }

    #[test]
    fn a_large_request_is_served_in_bounded_blocks_and_capped_by_cost() {
        const W: usize = 1024;
        let dev = NnDevice::new(square_model(W, 7919), "sq".into(), 1).unwrap();
        let max = dev.config().max_batch;
        assert_eq!(max, protocol::max_batch_for(&[W, W]));
        assert_eq!(block_samples(&[W, W]), 1, "one sample is a block here");
        let n = 3;
        let inputs: Vec<i32> = (0..n * W as i32).map(|i| (i % 977) * 64 - 30_000).collect();
        let req = request(OP_PREDICT, n as u32, W as u32, &inputs);
        let mem = GuestMemoryAtomic::new(
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap(),
        );
        let m = mem.memory();
        m.write_slice(&req, GuestAddress(REQ)).unwrap();
        let out_len = 24 + n as usize * W * 4;
        let descs = [
            RawDescriptor::from(SplitDescriptor::new(REQ, req.len() as u32, 0, 0)),
            RawDescriptor::from(SplitDescriptor::new(
                RESP,
                out_len as u32,
                VRING_DESC_F_WRITE as u16,
                0,
            )),
        ];
        let q = MockSplitQueue::new(&*m, 16);
        q.build_desc_chain(&descs).unwrap();
        let mut queue: virtio_queue::Queue = q.create_queue().unwrap();
        let chain = queue.iter(m.clone()).unwrap().next().unwrap();
        let mut buf = Buffers::default();
        let blocks = std::cell::Cell::new(0);
        let out = dev
            .process_chain_until(chain, &m, &mut buf, 16, &|| {
                blocks.set(blocks.get() + 1);
                false
            })
            .unwrap();
        assert_eq!(out.status, Some(protocol::STATUS_OK));
        assert_eq!(out.used_len as usize, out_len);
        assert_eq!(blocks.get(), n as usize, "a stop check before every block");
        // Bounded by one block (one sample), not by the request.
        assert!(
            buf.work.bytes.capacity() <= 2 * W * 4,
            "{}",
            buf.work.bytes.capacity()
        );
        assert!(
            buf.work.inputs.capacity() <= 2 * W,
            "{}",
            buf.work.inputs.capacity()
        );
        let mut got = vec![0i32; n as usize * W];
        let mut resp = vec![0u8; got.len() * 4];
        m.read_slice(&mut resp, GuestAddress(RESP + 24)).unwrap();
        protocol::decode_values(&resp, &mut got);
        let served = dev.current();
        let mlp = &served.model.as_ref().unwrap().mlp;
        let want: Vec<i32> = inputs
            .chunks(W)
            .flat_map(|x| mlp.predict(x).unwrap())
            .collect();
        assert_eq!(got, want);
        // Above the cost cap: BAD_BATCH, whatever MAX_BATCH allows.
        let big = request(OP_PREDICT, max + 1, W as u32, &[]);
        let (out, _) = run(&dev, &big[..24], &[(REQ, 24, false), (RESP, 64, true)]);
        assert_eq!(out.status, Some(protocol::STATUS_BAD_BATCH));
    }

    #[test]
    fn a_stop_abandons_a_request_between_blocks() {
        const W: usize = 1024;
        let dev = NnDevice::new(square_model(W, 3), "sq".into(), 1).unwrap();
        let inputs = vec![1i32; 4 * W];
        let req = request(OP_PREDICT, 4, W as u32, &inputs);
        let mem = GuestMemoryAtomic::new(
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap(),
        );
        let m = mem.memory();
        m.write_slice(&req, GuestAddress(REQ)).unwrap();
        m.write_slice(&[0xaa; 64], GuestAddress(RESP)).unwrap();
        let descs = [
            RawDescriptor::from(SplitDescriptor::new(REQ, req.len() as u32, 0, 0)),
            RawDescriptor::from(SplitDescriptor::new(
                RESP,
                24 + 4 * W as u32 * 4,
                VRING_DESC_F_WRITE as u16,
                0,
            )),
        ];
        let q = MockSplitQueue::new(&*m, 16);
        q.build_desc_chain(&descs).unwrap();
        let mut queue: virtio_queue::Queue = q.create_queue().unwrap();
        let chain = queue.iter(m.clone()).unwrap().next().unwrap();
        let checks = std::cell::Cell::new(0);
        let r = dev.process_chain_until(chain, &m, &mut Buffers::default(), 16, &|| {
            checks.set(checks.get() + 1);
            checks.get() > 2
        });
        assert_eq!(r, Err(Stopped));
        assert_eq!(checks.get(), 3);
        let mut head = [0u8; 24];
        m.read_slice(&mut head, GuestAddress(RESP)).unwrap();
        assert_eq!(
            head, [0xaa; 24],
            "no response header for an abandoned request"
        );
    }

    /// A `GET_MODEL` request: header (`num_samples`, `in_dim` 0) and body.
    fn get_model(generation: u32, offset: u32, length: u32) -> Vec<u8> {
        let h = RequestHeader {
            opcode: OP_GET_MODEL,
            flags: 0,
            id: 77,
            num_samples: 0,
            in_dim: 0,
        };
        let mut b = h.to_bytes().to_vec();
        b.extend(
            ModelRequest {
                generation,
                offset,
                length,
                reserved: 0,
            }
            .to_bytes(),
        );
        b
    }

    /// Sends one `GET_MODEL` with room for `room` bytes after the two
    /// headers; returns the status, the header's generation, the chunk
    /// header (on success) and the bytes.
    fn chunk(dev: &NnDevice, req: &[u8], room: u32) -> (u32, u32, Option<ModelChunk>, Vec<u8>) {
        let total = (ResponseHeader::SIZE + ModelChunk::SIZE) as u32 + room;
        let (out, resp) = run(
            dev,
            req,
            &[(REQ, req.len() as u32, false), (RESP, total, true)],
        );
        let h = header(&resp);
        assert_eq!(out.status, Some(h.status));
        assert_eq!(h.id, 77);
        if h.status != protocol::STATUS_OK {
            assert_eq!(
                out.used_len as usize,
                ResponseHeader::SIZE,
                "errors: header only"
            );
            return (h.status, h.generation, None, Vec::new());
        }
        let c = ModelChunk::from_bytes(resp[24..40].try_into().unwrap());
        assert_eq!(out.used_len as usize, 40 + c.length as usize);
        (h.status, h.generation, Some(c), resp[40..].to_vec())
    }

    /// Reads the whole served file in chunks of `step` bytes, naming the
    /// generation of the first answer in every later request.
    fn read_model(dev: &NnDevice, step: u32) -> (u32, ModelChunk, Vec<u8>) {
        let (status, generation, first, mut bytes) = chunk(dev, &get_model(0, 0, step), step);
        assert_eq!(status, protocol::STATUS_OK);
        let first = first.unwrap();
        while bytes.len() < first.model_size as usize {
            let at = bytes.len() as u32;
            let (status, g, c, more) = chunk(dev, &get_model(generation, at, step), step);
            assert_eq!((status, g), (protocol::STATUS_OK, generation));
            let c = c.unwrap();
            assert_eq!(
                (c.model_size, c.model_crc32c, c.offset),
                (first.model_size, first.model_crc32c, at)
            );
            assert!(!more.is_empty(), "no progress at {at}");
            bytes.extend(more);
        }
        (generation, first, bytes)
    }

    #[test]
    fn get_model_reads_the_served_file_in_chunks() {
        let dev = device();
        let model = crate::testing::small_model("t");
        let want = model.to_bytes();
        for step in [1, 7, 64, protocol::MAX_MODEL_CHUNK] {
            let (generation, _, bytes) = read_model(&dev, step);
            assert_eq!(generation, 1);
            assert_eq!(bytes, want, "chunks of {step}");
        }
        // Config space names the same file, and its CRC is the bytes'.
        let c = dev.config();
        assert_eq!(c.model_size as usize, want.len());
        assert_eq!(c.model_crc32c, nn_core::model::crc32c(&want));
        let (_, first, bytes) = read_model(&dev, 100);
        assert_eq!(
            (first.model_size, first.model_crc32c),
            (c.model_size, c.model_crc32c)
        );
        // The guest's reader takes it, and runs it with the engine's bits.
        let view = nn_core::model_view::parse(&bytes, nn_core::model::crc32c).unwrap();
        let x = [ONE, -2 * ONE, 3 * ONE];
        let (mut a, mut b, mut y) = ([0; 8], [0; 8], [0; 2]);
        nn_core::reference::forward_into(view.layers(), &x, &mut a, &mut b, &mut y).unwrap();
        assert_eq!(y.to_vec(), model.mlp.predict(&x).unwrap());
        // The end of the file: 0 bytes at its size, a short last chunk.
        let size = c.model_size;
        let (status, _, ch, rest) = chunk(&dev, &get_model(1, size, 16), 16);
        assert_eq!(
            (status, ch.unwrap().length, rest.len()),
            (protocol::STATUS_OK, 0, 0)
        );
        let (_, _, ch, rest) = chunk(&dev, &get_model(1, size - 3, 16), 16);
        assert_eq!(
            (ch.unwrap().length, rest),
            (3, want[want.len() - 3..].to_vec())
        );
    }

    #[test]
    fn bad_get_model_requests_get_their_status() {
        let dev = device();
        let size = dev.config().model_size;
        let mut extra = get_model(0, 0, 8);
        extra.push(0);
        let mut samples = get_model(0, 0, 8);
        samples[16] = 1;
        let mut reserved = get_model(0, 0, 8);
        reserved[24 + 12] = 1;
        let mut flagged = get_model(0, 0, 8);
        flagged[4] = 1;
        let cases: Vec<(Vec<u8>, u32)> = vec![
            (
                get_model(0, 0, 8)[..24].to_vec(),
                protocol::STATUS_MALFORMED,
            ),
            (
                get_model(0, 0, 8)[..39].to_vec(),
                protocol::STATUS_MALFORMED,
            ),
            (extra, protocol::STATUS_MALFORMED),
            (samples, protocol::STATUS_MALFORMED),
            (reserved, protocol::STATUS_MALFORMED),
            (flagged, protocol::STATUS_UNSUPPORTED),
            (get_model(2, 0, 8), protocol::STATUS_MODEL_CHANGED),
            (get_model(1, size + 1, 8), protocol::STATUS_BAD_RANGE),
            (get_model(1, u32::MAX, 8), protocol::STATUS_BAD_RANGE),
            (get_model(1, 0, 0), protocol::STATUS_BAD_RANGE),
            (
                get_model(1, 0, protocol::MAX_MODEL_CHUNK + 1),
                protocol::STATUS_BAD_RANGE,
            ),
            (get_model(0, 0, u32::MAX), protocol::STATUS_BAD_RANGE),
        ];
        for (req, want) in cases {
            let (status, generation, _, _) = chunk(&dev, &req, 64);
            assert_eq!(
                (status, generation),
                (want, 1),
                "{}",
                protocol::status_name(want)
            );
        }
        // Room for less than the chunk: NO_SPACE, nothing else written.
        let (status, ..) = chunk(&dev, &get_model(0, 0, 65), 64);
        assert_eq!(status, protocol::STATUS_NO_SPACE);
        let (status, ..) = chunk(&dev, &get_model(0, size - 64, 65), 64);
        assert_eq!(status, protocol::STATUS_OK, "64 bytes are left: they fit");
        // No model: NO_MODEL, generation 0, and config space says size 0.
        let empty = NnDevice::without_model(1).unwrap();
        assert_eq!(
            chunk(&empty, &get_model(0, 0, 8), 8).0,
            protocol::STATUS_NO_MODEL
        );
        let c = empty.config();
        assert_eq!((c.model_size, c.model_crc32c, c.generation), (0, 0, 0));
    }

    #[test]
    fn a_swap_between_chunks_is_seen_and_config_changes_with_it() {
        let dev = device();
        let (status, g1, first, part) = chunk(&dev, &get_model(0, 0, 32), 32);
        assert_eq!((status, g1), (protocol::STATUS_OK, 1));
        let old = dev.config();
        let l = Layer::new(5, 1, vec![ONE; 5], vec![0], Activation::Identity).unwrap();
        let new = Model::new(Mlp::new(vec![l]).unwrap(), "new");
        assert_eq!(dev.swap(new.clone(), "new".into()), 2);
        // The next chunk of generation 1 is refused and names generation 2.
        let (status, g, ..) = chunk(&dev, &get_model(g1, 32, 32), 32);
        assert_eq!((status, g), (protocol::STATUS_MODEL_CHANGED, 2));
        // Generation, size and CRC changed together in config space.
        let c = dev.config();
        let want = new.to_bytes();
        assert_eq!(c.generation, 2);
        assert_eq!(c.model_size as usize, want.len());
        assert_eq!(c.model_crc32c, nn_core::model::crc32c(&want));
        assert_ne!(
            (c.model_size, c.model_crc32c),
            (old.model_size, old.model_crc32c)
        );
        assert_eq!(
            (first.unwrap().model_size, first.unwrap().model_crc32c),
            (old.model_size, old.model_crc32c)
        );
        assert_eq!(part, crate::testing::small_model("t").to_bytes()[..32]);
        // Starting again reads the new file whole.
        let (g, _, bytes) = read_model(&dev, 40);
        assert_eq!((g, bytes), (2, want));
    }

    #[test]
    fn config_space_describes_the_model() {
        let dev = device();
        let c = DeviceConfig::from_bytes(&dev.config().to_bytes());
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(
            (c.num_layers, c.dims[0], c.dims[1], c.dims[2]),
            (2, 3, 2, 2)
        );
        assert_eq!(dev.read_config(8, 4), 1u32.to_le_bytes().to_vec());
        assert!(dev.read_config(CONFIG_SIZE as u32 - 4, 8).is_empty());
        assert_eq!(dev.read_config(0, CONFIG_SIZE as u32).len(), CONFIG_SIZE);
        let size = dev.read_config(protocol::cfg::MODEL_SIZE as u32, 4);
        assert_eq!(
            size,
            (crate::testing::small_model("t").to_bytes().len() as u32)
                .to_le_bytes()
                .to_vec()
        );
        assert!(dev.read_config(u32::MAX, 4).is_empty());
    }
}
