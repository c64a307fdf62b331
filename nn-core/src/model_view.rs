// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The canonical model file, read without allocation into borrowed layers.
//!
//! The model file format is described in `crate::model` (safetensors with
//! Q16.16 `I32` tensors). `Model::to_bytes` writes one canonical form of it
//! — header keys in a fixed order, no spaces, numbers in plain decimal, the
//! tensor data in layer order (weights then biases), the header padded with
//! spaces to a multiple of 8 bytes — and that is what the daemon serves with
//! `GET_MODEL`. [`parse`] reads exactly that form, strictly: any other byte
//! sequence is refused, even one a general safetensors reader would take.
//! Every file [`parse`] accepts is accepted by `Model::from_bytes` with the
//! same layers (nn-core's tests check it on mutated files), and the
//! layers it returns borrow the file's bytes for
//! [`crate::reference::forward_into`].
//!
//! # Shared with the guest kernel
//!
//! The guest driver includes this file with `#[path = ...] mod model_view;`
//! next to `reference.rs`, `fixed.rs` and `protocol.rs` (as `mod reference`,
//! `mod fixed`, `mod protocol` at its crate root) to read its copy of the
//! model. It needs only `core`: no allocation, no `std`, no floats, no
//! `unsafe`, and it never panics on any input (no indexing; sizes use
//! checked arithmetic). The CRC-32C is the caller's: the host passes
//! `nn_core::model::crc32c` (the `crc` crate), the kernel [`Crc32c::of`]
//! (software, here) or, where `CONFIG_CRC32C` is built, its `crc32c()`
//! (with the seed and final inversion of the standard CRC-32C:
//! `~crc32c(~0, data, len)`).

#![deny(
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::float_arithmetic,
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used
)]

use crate::protocol::{MAX_DIM, MAX_LAYERS};
use crate::reference::{Activation, LayerView, Values};

/// Value of the `format` metadata key.
pub const FORMAT: &str = "virtio-nn";
/// Value of the `format_version` metadata key this crate reads and writes.
pub const FORMAT_VERSION: &str = "1";
/// Value of the `fixed_point` metadata key.
pub const FIXED_POINT: &str = "q16.16";
/// Longest `name` metadata accepted, in bytes (unescaped).
pub const MAX_NAME_LEN: usize = 256;

/// Why bytes are not a canonical model file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ViewError {
    /// Shorter than the 8-byte header length, or than the header it gives.
    Truncated,
    /// The header length is not a multiple of 8 or does not fit in memory.
    HeaderLen(u64),
    /// The header departs from the canonical form at this byte of the
    /// header (0 = its first byte; not valid UTF-8 also lands here).
    Syntax {
        /// Byte offset in the header.
        at: usize,
    },
    /// A metadata key has a value this format does not accept.
    Metadata(&'static str),
    /// The `name` metadata is longer than [`MAX_NAME_LEN`] bytes.
    NameTooLong,
    /// The `activations` list is empty, too long or names an unknown one.
    Activations,
    /// Layer `layer` has a width of 0 or above `MAX_DIM`, or a bias that is
    /// not `[out]`.
    Shape {
        /// Index of the layer.
        layer: usize,
    },
    /// Layer `layer`'s input width is not the previous layer's output width.
    Chain {
        /// Index of the layer.
        layer: usize,
    },
    /// Layer `layer`'s data offsets are not the next bytes of its size.
    Offsets {
        /// Index of the layer.
        layer: usize,
    },
    /// The data after the header is not exactly the tensors' bytes.
    DataLen {
        /// Bytes the tensors take.
        expected: usize,
        /// Bytes present.
        got: usize,
    },
    /// The tensor data's CRC-32C is not the one the metadata records.
    Checksum {
        /// The `checksum` metadata.
        recorded: u32,
        /// The data's CRC-32C.
        actual: u32,
    },
}

impl core::fmt::Display for ViewError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ViewError::Truncated => write!(f, "truncated"),
            ViewError::HeaderLen(n) => write!(f, "header length {n} is not usable"),
            ViewError::Syntax { at } => write!(f, "header not canonical at byte {at}"),
            ViewError::Metadata(k) => write!(f, "metadata `{k}` has a bad value"),
            ViewError::NameTooLong => write!(f, "name longer than {MAX_NAME_LEN} bytes"),
            ViewError::Activations => write!(f, "bad activations list"),
            ViewError::Shape { layer } => write!(f, "layer {layer}: bad shape"),
            ViewError::Chain { layer } => {
                write!(
                    f,
                    "layer {layer}: input width is not the previous output width"
                )
            }
            ViewError::Offsets { layer } => write!(f, "layer {layer}: bad data offsets"),
            ViewError::DataLen { expected, got } => {
                write!(f, "data is {got} bytes, the tensors take {expected}")
            }
            ViewError::Checksum { recorded, actual } => write!(
                f,
                "checksum mismatch: metadata says crc32c:{recorded:08x}, data has {actual:08x}"
            ),
        }
    }
}

