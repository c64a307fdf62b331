// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The model file: a [safetensors] container with Q16.16 `I32` tensors.
//!
//! A PyTorch user already writes safetensors; this format only fixes names,
//! dtypes and metadata:
//!
//! * tensors `layers.{k}.weight` (`I32`, shape `[out, in]`, row-major as
//!   `nn.Linear.weight`) and `layers.{k}.bias` (`I32`, shape `[out]`) for
//!   `k = 0..L`, values in Q16.16; no other tensors.
//! * metadata (`__metadata__`, all strings):
//!   - `format` = `"virtio-nn"`
//!   - `format_version` = `"1"`
//!   - `fixed_point` = `"q16.16"`
//!   - `activations` = one name per layer, comma-separated (`relu`,
//!     `identity`), e.g. `"relu,identity"`
//!   - `checksum` = `"crc32c:"` and 8 lowercase hex digits: CRC-32C of the
//!     tensor data in layer order (weight bytes, then bias bytes, for
//!     `k = 0..L`), little-endian as stored.
//!   - `name` (optional): a human-readable model name, at most
//!     [`MAX_NAME_LEN`] bytes.
//!
//! Every malformed file is refused with a [`ModelError`] naming the tensor or
//! key and the reason; a model that loads has passed [`Mlp::new`]'s checks.
//!
//! [safetensors]: https://github.com/huggingface/safetensors

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

use crate::mlp::{Activation, Layer, Mlp, ShapeError};
use crate::protocol::MAX_LAYERS;

pub use crate::model_view::{FIXED_POINT, FORMAT, FORMAT_VERSION, MAX_NAME_LEN};
/// Largest model file accepted, in bytes.
pub const MAX_FILE_SIZE: usize = 256 << 20;
const CRC32C: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

/// The standard CRC-32C (Castagnoli, the iSCSI polynomial; Linux's
/// `~crc32c(~0, ..)`) of `bytes`: the checksum of the tensor data in the
/// `checksum` metadata, and of the whole served file in the device's config
/// space.
pub fn crc32c(bytes: &[u8]) -> u32 {
    CRC32C.checksum(bytes)
}

/// Why a model file was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    /// Larger than [`MAX_FILE_SIZE`].
    #[error("file is {0} bytes; at most {max} are accepted", max = MAX_FILE_SIZE)]
    TooLarge(usize),
    /// The safetensors container itself is broken.
    #[error("not a valid safetensors file: {0}")]
    Container(String),
    /// The `name` metadata is longer than [`MAX_NAME_LEN`] bytes.
    #[error("metadata `name` is {0} bytes; at most {max} are accepted", max = MAX_NAME_LEN)]
    NameTooLong(usize),
    /// A required metadata key is absent.
    #[error("metadata key `{0}` is missing")]
    MissingMetadata(&'static str),
    /// A metadata key has a value this version does not accept.
    #[error("metadata `{key}` is `{value}`, expected {expected}")]
    BadMetadata {
        /// The key.
        key: &'static str,
        /// Its value.
        value: String,
        /// What was expected.
        expected: &'static str,
    },
    /// A layer's tensor is absent.
    #[error("tensor `{0}` is missing")]
    MissingTensor(String),
    /// A tensor that is not part of the format.
    #[error("tensor `{0}` is not part of the format (expected layers.K.weight / layers.K.bias)")]
    UnexpectedTensor(String),
    /// A tensor that is not `I32`.
    #[error("tensor `{tensor}` has dtype {dtype}, expected I32")]
    BadDtype {
        /// The tensor.
        tensor: String,
        /// Its dtype.
        dtype: String,
    },
    /// A tensor with the wrong rank or sizes.
    #[error("tensor `{tensor}` has shape {shape:?}, expected {expected}")]
    BadShape {
        /// The tensor.
        tensor: String,
        /// Its shape.
        shape: Vec<usize>,
        /// What was expected.
        expected: String,
    },
    /// The data does not match the checksum in the metadata.
    #[error("checksum mismatch: metadata says {expected}, data has crc32c:{actual:08x}")]
    Checksum {
        /// The metadata's value.
        expected: String,
        /// The data's CRC-32C.
        actual: u32,
    },
    /// The layers do not form a model.
    #[error("invalid model: {0}")]
    Shape(#[from] ShapeError),
}

fn meta<'a>(
    st: &'a safetensors::tensor::Metadata,
    key: &'static str,
) -> Result<&'a str, ModelError> {
    st.metadata()
        .as_ref()
        .and_then(|m| m.get(key))
        .map(String::as_str)
        .ok_or(ModelError::MissingMetadata(key))
}

