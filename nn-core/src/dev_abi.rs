// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The binary interface of `/dev/neural_network`: the one definition of it.
//!
//! All fields are little-endian 32-bit integers; values are Q16.16.
//!
//! A **write** is one request, in one `write()` call:
//!
//! | offset | field | |
//! |---|---|---|
//! | 0 | `magic` | [`REQUEST_MAGIC`] (the bytes `NNRQ`), [`DEVICE_ONLY_MAGIC`] (`NNRD`): a prediction the CPU fallback must not answer, or [`NULL_MAGIC`] (`NNRN`): the null request |
//! | 4 | `num_samples` | `1..=max_batch` |
//! | 8 | `in_dim` | the model's input width |
//! | 12 | `timeout_ms` | `i32`; 0: the module parameter `timeout_ms` |
//! | 16 | inputs | `num_samples * in_dim` values, row after row |
//!
//! The null request makes the same round trip as a prediction without
//! inference: its answer has `out_dim` 0 and no outputs. A **read** returns
//! the answer of the last successful write on the same open file:
//!
//! | offset | field | |
//! |---|---|---|
//! | 0 | `magic` | [`RESPONSE_MAGIC`] (the bytes `NNRS`), or [`FALLBACK_RESPONSE_MAGIC`] (`NNRF`): the guest driver's CPU fallback answered |
//! | 4 | `num_samples` | as asked |
//! | 8 | `out_dim` | the model's output width |
//! | 12 | `generation` | the model generation that answered (the fallback's copy's) |
//! | 16 | outputs | `num_samples * out_dim` values, row after row |
//!
//! [`Request::parse`] is the check every write passes before it reaches the
//! device ([`RequestError`] says which rule failed); the checks that need the
//! device (max batch, the model's width) come after it.
//! [`Request::parse_header`] makes the same check from the header and the
//! write's length alone, before the inputs are copied.
//!
//! The same layout for C and user space: `guest-driver/include/neural_dev.h`
//! (checked against this file by nn-core's `tests/interfaces.rs`). Like
//! `protocol.rs`, this file is included by the guest kernel module with
//! `#[path = ...] mod dev_abi;` and used by the host side as
//! `nn_core::dev_abi`: it depends on nothing but `core`.

/// Name of the misc device: the node is `/dev/neural_network`.
pub const DEVICE_NAME: &str = "neural_network";

/// `magic` of a request (the bytes `NNRQ`).
pub const REQUEST_MAGIC: u32 = u32::from_le_bytes(*b"NNRQ");
/// `magic` of a null request (the bytes `NNRN`): the same round trip
/// without inference; the answer has `out_dim` 0 and no outputs.
pub const NULL_MAGIC: u32 = u32::from_le_bytes(*b"NNRN");
/// `magic` of a prediction only the device may answer (the bytes `NNRD`):
/// the guest driver's CPU fallback does not answer it, the caller gets the
/// device's answer or an error. Otherwise as [`REQUEST_MAGIC`].
pub const DEVICE_ONLY_MAGIC: u32 = u32::from_le_bytes(*b"NNRD");
/// `magic` of an answer (the bytes `NNRS`).
pub const RESPONSE_MAGIC: u32 = u32::from_le_bytes(*b"NNRS");
/// `magic` of an answer made by the guest driver's CPU fallback from its
/// copy of the model, because the device could not answer (the bytes
/// `NNRF`); the rest is as for [`RESPONSE_MAGIC`], `generation` that of
/// the copy.
pub const FALLBACK_RESPONSE_MAGIC: u32 = u32::from_le_bytes(*b"NNRF");

/// Size of the request and response headers.
pub const HEADER_LEN: usize = 16;
/// Largest write accepted (`E2BIG` above).
pub const MAX_WRITE_LEN: usize = 4 << 20;

/// Byte offsets of the request header's fields (each a le32).
pub mod request {
    /// [`super::REQUEST_MAGIC`] or [`super::NULL_MAGIC`].
    pub const MAGIC: usize = 0;
    /// Samples in the request.
    pub const NUM_SAMPLES: usize = 4;
    /// Width of each sample.
    pub const IN_DIM: usize = 8;
    /// Timeout in ms (`i32`, 0: the module parameter).
    pub const TIMEOUT_MS: usize = 12;
    /// The fields in order, with their offsets: the layout for other
    /// languages (`nn-model abi`).
    pub const FIELDS: [(&str, usize); 4] = [
        ("magic", MAGIC),
        ("num_samples", NUM_SAMPLES),
        ("in_dim", IN_DIM),
        ("timeout_ms", TIMEOUT_MS),
    ];
}