/// A validated model file: its layers borrow the file's bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModelView<'a> {
    layers: [LayerView<'a>; MAX_LAYERS],
    num_layers: usize,
    hidden: usize,
    checksum: u32,
    name: &'a [u8],
}

impl<'a> ModelView<'a> {
    /// The layers, input side first (1..=`MAX_LAYERS`, checked as
    /// `reference::check` does).
    pub fn layers(&self) -> &[LayerView<'a>] {
        self.layers.get(..self.num_layers).unwrap_or(&[])
    }

    /// Width of one input sample.
    pub fn input_dim(&self) -> usize {
        self.layers().first().map_or(0, |l| l.in_dim)
    }

    /// Width of one output sample.
    pub fn output_dim(&self) -> usize {
        self.layers().last().map_or(0, |l| l.out_dim)
    }

    /// Values each scratch buffer of `reference::forward_into` needs (the
    /// widest hidden layer; 0 for a one-layer model).
    pub fn scratch_len(&self) -> usize {
        self.hidden
    }

    /// CRC-32C of the tensor data (the `checksum` metadata, verified).
    pub fn checksum(&self) -> u32 {
        self.checksum
    }

    /// The `name` metadata as it is in the file: JSON-escaped (`\"`, `\\`
    /// and `\u00XX` for control characters), valid UTF-8.
    pub fn name_escaped(&self) -> &'a [u8] {
        self.name
    }
}

/// A reader over the header's bytes.
struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn err(&self) -> ViewError {
        ViewError::Syntax { at: self.at }
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.at).copied()
    }

    /// Moves past `n` bytes known to be there.
    fn skip(&mut self, n: usize) -> Result<(), ViewError> {
        self.at = self.at.checked_add(n).ok_or(self.err())?;
        Ok(())
    }

    /// The exact bytes `s`.
    fn lit(&mut self, s: &[u8]) -> Result<(), ViewError> {
        let end = self.at.checked_add(s.len()).ok_or(self.err())?;
        if self.b.get(self.at..end) != Some(s) {
            return Err(self.err());
        }
        self.at = end;
        Ok(())
    }

    /// A JSON string as `Model::to_bytes` writes it (escapes only `\"`,
    /// `\\` and `\u00XX` below 0x20, which are not written raw): its raw
    /// content and its unescaped length in bytes.
    fn string(&mut self) -> Result<(&'a [u8], usize), ViewError> {
        self.lit(b"\"")?;
        let start = self.at;
        let mut len = 0usize;
        loop {
            match self.peek().ok_or(self.err())? {
                b'"' => break,
                b'\\' => {
                    self.skip(1)?;
                    match self.peek().ok_or(self.err())? {
                        b'"' | b'\\' => self.skip(1)?,
                        b'u' => {
                            self.lit(b"u00")?;
                            let hi = self.peek().ok_or(self.err())?;
                            self.skip(1)?;
                            let lo = self.peek().ok_or(self.err())?;
                            if !matches!(hi, b'0' | b'1') || hex(lo).is_none() {
                                return Err(self.err());
                            }
                            self.skip(1)?;
                        }
                        _ => return Err(self.err()),
                    }
                }
                c if c < 0x20 => return Err(self.err()),
                _ => self.skip(1)?,
            }
            len = len.checked_add(1).ok_or(self.err())?;
        }
        let raw = self.b.get(start..self.at).ok_or(self.err())?;
        self.skip(1)?;
        Ok((raw, len))
    }

    /// A number in plain decimal (no sign, no leading zero).
    fn number(&mut self) -> Result<usize, ViewError> {
        let start = self.at;
        let mut v = 0usize;
        while let Some(c) = self.peek().filter(u8::is_ascii_digit) {
            if v == 0 && self.at != start {
                // A leading zero.
                return Err(ViewError::Syntax { at: start });
            }
            v = v
                .checked_mul(10)
                .and_then(|v| v.checked_add(usize::from(c.wrapping_sub(b'0'))))
                .ok_or(ViewError::Syntax { at: start })?;
            self.skip(1)?;
        }
        if self.at == start {
            return Err(self.err());
        }
        Ok(v)
    }

    /// `,"key":` and a string that must equal `want`.
    fn meta(&mut self, key: &'static str, want: &str) -> Result<(), ViewError> {
        self.key(key)?;
        let (v, _) = self.string()?;
        if v != want.as_bytes() {
            return Err(ViewError::Metadata(key));
        }
        Ok(())
    }

    /// `,"key":`.
    fn key(&mut self, key: &str) -> Result<(), ViewError> {
        self.lit(b",\"")?;
        self.lit(key.as_bytes())?;
        self.lit(b"\":")
    }

    /// `,"layers.K.what":{"dtype":"I32","shape":[`.
    fn tensor(&mut self, k: usize, what: &[u8]) -> Result<(), ViewError> {
        self.lit(b",\"layers.")?;
        if self.number()? != k {
            return Err(self.err());
        }
        self.lit(b".")?;
        self.lit(what)?;
        self.lit(b"\":{\"dtype\":\"I32\",\"shape\":[")
    }

    /// `],"data_offsets":[S,E]}`: returns (S, E).
    fn offsets(&mut self) -> Result<(usize, usize), ViewError> {
        self.lit(b"],\"data_offsets\":[")?;
        let s = self.number()?;
        self.lit(b",")?;
        let e = self.number()?;
        self.lit(b"]}")?;
        Ok((s, e))
    }
}