fn expect_meta(
    st: &safetensors::tensor::Metadata,
    key: &'static str,
    want: &'static str,
) -> Result<(), ModelError> {
    let value = meta(st, key)?;
    if value != want {
        return Err(ModelError::BadMetadata {
            key,
            value: value.to_string(),
            expected: want,
        });
    }
    Ok(())
}

fn i32_tensor<'a>(st: &SafeTensors<'a>, name: &str) -> Result<TensorView<'a>, ModelError> {
    let t = st
        .tensor(name)
        .map_err(|_| ModelError::MissingTensor(name.to_string()))?;
    if t.dtype() != Dtype::I32 {
        return Err(ModelError::BadDtype {
            tensor: name.to_string(),
            dtype: format!("{:?}", t.dtype()),
        });
    }
    Ok(t)
}

fn values(data: &[u8]) -> Vec<i32> {
    data.chunks_exact(4)
        .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// The CRC-32C this format records for a model's tensor data.
pub fn checksum(mlp: &Mlp) -> u32 {
    let mut d = CRC32C.digest();
    for l in mlp.layers() {
        for v in l.weights().iter().chain(l.bias()) {
            d.update(&v.to_le_bytes());
        }
    }
    d.finalize()
}

/// A model and the metadata that came with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Model {
    /// The network.
    pub mlp: Mlp,
    /// The `name` metadata, or empty.
    pub name: String,
    /// CRC-32C of the tensor data (also the model's identity in logs).
    pub checksum: u32,
}