/// Byte offsets of the response header's fields (each a le32).
pub mod response {
    /// [`super::RESPONSE_MAGIC`].
    pub const MAGIC: usize = 0;
    /// Samples answered.
    pub const NUM_SAMPLES: usize = 4;
    /// Width of each answer (0 for the null request).
    pub const OUT_DIM: usize = 8;
    /// The model generation that answered.
    pub const GENERATION: usize = 12;
    /// The fields in order, with their offsets.
    pub const FIELDS: [(&str, usize); 4] = [
        ("magic", MAGIC),
        ("num_samples", NUM_SAMPLES),
        ("out_dim", OUT_DIM),
        ("generation", GENERATION),
    ];
}

fn le32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

fn put32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

/// What a request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// [`REQUEST_MAGIC`]: a prediction.
    Predict,
    /// [`NULL_MAGIC`]: the round trip without inference.
    Null,
    /// [`DEVICE_ONLY_MAGIC`]: a prediction the CPU fallback must not
    /// answer.
    PredictDeviceOnly,
}

impl Kind {
    /// The `magic` of this kind of request.
    pub const fn magic(self) -> u32 {
        match self {
            Kind::Predict => REQUEST_MAGIC,
            Kind::Null => NULL_MAGIC,
            Kind::PredictDeviceOnly => DEVICE_ONLY_MAGIC,
        }
    }
}

/// Why a write is not a valid request. All are `EINVAL` but
/// [`RequestError::TooLong`] (`E2BIG`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestError {
    /// Longer than [`MAX_WRITE_LEN`].
    TooLong,
    /// Shorter than a header.
    Short,
    /// `magic` is neither [`REQUEST_MAGIC`] nor [`NULL_MAGIC`].
    BadMagic,
    /// `num_samples` or `in_dim` is 0.
    Empty,
    /// `timeout_ms` is negative.
    NegativeTimeout,
    /// The length is not `HEADER_LEN + 4 * num_samples * in_dim`.
    LengthMismatch,
}

impl core::fmt::Display for RequestError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            RequestError::TooLong => "longer than the largest write",
            RequestError::Short => "shorter than a header",
            RequestError::BadMagic => "not a request magic",
            RequestError::Empty => "no samples or no inputs",
            RequestError::NegativeTimeout => "negative timeout",
            RequestError::LengthMismatch => "length does not match the header",
        })
    }
}

/// Checks the length of a write before its bytes are copied.
pub const fn check_write_len(len: usize) -> Result<(), RequestError> {
    if len > MAX_WRITE_LEN {
        Err(RequestError::TooLong)
    } else if len < HEADER_LEN {
        Err(RequestError::Short)
    } else {
        Ok(())
    }
}

/// A request's header, checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    /// Prediction or null request.
    pub kind: Kind,
    /// Samples, at least 1.
    pub num_samples: u32,
    /// Width of each sample, at least 1.
    pub in_dim: u32,
    /// Timeout in ms, 0 for the module parameter.
    pub timeout_ms: u32,
}

impl Request {
    /// Checks a whole write (header and inputs) against the rules above.
    pub fn parse(write: &[u8]) -> Result<Self, RequestError> {
        check_write_len(write.len())?;
        Self::parse_header(&write[..HEADER_LEN], write.len())
    }

    /// Checks a write of `write_len` bytes by its first [`HEADER_LEN`]
    /// bytes `header` alone, as [`Request::parse`] checks the whole write:
    /// the check that runs before the inputs are copied. The sizes are
    /// computed with checked arithmetic: a header whose sizes overflow is
    /// a [`RequestError::LengthMismatch`].
    pub fn parse_header(header: &[u8], write_len: usize) -> Result<Self, RequestError> {
        check_write_len(write_len)?;
        if header.len() < HEADER_LEN {
            return Err(RequestError::Short);
        }
        let kind = match le32(header, request::MAGIC) {
            REQUEST_MAGIC => Kind::Predict,
            NULL_MAGIC => Kind::Null,
            DEVICE_ONLY_MAGIC => Kind::PredictDeviceOnly,
            _ => return Err(RequestError::BadMagic),
        };
        let num_samples = le32(header, request::NUM_SAMPLES);
        let in_dim = le32(header, request::IN_DIM);
        let timeout_ms = le32(header, request::TIMEOUT_MS);
        if num_samples == 0 || in_dim == 0 {
            return Err(RequestError::Empty);
        }
        if (timeout_ms as i32) < 0 {
            return Err(RequestError::NegativeTimeout);
        }
        let r = Self {
            kind,
            num_samples,
            in_dim,
            timeout_ms,
        };
        if r.write_len() != Some(write_len) {
            return Err(RequestError::LengthMismatch);
        }
        Ok(r)
    }