/// The value of a lowercase hex digit.
fn hex(c: u8) -> Option<u32> {
    match c {
        b'0'..=b'9' => Some(u32::from(c.wrapping_sub(b'0'))),
        b'a'..=b'f' => Some(u32::from(c.wrapping_sub(b'a')).wrapping_add(10)),
        _ => None,
    }
}

/// `crc32c:` and 8 lowercase hex digits.
fn parse_checksum(v: &[u8]) -> Option<u32> {
    let digits = v.strip_prefix(b"crc32c:")?;
    if digits.len() != 8 {
        return None;
    }
    digits
        .iter()
        .try_fold(0u32, |acc, &c| Some((acc << 4) | hex(c)?))
}

/// The bytes a tensor of `values` i32 takes (`None` on overflow).
fn bytes_of(values: usize) -> Option<usize> {
    values.checked_mul(4)
}

/// A CRC-32C (Castagnoli) computed in software, for a side that has no
/// other (the guest kernel's `crc32c()` needs `CONFIG_CRC32C`, which a
/// minimal kernel lacks): the standard CRC-32C (reflected polynomial
/// 0x82F63B78, initial value and final XOR all ones), byte at a time from a
/// table, over data given in any number of pieces. The host uses the `crc`
/// crate (`nn_core::model::crc32c`); nn-core's tests check the two agree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Crc32c(u32);

/// The CRC-32C of each byte value.
const CRC32C_TABLE: [u32; 256] = crc32c_table();

// A compile-time loop over the 256 entries: the index stays below the
// table's length and the counters cannot overflow.
#[allow(clippy::indexing_slicing, clippy::arithmetic_side_effects)]
const fn crc32c_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0x82F6_3B78
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
}

impl Default for Crc32c {
    fn default() -> Self {
        Self::new()
    }
}

impl Crc32c {
    /// The CRC of no bytes so far.
    pub const fn new() -> Self {
        Self(!0)
    }

    /// Adds `bytes` to the data.
    pub fn update(&mut self, bytes: &[u8]) {
        self.0 = bytes.iter().fold(self.0, |c, &b| {
            let i = usize::from(c.to_le_bytes()[0] ^ b);
            (c >> 8) ^ CRC32C_TABLE.get(i).copied().unwrap_or(0)
        });
    }

    /// The CRC-32C of the data so far.
    pub const fn value(&self) -> u32 {
        !self.0
    }

    /// The CRC-32C of `bytes`.
    pub fn of(bytes: &[u8]) -> u32 {
        let mut c = Self::new();
        c.update(bytes);
        c.value()
    }
}