impl Model {
    /// Parses and validates a model file.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ModelError> {
        if bytes.len() > MAX_FILE_SIZE {
            return Err(ModelError::TooLarge(bytes.len()));
        }
        let (_, header) =
            SafeTensors::read_metadata(bytes).map_err(|e| ModelError::Container(e.to_string()))?;
        let st =
            SafeTensors::deserialize(bytes).map_err(|e| ModelError::Container(e.to_string()))?;
        expect_meta(&header, "format", FORMAT)?;
        expect_meta(&header, "format_version", FORMAT_VERSION)?;
        expect_meta(&header, "fixed_point", FIXED_POINT)?;
        let acts: Vec<&str> = meta(&header, "activations")?
            .split(',')
            .map(str::trim)
            .collect();
        if acts.len() > MAX_LAYERS {
            return Err(ShapeError::TooManyLayers(acts.len()).into());
        }
        let mut expected_names = Vec::new();
        let mut layers = Vec::with_capacity(acts.len());
        for (k, act) in acts.iter().enumerate() {
            let activation = Activation::from_name(act).ok_or_else(|| ModelError::BadMetadata {
                key: "activations",
                value: act.to_string(),
                expected: "`relu` or `identity` for each layer",
            })?;
            let (wn, bn) = (format!("layers.{k}.weight"), format!("layers.{k}.bias"));
            let w = i32_tensor(&st, &wn)?;
            let b = i32_tensor(&st, &bn)?;
            let (out_dim, in_dim) = match *w.shape() {
                [o, i] => (o, i),
                _ => {
                    return Err(ModelError::BadShape {
                        tensor: wn,
                        shape: w.shape().to_vec(),
                        expected: "[out, in]".to_string(),
                    })
                }
            };
            if b.shape() != [out_dim] {
                return Err(ModelError::BadShape {
                    tensor: bn,
                    shape: b.shape().to_vec(),
                    expected: format!("[{out_dim}]"),
                });
            }
            let layer = Layer::new(
                in_dim,
                out_dim,
                values(w.data()),
                values(b.data()),
                activation,
            )
            .map_err(|e| match e {
                ShapeError::BadDim { dim, .. } => ShapeError::BadDim { layer: k, dim },
                other => other,
            })?;
            layers.push(layer);
            expected_names.push(wn);
            expected_names.push(bn);
        }
        if let Some(extra) = st
            .names()
            .into_iter()
            .find(|n| !expected_names.iter().any(|e| e == n))
        {
            return Err(ModelError::UnexpectedTensor(extra.to_string()));
        }
        let mlp = Mlp::new(layers)?;
        let actual = checksum(&mlp);
        let recorded = meta(&header, "checksum")?;
        if recorded != format!("crc32c:{actual:08x}") {
            return Err(ModelError::Checksum {
                expected: recorded.to_string(),
                actual,
            });
        }
        let name = meta(&header, "name").unwrap_or("");
        if name.len() > MAX_NAME_LEN {
            return Err(ModelError::NameTooLong(name.len()));
        }
        let name = name.to_string();
        Ok(Self {
            mlp,
            name,
            checksum: actual,
        })
    }

    /// Wraps a network, computing its checksum.
    pub fn new(mlp: Mlp, name: &str) -> Self {
        let checksum = checksum(&mlp);
        Self {
            mlp,
            name: name.to_string(),
            checksum,
        }
    }

    /// Serializes to the file format. The bytes depend only on the model:
    /// the header is written here with its keys in a fixed order (metadata
    /// sorted, then the tensors in layer order), so the same model always
    /// gives the same file. This is the canonical form `model_view::parse`
    /// reads (and the daemon serves with `GET_MODEL`): keep the two in step.
    pub fn to_bytes(&self) -> Vec<u8> {
        let layers = self.mlp.layers();
        let acts: Vec<&str> = layers.iter().map(|l| l.activation().name()).collect();
        let mut metadata = [
            ("activations", acts.join(",")),
            ("checksum", format!("crc32c:{:08x}", self.checksum)),
            ("fixed_point", FIXED_POINT.to_string()),
            ("format", FORMAT.to_string()),
            ("format_version", FORMAT_VERSION.to_string()),
            ("name", self.name.clone()),
        ];
        metadata.sort();
        let mut header = String::from("{\"__metadata__\":{");
        for (i, (k, v)) in metadata.iter().enumerate() {
            if i > 0 {
                header.push(',');
            }
            header.push_str(&format!("{}:{}", json_string(k), json_string(v)));
        }
        header.push('}');
        let mut data = Vec::new();
        for (k, l) in layers.iter().enumerate() {
            for (what, values, shape) in [
                (
                    "weight",
                    l.weights(),
                    format!("[{},{}]", l.out_dim(), l.in_dim()),
                ),
                ("bias", l.bias(), format!("[{}]", l.out_dim())),
            ] {
                let start = data.len();
                data.extend(values.iter().flat_map(|x| x.to_le_bytes()));
                header.push_str(&format!(
                    ",\"layers.{k}.{what}\":{{\"dtype\":\"I32\",\"shape\":{shape},\"data_offsets\":[{start},{}]}}",
                    data.len()
                ));
            }
        }
        header.push('}');
        // Pad the header with spaces to a multiple of 8 bytes, as safetensors does.
        while header.len() % 8 != 0 {
            header.push(' ');
        }
        let mut out = Vec::with_capacity(8 + header.len() + data.len());
        out.extend_from_slice(&(header.len() as u64).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(&data);
        out
    }
}

/// A JSON string literal.
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(feature = "std")]
impl Model {
    /// Reads and validates a model file.
    pub fn load(path: &std::path::Path) -> Result<Self, LoadError> {
        let bytes = read_file(path)?;
        Self::from_bytes(&bytes).map_err(|e| LoadError::Model(path.display().to_string(), e))
    }
}

/// The bytes of a model file, not validated: a regular file of at most
/// [`MAX_FILE_SIZE`] bytes.
///
/// The file is opened with `O_NONBLOCK` (and `O_NOCTTY`) and checked with
/// `fstat` on the open descriptor, not on the path: a FIFO, device or socket
/// put at the path at any moment is refused at once (opening a FIFO for
/// reading without `O_NONBLOCK` would wait for a writer, forever).
#[cfg(feature = "std")]
pub fn read_file(path: &std::path::Path) -> Result<Vec<u8>, LoadError> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let name = || path.display().to_string();
    let io = |e| LoadError::Io(name(), e);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(io)?;
    // Only regular files: a FIFO would block the reader, a device such as
    // /dev/zero reports no size and never ends.
    if !file.metadata().map_err(io)?.is_file() {
        return Err(LoadError::NotAFile(name()));
    }
    let mut bytes = Vec::new();
    file.take(MAX_FILE_SIZE as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() > MAX_FILE_SIZE {
        return Err(LoadError::Model(name(), ModelError::TooLarge(bytes.len())));
    }
    Ok(bytes)
}