    /// Number of input values, `num_samples * in_dim`, or `None` on
    /// overflow.
    pub fn value_count(&self) -> Option<usize> {
        (self.num_samples as usize).checked_mul(self.in_dim as usize)
    }

    /// Length of the whole write, or `None` on overflow.
    pub fn write_len(&self) -> Option<usize> {
        self.value_count()?.checked_mul(4)?.checked_add(HEADER_LEN)
    }

    /// The input values of `write` (as checked by [`Request::parse`]).
    pub fn inputs(write: &[u8]) -> impl Iterator<Item = i32> + '_ {
        write[HEADER_LEN.min(write.len())..]
            .chunks_exact(4)
            .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Encodes the header.
    pub fn header(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        put32(&mut b, request::MAGIC, self.kind.magic());
        put32(&mut b, request::NUM_SAMPLES, self.num_samples);
        put32(&mut b, request::IN_DIM, self.in_dim);
        put32(&mut b, request::TIMEOUT_MS, self.timeout_ms);
        b
    }
}

/// An answer's header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Response {
    /// Samples answered.
    pub num_samples: u32,
    /// Width of each answer (0 for the null request).
    pub out_dim: u32,
    /// The model generation that answered.
    pub generation: u32,
}

impl Response {
    /// Encodes the header.
    pub fn header(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        put32(&mut b, response::MAGIC, RESPONSE_MAGIC);
        put32(&mut b, response::NUM_SAMPLES, self.num_samples);
        put32(&mut b, response::OUT_DIM, self.out_dim);
        put32(&mut b, response::GENERATION, self.generation);
        b
    }

    /// Encodes the header of an answer made by the CPU fallback
    /// ([`FALLBACK_RESPONSE_MAGIC`]).
    pub fn fallback_header(&self) -> [u8; HEADER_LEN] {
        let mut b = self.header();
        put32(&mut b, response::MAGIC, FALLBACK_RESPONSE_MAGIC);
        b
    }

    /// Decodes a header; `None` if `b` is short or the magic is neither
    /// [`RESPONSE_MAGIC`] nor [`FALLBACK_RESPONSE_MAGIC`].
    pub fn parse(b: &[u8]) -> Option<Self> {
        if b.len() < HEADER_LEN
            || !matches!(
                le32(b, response::MAGIC),
                RESPONSE_MAGIC | FALLBACK_RESPONSE_MAGIC
            )
        {
            return None;
        }
        Some(Self {
            num_samples: le32(b, response::NUM_SAMPLES),
            out_dim: le32(b, response::OUT_DIM),
            generation: le32(b, response::GENERATION),
        })
    }

