// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The virtio-nn device protocol: the one definition of the wire format.
//!
//! This file is used by every side of the device: the vhost-user daemon and
//! the host tests through `nn_core::protocol`, and the guest kernel module,
//! which includes this very file with `#[path = ...] mod protocol;`. It must
//! therefore depend on nothing but `core`: no allocation, no `std`, no other
//! module of this crate, no `unsafe`.
//!
//! The prose specification, with pictures of every layout, is
//! `nn-core/PROTOCOL.md`. In short, all fields are little-endian:
//!
//! * The device is a virtio device with id [`VIRTIO_ID_NN`], exposed by QEMU's
//!   `vhost-user-test-device-pci`.
//! * Config space ([`CONFIG_SIZE`] bytes, read-only) holds a magic, the protocol
//!   version, the model generation, the device status, the layer dims and the
//!   limits. Multi-field reads are made consistent with the generation: read
//!   it, read the fields, read it again and retry if it changed.
//! * Each request is one descriptor chain: a device-readable part holding a
//!   [`RequestHeader`] followed by `num_samples * in_dim` Q16.16 inputs, then a
//!   device-writable part with room for a [`ResponseHeader`] followed by
//!   `num_samples * out_dim` Q16.16 outputs. Either part may be split over any
//!   number of descriptors.
//! * A [`OP_GET_MODEL`] request reads a chunk of the served model file (the
//!   canonical form `nn-core`'s `model_view` reads), of the generation the
//!   driver names in its [`ModelRequest`]; config space carries the file's
//!   size and CRC-32C, which change together with the generation.
//! * Queue `num_req_queues` (after the request queues) is the event queue:
//!   the driver posts device-writable buffers of [`Event::SIZE`] bytes and
//!   the device returns one, filled with an [`Event`], when the model
//!   generation or the device status changes (the rust-vmm crates cannot send
//!   a config-change interrupt, so this replaces it).

/// Virtio device id of the device. Linux assigns 38 to the "parameter server"
/// device, which no Linux driver claims and QEMU accepts; virtio-nn borrows it.
pub const VIRTIO_ID_NN: u32 = 38;

/// `"VNN1"` as a little-endian `u32`: the first config-space field.
pub const CONFIG_MAGIC: u32 = u32::from_le_bytes(*b"VNN1");

/// Version of this protocol, in config space at [`cfg::VERSION`].
pub const PROTOCOL_VERSION: u32 = 1;

/// Number of fractional bits of the Q16.16 values on the wire.
pub const FRAC_BITS: u32 = 16;

/// Most dense layers a model on the wire may have (the config space has room
/// for `MAX_LAYERS + 1` dims).
pub const MAX_LAYERS: usize = 7;

/// Largest width of any layer (inputs, hidden or outputs).
pub const MAX_DIM: u32 = 4096;

/// Most samples one request may carry, whatever the model.
pub const MAX_BATCH: u32 = 4096;

/// Most multiply-accumulates one request may cost (`num_samples` times the
/// model's [`macs_per_sample`]): about 0.1 s of one host core at worst. It
/// makes the config space's `max_batch` model-dependent ([`max_batch_for`]),
/// so that no single request can keep a queue's worker busy for long. Every
/// model within [`MAX_LAYERS`] and [`MAX_DIM`] has room for one sample.
pub const MAX_REQUEST_MACS: u64 = 1 << 27;

/// Multiply-accumulates of one sample through a model of layer widths `dims`
/// (`dims[0]` the input width): the sum of `in * out` over its layers.
pub fn macs_per_sample(dims: &[usize]) -> u64 {
    dims.windows(2)
        .map(|w| (w[0] as u64).saturating_mul(w[1] as u64))
        .fold(0u64, u64::saturating_add)
}