/// Why a model file could not be loaded from disk.
#[cfg(feature = "std")]
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
    /// The path is not a regular file (a directory, FIFO, device...).
    #[error("{0}: not a regular file")]
    NotAFile(String),
    /// The file is not a valid model.
    #[error("{0}: {1}")]
    Model(String, #[source] ModelError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn sample() -> Model {
        let l0 = Layer::new(
            3,
            2,
            vec![1, -2, 3, i32::MIN, i32::MAX, 0],
            vec![5, -6],
            Activation::Relu,
        )
        .unwrap();
        let l1 = Layer::new(2, 1, vec![7, 8], vec![9], Activation::Identity).unwrap();
        Model::new(Mlp::new(vec![l0, l1]).unwrap(), "sample")
    }

    /// Rewrites a file's JSON header with `edit` (the data is kept).
    fn with_header(bytes: &[u8], edit: impl Fn(String) -> String) -> Vec<u8> {
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header = String::from_utf8(bytes[8..8 + n].to_vec()).unwrap();
        let new = edit(header).into_bytes();
        let mut out = (new.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(&new);
        out.extend_from_slice(&bytes[8 + n..]);
        out
    }

    #[test]
    fn crc32c_is_the_castagnoli_crc() {
        // The standard check value (PROTOCOL.md quotes it for drivers).
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(crc32c(&[]), 0);
    }

    #[test]
    fn round_trip() {
        let m = sample();
        let back = Model::from_bytes(&m.to_bytes()).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.mlp.dims(), vec![3, 2, 1]);
    }

    #[test]
    fn serialization_is_deterministic_and_escapes_the_name() {
        let mut m = sample();
        m.name = "a \"quoted\" \\ name\nwith\ttabs, é and \u{1}".into();
        let bytes = m.to_bytes();
        for _ in 0..4 {
            assert_eq!(Model::new(m.mlp.clone(), &m.name).to_bytes(), bytes);
        }
        let back = Model::from_bytes(&bytes).unwrap();
        assert_eq!(back.name, m.name);
        let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        assert_eq!(header_len % 8, 0);
    }

    #[test]
    fn corrupt_data_fails_the_checksum() {
        let mut b = sample().to_bytes();
        let last = b.len() - 1;
        b[last] ^= 1;
        assert!(matches!(
            Model::from_bytes(&b),
            Err(ModelError::Checksum { .. })
        ));
    }

    #[test]
    fn malformed_files_are_refused_with_reasons() {
        let good = sample().to_bytes();
        assert!(matches!(
            Model::from_bytes(&[]),
            Err(ModelError::Container(_))
        ));
        assert!(matches!(
            Model::from_bytes(&good[..good.len() - 4]),
            Err(ModelError::Container(_))
        ));
        let cases: [(&str, &str, ModelError); 5] = [
            (
                "\"format_version\":\"1\"",
                "\"format_version\":\"2\"",
                ModelError::BadMetadata {
                    key: "format_version",
                    value: "2".into(),
                    expected: FORMAT_VERSION,
                },
            ),
            (
                "\"fixed_point\":\"q16.16\"",
                "\"fixed_point\":\"q8.8\"",
                ModelError::BadMetadata {
                    key: "fixed_point",
                    value: "q8.8".into(),
                    expected: FIXED_POINT,
                },
            ),
            (
                "\"format\":\"virtio-nn\"",
                "\"formal\":\"virtio-nn\"",
                ModelError::MissingMetadata("format"),
            ),
            (
                "relu,identity",
                "relu,sigmoid",
                ModelError::BadMetadata {
                    key: "activations",
                    value: "sigmoid".into(),
                    expected: "`relu` or `identity` for each layer",
                },
            ),
            (
                "relu,identity",
                "relu,identity,relu",
                ModelError::MissingTensor("layers.2.weight".into()),
            ),
        ];
        for (from, to, want) in cases {
            let b = with_header(&good, |h| {
                assert!(h.contains(from), "{from} not in {h}");
                h.replace(from, to)
            });
            assert_eq!(Model::from_bytes(&b), Err(want), "{from} -> {to}");
        }
        let b = with_header(&good, |h| {
            h.replace("\"dtype\":\"I32\"", "\"dtype\":\"F32\"")
        });
        assert!(matches!(
            Model::from_bytes(&b),
            Err(ModelError::BadDtype { .. })
        ));
        let b = with_header(&good, |h| {
            h.replacen("layers.1.bias", "layers.1.bias_extra", 1)
        });
        assert!(
            matches!(Model::from_bytes(&b), Err(ModelError::MissingTensor(t)) if t == "layers.1.bias")
        );
    }

    #[test]
    fn mismatched_chain_is_refused() {
        // Layer 0 gives 2 outputs, layer 1 takes 3 inputs: each tensor is
        // consistent on its own, so only the chain check can catch it.
        let tensors: [(&str, Vec<usize>, Vec<i32>); 4] = [
            ("layers.0.weight", vec![2, 3], vec![1; 6]),
            ("layers.0.bias", vec![2], vec![0; 2]),
            ("layers.1.weight", vec![1, 3], vec![1; 3]),
            ("layers.1.bias", vec![1], vec![0]),
        ];
        let data: Vec<Vec<u8>> = tensors
            .iter()
            .map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect())
            .collect();
        let crc = CRC32C.checksum(&data.concat());
        let views = tensors
            .iter()
            .zip(&data)
            .map(|((n, s, _), d)| (*n, TensorView::new(Dtype::I32, s.clone(), d).unwrap()));
        let metadata = [
            ("format", FORMAT.to_string()),
            ("format_version", FORMAT_VERSION.to_string()),
            ("fixed_point", FIXED_POINT.to_string()),
            ("activations", "relu,identity".to_string()),
            ("checksum", format!("crc32c:{crc:08x}")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let b = safetensors::serialize(views, Some(metadata)).unwrap();
        assert_eq!(
            Model::from_bytes(&b),
            Err(ModelError::Shape(ShapeError::Chain {
                layer: 1,
                got: 3,
                expected: 2
            }))
        );
    }

    #[test]
    fn a_long_name_is_refused() {
        let mut m = sample();
        m.name = "n".repeat(MAX_NAME_LEN);
        assert_eq!(Model::from_bytes(&m.to_bytes()).unwrap().name, m.name);
        m.name.push('n');
        assert_eq!(
            Model::from_bytes(&m.to_bytes()),
            Err(ModelError::NameTooLong(MAX_NAME_LEN + 1))
        );
    }

    /// A FIFO at the path (say, swapped in after a check of the path) is
    /// refused at once, not waited on for a writer that never comes.
    #[cfg(feature = "std")]
    #[test]
    fn a_fifo_is_refused_at_once() {
        use std::os::unix::ffi::OsStrExt;
        use std::os::unix::fs::OpenOptionsExt;
        let dir = std::env::temp_dir().join(format!("nn-core-fifo-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        let fifo = dir.join("model.safetensors");
        let c = std::ffi::CString::new(fifo.as_os_str().as_bytes()).unwrap();
        // SAFETY: `c` is a NUL-terminated path that outlives the call.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let (tx, rx) = std::sync::mpsc::channel();
        let path = fifo.clone();
        std::thread::spawn(move || tx.send(read_file(&path).map(|b| b.len())));
        let r = rx.recv_timeout(std::time::Duration::from_secs(10));
        // Unblock a reader that did wait (a broken read_file), then clean up.
        let _ = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo);
        let _ = std::fs::remove_dir_all(&dir);
        match r {
            Ok(Err(LoadError::NotAFile(p))) => assert_eq!(p, fifo.display().to_string()),
            other => panic!("expected NotAFile at once, got {other:?}"),
        }
        assert!(matches!(
            read_file(std::path::Path::new("/dev/zero")),
            Err(LoadError::NotAFile(_))
        ));
    }
}