    /// Length of the whole answer.
    pub fn read_len(&self) -> usize {
        HEADER_LEN + 4 * self.num_samples as usize * self.out_dim as usize
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use std::vec::Vec;

    fn write(words: &[u32]) -> Vec<u8> {
        words.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    #[test]
    fn magics_are_their_ascii_tags() {
        assert_eq!(&REQUEST_MAGIC.to_le_bytes(), b"NNRQ");
        assert_eq!(&NULL_MAGIC.to_le_bytes(), b"NNRN");
        assert_eq!(&RESPONSE_MAGIC.to_le_bytes(), b"NNRS");
        assert_eq!(&DEVICE_ONLY_MAGIC.to_le_bytes(), b"NNRD");
        assert_eq!(&FALLBACK_RESPONSE_MAGIC.to_le_bytes(), b"NNRF");
        assert_eq!(REQUEST_MAGIC, 0x5152_4e4e);
    }

    #[test]
    fn layout() {
        for fields in [request::FIELDS, response::FIELDS] {
            for (i, (_, off)) in fields.iter().enumerate() {
                assert_eq!(*off, 4 * i);
            }
            assert_eq!(fields.len() * 4, HEADER_LEN);
        }
        let r = Request {
            kind: Kind::Null,
            num_samples: 2,
            in_dim: 3,
            timeout_ms: 7,
        };
        assert_eq!(r.header()[..], write(&[NULL_MAGIC, 2, 3, 7])[..]);
        let a = Response {
            num_samples: 2,
            out_dim: 4,
            generation: 9,
        };
        assert_eq!(a.header()[..], write(&[RESPONSE_MAGIC, 2, 4, 9])[..]);
        assert_eq!(Response::parse(&a.header()), Some(a));
        assert_eq!(a.fallback_header()[4..], a.header()[4..]);
        assert_eq!(Response::parse(&a.fallback_header()), Some(a));
        assert_eq!(a.read_len(), 16 + 2 * 4 * 4);
        assert_eq!(Response::parse(&a.header()[..15]), None);
        assert_eq!(Response::parse(&r.header()), None);
    }

    #[test]
    fn valid_requests() {
        let w = write(&[REQUEST_MAGIC, 2, 3, 0, 1, 2, 3, 4, 5, u32::MAX]);
        let r = Request::parse(&w).unwrap();
        assert_eq!(
            r,
            Request {
                kind: Kind::Predict,
                num_samples: 2,
                in_dim: 3,
                timeout_ms: 0
            }
        );
        assert_eq!(r.header()[..], w[..HEADER_LEN]);
        assert_eq!(r.write_len(), Some(w.len()));
        let inputs: Vec<i32> = Request::inputs(&w).collect();
        assert_eq!(inputs, [1, 2, 3, 4, 5, -1]);
        let w = write(&[NULL_MAGIC, 1, 1, 300, 0]);
        assert_eq!(Request::parse(&w).unwrap().kind, Kind::Null);
        assert_eq!(Request::parse(&w).unwrap().timeout_ms, 300);
        let w = write(&[DEVICE_ONLY_MAGIC, 1, 1, 0, 0]);
        assert_eq!(Request::parse(&w).unwrap().kind, Kind::PredictDeviceOnly);
    }

    #[test]
    fn invalid_requests() {
        let e = |words: &[u32]| Request::parse(&write(words)).unwrap_err();
        assert_eq!(e(&[REQUEST_MAGIC, 1, 1]), RequestError::Short);
        assert_eq!(e(&[]), RequestError::Short);
        let bad_magic = u32::from_le_bytes(*b"NNRX");
        assert_eq!(e(&[bad_magic, 1, 1, 0, 5]), RequestError::BadMagic);
        assert_eq!(e(&[RESPONSE_MAGIC, 1, 1, 0, 5]), RequestError::BadMagic);
        assert_eq!(e(&[REQUEST_MAGIC, 0, 1, 0]), RequestError::Empty);
        assert_eq!(e(&[REQUEST_MAGIC, 1, 0, 0]), RequestError::Empty);
        assert_eq!(
            e(&[REQUEST_MAGIC, 1, 1, (-5i32) as u32, 5]),
            RequestError::NegativeTimeout
        );
        assert_eq!(
            e(&[REQUEST_MAGIC, 2, 1, 0, 5]),
            RequestError::LengthMismatch
        );
        assert_eq!(
            e(&[REQUEST_MAGIC, 1, 1, 0, 5, 6]),
            RequestError::LengthMismatch
        );
        // A product that overflows is a mismatch, not a wrap-around.
        assert_eq!(
            e(&[REQUEST_MAGIC, u32::MAX, u32::MAX, 0, 5]),
            RequestError::LengthMismatch
        );
        // The header alone decides, before any input is read.
        let h = write(&[REQUEST_MAGIC, 3, 2, 0]);
        assert_eq!(
            Request::parse_header(&h, HEADER_LEN + 24)
                .unwrap()
                .value_count(),
            Some(6)
        );
        assert_eq!(
            Request::parse_header(&h, MAX_WRITE_LEN),
            Err(RequestError::LengthMismatch)
        );
        assert_eq!(
            Request::parse_header(&h, MAX_WRITE_LEN + 1),
            Err(RequestError::TooLong)
        );
        assert_eq!(
            Request::parse_header(&h[..8], HEADER_LEN + 24),
            Err(RequestError::Short)
        );
        let huge = write(&[REQUEST_MAGIC, u32::MAX, u32::MAX, 0]);
        assert_eq!(
            Request::parse_header(&huge, MAX_WRITE_LEN),
            Err(RequestError::LengthMismatch)
        );
        let mut long = write(&[REQUEST_MAGIC, 1, 1, 0]);
        long.resize(MAX_WRITE_LEN + 1, 0);
        assert_eq!(Request::parse(&long), Err(RequestError::TooLong));
        assert_eq!(check_write_len(MAX_WRITE_LEN), Ok(()));
        assert_eq!(check_write_len(HEADER_LEN - 1), Err(RequestError::Short));
    }
}