/// The `max_batch` a device serving a model of layer widths `dims` shows in
/// config space: [`MAX_BATCH`], or fewer samples when that many would cost
/// more than [`MAX_REQUEST_MACS`]; never below 1.
pub fn max_batch_for(dims: &[usize]) -> u32 {
    let per_sample = macs_per_sample(dims).max(1);
    let fit = MAX_REQUEST_MACS / per_sample;
    u32::try_from(fit).unwrap_or(u32::MAX).clamp(1, MAX_BATCH)
}

/// Size in bytes of the config space: the one definition. QEMU's
/// `config_size` (scripts/qemu.sh's default, checked against this by
/// nn-core's tests/interfaces.rs) must be this: a smaller one hides the
/// fields past it from the driver, a larger one makes QEMU's config reads
/// fail (the device answers no bytes beyond this size).
///
/// Compatibility: fields are only ever appended (a driver reads each field
/// at its offset in [`cfg`], so a driver that knows fewer fields works with
/// a device that has more); an existing offset never changes meaning. A
/// read past the config space QEMU was given returns all ones, so a driver
/// treats a `model_size` of `u32::MAX` as "no model file".
pub const CONFIG_SIZE: usize = 72;

/// Byte offsets of the config-space fields; every field is a `u32` (le32).
pub mod cfg {
    /// [`super::CONFIG_MAGIC`].
    pub const MAGIC: usize = 0;
    /// [`super::PROTOCOL_VERSION`].
    pub const VERSION: usize = 4;
    /// Model generation: starts at 1 and grows by one at every model change.
    pub const GENERATION: usize = 8;
    /// Device status, one of the `super::DEVICE_STATUS_*` values.
    pub const STATUS: usize = 12;
    /// Number of dense layers of the model, `1..=MAX_LAYERS`.
    pub const NUM_LAYERS: usize = 16;
    /// Most samples the device accepts in one request.
    pub const MAX_BATCH: usize = 20;
    /// Number of request queues the device serves (queues `0..n`).
    pub const NUM_REQ_QUEUES: usize = 24;
    /// Reserved, reads as zero.
    pub const RESERVED: usize = 28;
    /// `dims[i]`, `i in 0..=NUM_LAYERS`, at `DIMS + 4 * i`: `dims[0]` is the
    /// input width, `dims[NUM_LAYERS]` the output width. Unused slots are 0.
    pub const DIMS: usize = 32;
    /// Size in bytes of the model file [`super::OP_GET_MODEL`] serves for
    /// this generation (0 without a model).
    pub const MODEL_SIZE: usize = 64;
    /// CRC-32C (Castagnoli) of that whole file (0 without a model).
    pub const MODEL_CRC32C: usize = 68;
}

/// Device status: a model is loaded and requests are served.
pub const DEVICE_STATUS_READY: u32 = 0;
/// Device status: no model is loaded; requests get [`STATUS_NO_MODEL`].
pub const DEVICE_STATUS_NO_MODEL: u32 = 1;
/// Device status: the device is failing (health check failed).
pub const DEVICE_STATUS_ERROR: u32 = 2;

/// Event: the config space changed (new generation or status); re-read it.
pub const EVENT_CONFIG_CHANGED: u32 = 1;

/// What the device writes into an event-queue buffer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// [`EVENT_CONFIG_CHANGED`].
    pub kind: u32,
    /// The generation in config space when the event was sent.
    pub generation: u32,
    /// The device status when the event was sent.
    pub status: u32,
    /// Reserved, 0.
    pub reserved: u32,
}

impl Event {
    /// Encoded size in bytes.
    pub const SIZE: usize = 16;

    /// Decodes an event.
    pub fn from_bytes(b: &[u8; Self::SIZE]) -> Self {
        Self {
            kind: le32(b, 0),
            generation: le32(b, 4),
            status: le32(b, 8),
            reserved: le32(b, 12),
        }
    }

    /// Encodes an event.
    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        put32(&mut b, 0, self.kind);
        put32(&mut b, 4, self.generation);
        put32(&mut b, 8, self.status);
        put32(&mut b, 12, self.reserved);
        b
    }
}