/// Reads a canonical model file (see the module documentation) into
/// borrowed layers, checking everything `Model::from_bytes` checks: the
/// metadata, the activations, each layer's shape and the chain, that the
/// data is exactly the tensors in layer order, and the data's CRC-32C
/// (computed by `crc32c`, the standard CRC-32C of a byte slice) against the
/// `checksum` metadata.
pub fn parse<'a>(
    bytes: &'a [u8],
    crc32c: impl FnOnce(&[u8]) -> u32,
) -> Result<ModelView<'a>, ViewError> {
    let len_bytes: [u8; 8] = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or(ViewError::Truncated)?;
    let header_len = u64::from_le_bytes(len_bytes);
    let n = usize::try_from(header_len)
        .ok()
        .filter(|n| n % 8 == 0)
        .ok_or(ViewError::HeaderLen(header_len))?;
    let rest = bytes.get(8..).ok_or(ViewError::Truncated)?;
    let header = rest.get(..n).ok_or(ViewError::Truncated)?;
    let data = rest.get(n..).ok_or(ViewError::Truncated)?;
    if let Err(e) = core::str::from_utf8(header) {
        return Err(ViewError::Syntax {
            at: e.valid_up_to(),
        });
    }
    let mut c = Cursor { b: header, at: 0 };
    // Metadata, keys sorted as Model::to_bytes writes them.
    c.lit(b"{\"__metadata__\":{\"activations\":")?;
    let (acts, _) = c.string()?;
    c.key("checksum")?;
    let (checksum, _) = c.string()?;
    let recorded = parse_checksum(checksum).ok_or(ViewError::Metadata("checksum"))?;
    c.meta("fixed_point", FIXED_POINT)?;
    c.meta("format", FORMAT)?;
    c.meta("format_version", FORMAT_VERSION)?;
    c.key("name")?;
    let (name, name_len) = c.string()?;
    if name_len > MAX_NAME_LEN {
        return Err(ViewError::NameTooLong);
    }
    c.lit(b"}")?;

    let mut layers = [LayerView::default(); MAX_LAYERS];
    let mut num_layers = 0usize;
    for name in acts.split(|&b| b == b',') {
        let slot = layers.get_mut(num_layers).ok_or(ViewError::Activations)?;
        slot.activation = Activation::from_bytes(name).ok_or(ViewError::Activations)?;
        num_layers = num_layers.checked_add(1).ok_or(ViewError::Activations)?;
    }

    let mut off = 0usize;
    let mut hidden = 0usize;
    let mut prev_out: Option<usize> = None;
    for (k, layer) in layers.iter_mut().take(num_layers).enumerate() {
        c.tensor(k, b"weight")?;
        let out_dim = c.number()?;
        c.lit(b",")?;
        let in_dim = c.number()?;
        let (ws, we) = c.offsets()?;
        c.tensor(k, b"bias")?;
        let bias_dim = c.number()?;
        let (bs, be) = c.offsets()?;
        let width = 1..=MAX_DIM as usize;
        if !width.contains(&out_dim) || !width.contains(&in_dim) || bias_dim != out_dim {
            return Err(ViewError::Shape { layer: k });
        }
        if let Some(p) = prev_out {
            if p != in_dim {
                return Err(ViewError::Chain { layer: k });
            }
            hidden = hidden.max(p);
        }
        prev_out = Some(out_dim);
        let bad = ViewError::Offsets { layer: k };
        let w_len = in_dim.checked_mul(out_dim).and_then(bytes_of).ok_or(bad)?;
        let b_len = bytes_of(out_dim).ok_or(bad)?;
        if ws != off || Some(we) != ws.checked_add(w_len) || bs != we {
            return Err(bad);
        }
        if Some(be) != bs.checked_add(b_len) {
            return Err(bad);
        }
        off = be;
        let short = ViewError::DataLen {
            expected: off,
            got: data.len(),
        };
        *layer = LayerView {
            in_dim,
            out_dim,
            weights: Values::Le(data.get(ws..we).ok_or(short)?),
            bias: Values::Le(data.get(bs..be).ok_or(short)?),
            activation: layer.activation,
        };
    }
    c.lit(b"}")?;
    // The padding: spaces to the end of the header.
    if let Some(i) = header
        .get(c.at..)
        .and_then(|pad| pad.iter().position(|&b| b != b' '))
    {
        return Err(ViewError::Syntax {
            at: c.at.saturating_add(i),
        });
    }
    if data.len() != off {
        return Err(ViewError::DataLen {
            expected: off,
            got: data.len(),
        });
    }
    let actual = crc32c(data);
    if actual != recorded {
        return Err(ViewError::Checksum { recorded, actual });
    }
    Ok(ModelView {
        layers,
        num_layers,
        hidden,
        checksum: recorded,
        name,
    })
}