/// Opcode: run the model on every sample of the request.
pub const OP_PREDICT: u32 = 1;
/// Opcode: the same path as [`OP_PREDICT`] without inference; the response
/// carries the header only (`out_dim` 0). For measuring the transport.
pub const OP_NULL: u32 = 2;

/// Opcode: read a chunk of the served model file. The readable part is a
/// [`RequestHeader`] (`num_samples` and `in_dim` 0) then a [`ModelRequest`];
/// on success the writable part receives the [`ResponseHeader`], a
/// [`ModelChunk`] and the chunk's bytes.
pub const OP_GET_MODEL: u32 = 3;

/// Most bytes one [`OP_GET_MODEL`] request may ask for.
pub const MAX_MODEL_CHUNK: u32 = 256 * 1024;

/// Response status: success.
pub const STATUS_OK: u32 = 0;
/// The readable part is shorter than a header, or its length does not match
/// the header's `num_samples * in_dim`.
pub const STATUS_MALFORMED: u32 = 1;
/// Unknown opcode, or non-zero flags.
pub const STATUS_UNSUPPORTED: u32 = 2;
/// `in_dim` is not the input width of the current model.
pub const STATUS_BAD_DIMS: u32 = 3;
/// `num_samples` is 0 or above the device's max batch.
pub const STATUS_BAD_BATCH: u32 = 4;
/// The writable part cannot hold the outputs (the header was written).
pub const STATUS_NO_SPACE: u32 = 5;
/// No model is loaded.
pub const STATUS_NO_MODEL: u32 = 6;
/// The device could not access the request's memory or failed internally.
pub const STATUS_DEVICE_ERROR: u32 = 7;
/// [`OP_GET_MODEL`]: the request names a generation that is no longer
/// served (the response header carries the current one); start again.
pub const STATUS_MODEL_CHANGED: u32 = 8;
/// [`OP_GET_MODEL`]: `offset` beyond the file, or `length` 0 or above
/// [`MAX_MODEL_CHUNK`].
pub const STATUS_BAD_RANGE: u32 = 9;
/// The highest status code this protocol defines.
pub const STATUS_MAX: u32 = STATUS_BAD_RANGE;

/// A short name for a response status, for logs and error messages.
pub const fn status_name(status: u32) -> &'static str {
    match status {
        STATUS_OK => "ok",
        STATUS_MALFORMED => "malformed request",
        STATUS_UNSUPPORTED => "unsupported opcode or flags",
        STATUS_BAD_DIMS => "input width does not match the model",
        STATUS_BAD_BATCH => "bad sample count",
        STATUS_NO_SPACE => "response buffer too small",
        STATUS_NO_MODEL => "no model loaded",
        STATUS_DEVICE_ERROR => "device error",
        STATUS_MODEL_CHANGED => "model changed",
        STATUS_BAD_RANGE => "bad model range",
        _ => "unknown status",
    }
}

/// A short identifier for a response status, for metrics labels and JSON.
pub const fn status_label(status: u32) -> &'static str {
    match status {
        STATUS_OK => "ok",
        STATUS_MALFORMED => "malformed",
        STATUS_UNSUPPORTED => "unsupported",
        STATUS_BAD_DIMS => "bad_dims",
        STATUS_BAD_BATCH => "bad_batch",
        STATUS_NO_SPACE => "no_space",
        STATUS_NO_MODEL => "no_model",
        STATUS_DEVICE_ERROR => "device_error",
        STATUS_MODEL_CHANGED => "model_changed",
        STATUS_BAD_RANGE => "bad_range",
        _ => "unknown",
    }
}

fn le32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

fn le64(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(a)
}

fn put32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

/// The first bytes of the device-readable part of a request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RequestHeader {
    /// [`OP_PREDICT`] or [`OP_NULL`].
    pub opcode: u32,
    /// Must be 0 in this version.
    pub flags: u32,
    /// Chosen by the driver, echoed in the response.
    pub id: u64,
    /// Samples in this request, `1..=max_batch`.
    pub num_samples: u32,
    /// Width of each sample; must equal the model's input width.
    pub in_dim: u32,
}

impl RequestHeader {
    /// Encoded size in bytes.
    pub const SIZE: usize = 24;

    /// Decodes a header.
    pub fn from_bytes(b: &[u8; Self::SIZE]) -> Self {
        Self {
            opcode: le32(b, 0),
            flags: le32(b, 4),
            id: le64(b, 8),
            num_samples: le32(b, 16),
            in_dim: le32(b, 20),
        }
    }

    /// Encodes a header.
    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        put32(&mut b, 0, self.opcode);
        put32(&mut b, 4, self.flags);
        b[8..16].copy_from_slice(&self.id.to_le_bytes());
        put32(&mut b, 16, self.num_samples);
        put32(&mut b, 20, self.in_dim);
        b
    }

    /// Bytes of input values that must follow the header, or `None` on
    /// overflow.
    pub fn payload_len(&self) -> Option<usize> {
        (self.num_samples as usize)
            .checked_mul(self.in_dim as usize)?
            .checked_mul(4)
    }
}

/// The first bytes of the device-writable part of a request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResponseHeader {
    /// One of the `STATUS_*` values.
    pub status: u32,
    /// Model generation that answered (the current one for errors).
    pub generation: u32,
    /// The request's id (0 when the request header could not be read).
    pub id: u64,
    /// Samples answered: the request's count on success, else 0.
    pub num_samples: u32,
    /// Width of each answer (0 unless the status is [`STATUS_OK`] and the
    /// opcode [`OP_PREDICT`]).
    pub out_dim: u32,
}

impl ResponseHeader {
    /// Encoded size in bytes.
    pub const SIZE: usize = 24;

    /// Decodes a header.
    pub fn from_bytes(b: &[u8; Self::SIZE]) -> Self {
        Self {
            status: le32(b, 0),
            generation: le32(b, 4),
            id: le64(b, 8),
            num_samples: le32(b, 16),
            out_dim: le32(b, 20),
        }
    }

    /// Encodes a header.
    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        put32(&mut b, 0, self.status);
        put32(&mut b, 4, self.generation);
        b[8..16].copy_from_slice(&self.id.to_le_bytes());
        put32(&mut b, 16, self.num_samples);
        put32(&mut b, 20, self.out_dim);
        b
    }

    /// Bytes of output values that follow the header.
    pub fn payload_len(&self) -> usize {
        self.num_samples as usize * self.out_dim as usize * 4
    }
}

/// What follows the [`RequestHeader`] of an [`OP_GET_MODEL`] request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ModelRequest {
    /// The generation the driver is reading, or 0 for whichever is served
    /// now (the response names it). A non-zero generation that is no longer
    /// served is answered [`STATUS_MODEL_CHANGED`].
    pub generation: u32,
    /// First byte wanted, at most the file's size.
    pub offset: u32,
    /// Bytes wanted, `1..=MAX_MODEL_CHUNK`; fewer are sent at the end of
    /// the file.
    pub length: u32,
    /// Must be 0.
    pub reserved: u32,
}

impl ModelRequest {
    /// Encoded size in bytes.
    pub const SIZE: usize = 16;

    /// Decodes a model request.
    pub fn from_bytes(b: &[u8; Self::SIZE]) -> Self {
        Self {
            generation: le32(b, 0),
            offset: le32(b, 4),
            length: le32(b, 8),
            reserved: le32(b, 12),
        }
    }

    /// Encodes a model request.
    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        put32(&mut b, 0, self.generation);
        put32(&mut b, 4, self.offset);
        put32(&mut b, 8, self.length);
        put32(&mut b, 12, self.reserved);
        b
    }
}

/// What follows the [`ResponseHeader`] of a successful [`OP_GET_MODEL`]
/// response, before the chunk's bytes. All of it describes the file of the
/// header's generation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ModelChunk {
    /// Size of the whole file in bytes.
    pub model_size: u32,
    /// CRC-32C of the whole file.
    pub model_crc32c: u32,
    /// The request's offset.
    pub offset: u32,
    /// Bytes that follow: `min(length, model_size - offset)`.
    pub length: u32,
}

impl ModelChunk {
    /// Encoded size in bytes.
    pub const SIZE: usize = 16;

    /// Decodes a chunk header.
    pub fn from_bytes(b: &[u8; Self::SIZE]) -> Self {
        Self {
            model_size: le32(b, 0),
            model_crc32c: le32(b, 4),
            offset: le32(b, 8),
            length: le32(b, 12),
        }
    }

    /// Encodes a chunk header.
    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        put32(&mut b, 0, self.model_size);
        put32(&mut b, 4, self.model_crc32c);
        put32(&mut b, 8, self.offset);
        put32(&mut b, 12, self.length);
        b
    }
}

/// The config space, decoded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceConfig {
    /// [`CONFIG_MAGIC`] for a virtio-nn device.
    pub magic: u32,
    /// [`PROTOCOL_VERSION`] for this protocol.
    pub version: u32,
    /// Model generation.
    pub generation: u32,
    /// One of the `DEVICE_STATUS_*` values.
    pub status: u32,
    /// Number of dense layers.
    pub num_layers: u32,
    /// Most samples per request.
    pub max_batch: u32,
    /// Number of request queues.
    pub num_req_queues: u32,
    /// Layer widths, `dims[0]` the input width; `num_layers + 1` are used.
    pub dims: [u32; MAX_LAYERS + 1],
    /// Size of the model file [`OP_GET_MODEL`] serves (0: no model).
    pub model_size: u32,
    /// CRC-32C of that file (0: no model).
    pub model_crc32c: u32,
}

/// Why a config space is not one this protocol can use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigError {
    /// The magic is not [`CONFIG_MAGIC`].
    BadMagic(u32),
    /// The version is not [`PROTOCOL_VERSION`].
    BadVersion(u32),
    /// The layer count is 0 or above [`MAX_LAYERS`] while the status is ready.
    BadLayers(u32),
    /// A used dim is 0 or above [`MAX_DIM`].
    BadDim(u32),
    /// `max_batch` is 0 or above [`MAX_BATCH`].
    BadMaxBatch(u32),
}

impl DeviceConfig {
    /// Decodes the config space.
    pub fn from_bytes(b: &[u8; CONFIG_SIZE]) -> Self {
        let mut dims = [0u32; MAX_LAYERS + 1];
        for (i, d) in dims.iter_mut().enumerate() {
            *d = le32(b, cfg::DIMS + 4 * i);
        }
        Self {
            magic: le32(b, cfg::MAGIC),
            version: le32(b, cfg::VERSION),
            generation: le32(b, cfg::GENERATION),
            status: le32(b, cfg::STATUS),
            num_layers: le32(b, cfg::NUM_LAYERS),
            max_batch: le32(b, cfg::MAX_BATCH),
            num_req_queues: le32(b, cfg::NUM_REQ_QUEUES),
            dims,
            model_size: le32(b, cfg::MODEL_SIZE),
            model_crc32c: le32(b, cfg::MODEL_CRC32C),
        }
    }

    /// Encodes the config space.
    pub fn to_bytes(&self) -> [u8; CONFIG_SIZE] {
        let mut b = [0u8; CONFIG_SIZE];
        put32(&mut b, cfg::MAGIC, self.magic);
        put32(&mut b, cfg::VERSION, self.version);
        put32(&mut b, cfg::GENERATION, self.generation);
        put32(&mut b, cfg::STATUS, self.status);
        put32(&mut b, cfg::NUM_LAYERS, self.num_layers);
        put32(&mut b, cfg::MAX_BATCH, self.max_batch);
        put32(&mut b, cfg::NUM_REQ_QUEUES, self.num_req_queues);
        for (i, d) in self.dims.iter().enumerate() {
            put32(&mut b, cfg::DIMS + 4 * i, *d);
        }
        put32(&mut b, cfg::MODEL_SIZE, self.model_size);
        put32(&mut b, cfg::MODEL_CRC32C, self.model_crc32c);
        b
    }

    /// Checks what a driver relies on: magic, version and, when a model is
    /// loaded, the layer count and dims.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.magic != CONFIG_MAGIC {
            return Err(ConfigError::BadMagic(self.magic));
        }
        if self.version != PROTOCOL_VERSION {
            return Err(ConfigError::BadVersion(self.version));
        }
        if self.max_batch == 0 || self.max_batch > MAX_BATCH {
            return Err(ConfigError::BadMaxBatch(self.max_batch));
        }
        // No model, or a failing device that has none: no layers to check.
        if self.status == DEVICE_STATUS_NO_MODEL
            || (self.status == DEVICE_STATUS_ERROR && self.num_layers == 0)
        {
            return Ok(());
        }
        if self.num_layers == 0 || self.num_layers as usize > MAX_LAYERS {
            return Err(ConfigError::BadLayers(self.num_layers));
        }
        for &d in &self.dims[..=self.num_layers as usize] {
            if d == 0 || d > MAX_DIM {
                return Err(ConfigError::BadDim(d));
            }
        }
        Ok(())
    }

    /// Input width of the model.
    pub fn input_dim(&self) -> u32 {
        self.dims[0]
    }

    /// Output width of the model.
    pub fn output_dim(&self) -> u32 {
        self.dims[(self.num_layers as usize).min(MAX_LAYERS)]
    }
}

/// Encodes Q16.16 values as the little-endian bytes of a request or response.
pub fn encode_values(values: &[i32], out: &mut [u8]) {
    for (v, b) in values.iter().zip(out.chunks_exact_mut(4)) {
        b.copy_from_slice(&v.to_le_bytes());
    }
}

/// Decodes little-endian Q16.16 values.
pub fn decode_values(bytes: &[u8], out: &mut [i32]) {
    for (v, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
        *v = i32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_batch_follows_the_cost_of_a_sample() {
        assert_eq!(macs_per_sample(&[3, 2, 2]), 10);
        assert_eq!(max_batch_for(&[3, 2, 2]), MAX_BATCH);
        // 4096 * 4096 MACs a sample: 8 samples fit in 2^27.
        assert_eq!(max_batch_for(&[4096, 4096]), 8);
        let widest = [MAX_DIM as usize; MAX_LAYERS + 1];
        assert_eq!(macs_per_sample(&widest), 7 * (1 << 24));
        assert_eq!(max_batch_for(&widest), 1);
        assert!(macs_per_sample(&widest) <= MAX_REQUEST_MACS);
        assert_eq!(max_batch_for(&[]), MAX_BATCH);
    }

    #[test]
    fn headers_round_trip() {
        let r = RequestHeader {
            opcode: OP_PREDICT,
            flags: 0,
            id: 0x0102_0304_0506_0708,
            num_samples: 3,
            in_dim: 16,
        };
        let b = r.to_bytes();
        assert_eq!(&b[8..16], &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(RequestHeader::from_bytes(&b), r);
        assert_eq!(r.payload_len(), Some(3 * 16 * 4));
        let s = ResponseHeader {
            status: STATUS_BAD_DIMS,
            generation: 9,
            id: u64::MAX,
            num_samples: 0,
            out_dim: 0,
        };
        assert_eq!(ResponseHeader::from_bytes(&s.to_bytes()), s);
    }

    #[test]
    fn payload_len_overflow_is_none_not_a_wrap() {
        let r = RequestHeader {
            num_samples: u32::MAX,
            in_dim: u32::MAX,
            ..Default::default()
        };
        if usize::BITS == 64 {
            // 2^64 * 4 does not fit.
            assert_eq!(r.payload_len(), None);
        }
    }

    #[test]
    fn config_layout_and_validation() {
        let mut c = DeviceConfig {
            magic: CONFIG_MAGIC,
            version: PROTOCOL_VERSION,
            generation: 1,
            status: DEVICE_STATUS_READY,
            num_layers: 2,
            max_batch: MAX_BATCH,
            num_req_queues: 1,
            dims: [16, 32, 4, 0, 0, 0, 0, 0],
            model_size: 2808,
            model_crc32c: 0xdead_beef,
        };
        let b = c.to_bytes();
        assert_eq!(&b[0..4], b"VNN1");
        assert_eq!(le32(&b, cfg::DIMS + 8), 4);
        // Appended after the dims, the last field ending the config space.
        assert_eq!(cfg::MODEL_SIZE, cfg::DIMS + 4 * (MAX_LAYERS + 1));
        assert_eq!(le32(&b, cfg::MODEL_SIZE), 2808);
        assert_eq!(&b[cfg::MODEL_CRC32C..], &0xdead_beefu32.to_le_bytes());
        assert_eq!(cfg::MODEL_CRC32C + 4, CONFIG_SIZE);
        assert_eq!(DeviceConfig::from_bytes(&b), c);
        assert_eq!(c.validate(), Ok(()));
        assert_eq!((c.input_dim(), c.output_dim()), (16, 4));
        c.dims[2] = 0;
        assert_eq!(c.validate(), Err(ConfigError::BadDim(0)));
        c.num_layers = 8;
        assert_eq!(c.validate(), Err(ConfigError::BadLayers(8)));
        c.num_layers = 2;
        c.dims[2] = 4;
        c.max_batch = 0;
        assert_eq!(c.validate(), Err(ConfigError::BadMaxBatch(0)));
        c.max_batch = MAX_BATCH + 1;
        assert_eq!(c.validate(), Err(ConfigError::BadMaxBatch(MAX_BATCH + 1)));
        c.max_batch = MAX_BATCH;
        assert_eq!(c.validate(), Ok(()));
        // A failing device without a model is a valid config; with layers,
        // they are checked.
        c.status = DEVICE_STATUS_ERROR;
        c.num_layers = 0;
        assert_eq!(c.validate(), Ok(()));
        c.num_layers = 8;
        assert_eq!(c.validate(), Err(ConfigError::BadLayers(8)));
        c.num_layers = 2;
        c.magic = 0;
        assert_eq!(c.validate(), Err(ConfigError::BadMagic(0)));
    }

    #[test]
    fn model_request_and_chunk_round_trip() {
        let r = ModelRequest {
            generation: 3,
            offset: 0x1_0000,
            length: MAX_MODEL_CHUNK,
            reserved: 0,
        };
        let b = r.to_bytes();
        assert_eq!(&b[..8], &[3, 0, 0, 0, 0, 0, 1, 0]);
        assert_eq!(ModelRequest::from_bytes(&b), r);
        let c = ModelChunk {
            model_size: 5000,
            model_crc32c: 0x0102_0304,
            offset: 4096,
            length: 904,
        };
        let b = c.to_bytes();
        assert_eq!(&b[4..8], &[4, 3, 2, 1]);
        assert_eq!(ModelChunk::from_bytes(&b), c);
        assert_eq!(status_label(STATUS_MODEL_CHANGED), "model_changed");
        assert_eq!(status_label(STATUS_MAX), "bad_range");
    }

    #[test]
    fn event_round_trip() {
        let e = Event {
            kind: EVENT_CONFIG_CHANGED,
            generation: 7,
            status: DEVICE_STATUS_READY,
            reserved: 0,
        };
        let b = e.to_bytes();
        assert_eq!(&b[..8], &[1, 0, 0, 0, 7, 0, 0, 0]);
        assert_eq!(Event::from_bytes(&b), e);
    }

    #[test]
    fn values_round_trip() {
        let v = [i32::MIN, -1, 0, 1, i32::MAX];
        let mut b = [0u8; 20];
        encode_values(&v, &mut b);
        let mut w = [0i32; 5];
        decode_values(&b, &mut w);
        assert_eq!(v, w);
    }
}
