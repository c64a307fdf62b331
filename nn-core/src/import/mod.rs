// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Importers of float models (feature `import`): a PyTorch `state_dict`
//! saved as safetensors ([`safetensors`]) and an ONNX MLP ([`onnx`]), both
//! quantized to Q16.16 ([`quantize`]) with a report of the largest
//! quantization error.
//!
//! Anything this engine cannot run exactly as the source means it is refused
//! with an [`ImportError`] naming the tensor or node and the reason: other
//! operators or tensors, shapes that do not chain, dtypes other than
//! F32/F64/F16/BF16, NaN or infinite values, values outside the Q16.16 range
//! `[-32768, 32768)`, and models beyond the engine's limits.

use std::string::{String, ToString};
use std::vec::Vec;

use crate::mlp::{Activation, Layer, Mlp, ShapeError};
use crate::protocol::{MAX_DIM, MAX_LAYERS};
use crate::{fixed, quant};

pub mod onnx;
pub mod safetensors;

/// Why a float model was refused.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum ImportError {
    /// The file is not a valid container (safetensors or ONNX protobuf).
    #[error("not a valid {format} file: {reason}")]
    Container {
        /// `"safetensors"` or `"ONNX"`.
        format: &'static str,
        /// The parser's message.
        reason: String,
    },
    /// A tensor of a dtype this importer does not read.
    #[error("tensor `{tensor}` has dtype {dtype}; supported: F32, F64, F16, BF16")]
    Dtype {
        /// The tensor.
        tensor: String,
        /// Its dtype.
        dtype: String,
    },
    /// A tensor of the wrong rank or sizes.
    #[error("tensor `{tensor}` has shape {shape:?}, expected {expected}")]
    Shape {
        /// The tensor.
        tensor: String,
        /// Its shape.
        shape: Vec<usize>,
        /// What was expected.
        expected: String,
    },
    /// A NaN or infinite value.
    #[error("tensor `{tensor}` holds {value} at index {index}: not a finite number")]
    NonFinite {
        /// The tensor.
        tensor: String,
        /// Flat index of the value.
        index: usize,
        /// The value.
        value: f64,
    },
    /// A value outside the Q16.16 range.
    #[error("tensor `{tensor}` holds {value} at index {index}, outside the Q16.16 range [-32768, 32768)")]
    OutOfRange {
        /// The tensor.
        tensor: String,
        /// Flat index of the value.
        index: usize,
        /// The value.
        value: f64,
    },
    /// A tensor that is not a dense layer's weight or bias.
    #[error("tensor `{tensor}` is not supported: {reason}")]
    UnexpectedTensor {
        /// The tensor.
        tensor: String,
        /// Why.
        reason: String,
    },
    /// A tensor that should be there is not.
    #[error("tensor `{0}` is missing")]
    MissingTensor(String),
    /// An ONNX node this importer does not run.
    #[error("node `{node}` ({op}) is not supported: {reason}")]
    Node {
        /// The node's name (or its first output when unnamed).
        node: String,
        /// Its operator.
        op: String,
        /// Why.
        reason: String,
    },
    /// A layer whose input width is not the previous layer's output width.
    #[error("layer `{layer}` takes {got} inputs but the previous layer gives {expected}")]
    Chain {
        /// The layer (its weight tensor).
        layer: String,
        /// Its input width.
        got: usize,
        /// The previous layer's output width.
        expected: usize,
    },
    /// No dense layer at all.
    #[error("no dense layer found")]
    NoLayers,
    /// More layers than the engine runs.
    #[error("{0} layers; at most {max} are supported", max = MAX_LAYERS)]
    TooManyLayers(usize),
    /// A layer wider than the engine runs.
    #[error("layer `{layer}`: width {dim} is outside 1..={max}", max = MAX_DIM)]
    TooWide {
        /// The layer (its weight tensor).
        layer: String,
        /// The width.
        dim: usize,
    },
    /// A bad option (e.g. an explicit layer list or activation list).
    #[error("{0}")]
    Options(String),
    /// The quantized layers do not form a model (should not happen after
    /// the checks above).
    #[error("invalid model: {0}")]
    Model(#[from] ShapeError),
}

/// One dense layer in floating point, as read from a file.
#[derive(Clone, Debug, PartialEq)]
pub struct FloatLayer {
    /// Name of the weight tensor (for messages).
    pub weight_name: String,
    /// Name of the bias tensor, if the layer has one (zeros otherwise).
    pub bias_name: Option<String>,
    /// Input width.
    pub in_dim: usize,
    /// Output width.
    pub out_dim: usize,
    /// Row-major `[out_dim][in_dim]`.
    pub weight: Vec<f64>,
    /// `out_dim` values.
    pub bias: Vec<f64>,
    /// Activation after the layer.
    pub activation: Activation,
}

/// The largest quantization error of an import.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct QuantReport {
    /// Largest `|q - x|` over all values, in real units (at most 2^-17 for
    /// values in range).
    pub max_abs_error: f64,
    /// The tensor holding it.
    pub tensor: String,
    /// Its flat index there.
    pub index: usize,
    /// The float value.
    pub value: f64,
    /// Number of values quantized.
    pub values: usize,
}

impl core::fmt::Display for QuantReport {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "{} values quantized to Q16.16; largest error {:.3e} (= {:.3} LSB) at `{}`[{}] = {}",
            self.values,
            self.max_abs_error,
            self.max_abs_error * f64::from(fixed::ONE),
            self.tensor,
            self.index,
            self.value
        )
    }
}

/// Refuses a layer whose widths are outside `1..=MAX_DIM`. The importers
/// call it as soon as they know a weight's shape, before anything is
/// allocated for the layer (a zero bias of `out` values, a transposed
/// copy): a hostile shape such as `[2^40, 0]` holds no data, so only this
/// check stands between it and an allocation of terabytes.
pub(crate) fn check_dims(layer: &str, in_dim: usize, out_dim: usize) -> Result<(), ImportError> {
    match [in_dim, out_dim]
        .into_iter()
        .find(|&d| d == 0 || d > MAX_DIM as usize)
    {
        Some(dim) => Err(ImportError::TooWide {
            layer: layer.to_string(),
            dim,
        }),
        None => Ok(()),
    }
}

fn check_finite(tensor: &str, values: &[f64]) -> Result<(), ImportError> {
    match values.iter().position(|v| !v.is_finite()) {
        Some(index) => Err(ImportError::NonFinite {
            tensor: tensor.to_string(),
            index,
            value: values[index],
        }),
        None => Ok(()),
    }
}

fn quantize_tensor(
    tensor: &str,
    values: &[f64],
    report: &mut QuantReport,
) -> Result<Vec<i32>, ImportError> {
    check_finite(tensor, values)?;
    values
        .iter()
        .enumerate()
        .map(|(index, &value)| {
            let q = quant::from_f64(value).ok_or_else(|| ImportError::OutOfRange {
                tensor: tensor.to_string(),
                index,
                value,
            })?;
            let err = (quant::to_f64(q) - value).abs();
            report.values += 1;
            if err > report.max_abs_error || report.tensor.is_empty() {
                *report = QuantReport {
                    max_abs_error: err,
                    tensor: tensor.to_string(),
                    index,
                    value,
                    values: report.values,
                };
            }
            Ok(q)
        })
        .collect()
}

/// Checks the chain of float layers (count, widths, shapes, finite values)
/// and quantizes it to Q16.16 (nearest, ties away from zero).
pub fn quantize(layers: &[FloatLayer]) -> Result<(Mlp, QuantReport), ImportError> {
    if layers.is_empty() {
        return Err(ImportError::NoLayers);
    }
    if layers.len() > MAX_LAYERS {
        return Err(ImportError::TooManyLayers(layers.len()));
    }
    for (k, l) in layers.iter().enumerate() {
        for dim in [l.in_dim, l.out_dim] {
            if dim == 0 || dim > MAX_DIM as usize {
                return Err(ImportError::TooWide {
                    layer: l.weight_name.clone(),
                    dim,
                });
            }
        }
        if k > 0 && l.in_dim != layers[k - 1].out_dim {
            return Err(ImportError::Chain {
                layer: l.weight_name.clone(),
                got: l.in_dim,
                expected: layers[k - 1].out_dim,
            });
        }
    }
    let mut report = QuantReport::default();
    let mut out = Vec::with_capacity(layers.len());
    for l in layers {
        let w = quantize_tensor(&l.weight_name, &l.weight, &mut report)?;
        let bias_name = l.bias_name.clone().unwrap_or_else(|| "(no bias)".into());
        let b = quantize_tensor(&bias_name, &l.bias, &mut report)?;
        out.push(Layer::new(l.in_dim, l.out_dim, w, b, l.activation)?);
    }
    Ok((Mlp::new(out)?, report))
}

/// Parses an activation list such as `relu,relu,identity`.
pub fn parse_activations(s: &str) -> Result<Vec<Activation>, ImportError> {
    s.split(',')
        .map(|a| {
            Activation::from_name(a.trim()).ok_or_else(|| {
                ImportError::Options(format!(
                    "activation `{}`: expected `relu` or `identity`",
                    a.trim()
                ))
            })
        })
        .collect()
}

/// ReLU after every layer but the last, identity at the end (the default of
/// the safetensors importer).
pub fn default_activations(layers: usize) -> Vec<Activation> {
    (0..layers)
        .map(|k| {
            if k + 1 == layers {
                Activation::Identity
            } else {
                Activation::Relu
            }
        })
        .collect()
}

/// Converts an IEEE half-precision value.
pub(crate) fn f16_to_f64(h: u16) -> f64 {
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = i32::from((h >> 10) & 0x1f);
    let frac = f64::from(h & 0x3ff);
    match exp {
        0 => sign * frac * 2f64.powi(-24),
        31 if frac == 0.0 => sign * f64::INFINITY,
        31 => f64::NAN,
        e => sign * (1.0 + frac / 1024.0) * 2f64.powi(e - 15),
    }
}

/// Converts a bfloat16 value.
pub(crate) fn bf16_to_f64(h: u16) -> f64 {
    f64::from(f32::from_bits(u32::from(h) << 16))
}

/// Compares names "naturally": runs of digits as numbers, so `fc2` sorts
/// before `fc10` and `layers.2` before `layers.10`.
pub fn natural_cmp(a: &str, b: &str) -> core::cmp::Ordering {
    fn parts(s: &str) -> Vec<(bool, &str)> {
        let mut out = Vec::new();
        let mut start = 0;
        let bytes = s.as_bytes();
        for i in 1..=bytes.len() {
            if i == bytes.len() || bytes[i].is_ascii_digit() != bytes[start].is_ascii_digit() {
                out.push((bytes[start].is_ascii_digit(), &s[start..i]));
                start = i;
            }
        }
        out
    }
    let (pa, pb) = (parts(a), parts(b));
    for (x, y) in pa.iter().zip(&pb) {
        let ord = match (x, y) {
            ((true, x), (true, y)) => {
                let (x, y) = (x.trim_start_matches('0'), y.trim_start_matches('0'));
                x.len().cmp(&y.len()).then_with(|| x.cmp(y))
            }
            ((_, x), (_, y)) => x.cmp(y),
        };
        if ord.is_ne() {
            return ord;
        }
    }
    pa.len().cmp(&pb.len()).then_with(|| a.cmp(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_floats_convert() {
        assert_eq!(f16_to_f64(0x3c00), 1.0);
        assert_eq!(f16_to_f64(0xc000), -2.0);
        assert_eq!(f16_to_f64(0x0001), 2f64.powi(-24));
        assert_eq!(f16_to_f64(0x7bff), 65504.0);
        assert!(f16_to_f64(0x7c00).is_infinite());
        assert!(f16_to_f64(0x7e00).is_nan());
        assert_eq!(bf16_to_f64(0x3f80), 1.0);
        assert_eq!(bf16_to_f64(0xc040), -3.0);
    }

    #[test]
    fn natural_order() {
        let mut v = vec![
            "fc10",
            "fc2",
            "fc1",
            "layers.10",
            "layers.9",
            "0",
            "12",
            "2",
        ];
        v.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(
            v,
            [
                "0",
                "2",
                "12",
                "fc1",
                "fc2",
                "fc10",
                "layers.9",
                "layers.10"
            ]
        );
    }

    fn fl(name: &str, i: usize, o: usize, w: f64) -> FloatLayer {
        FloatLayer {
            weight_name: format!("{name}.weight"),
            bias_name: Some(format!("{name}.bias")),
            in_dim: i,
            out_dim: o,
            weight: vec![w; i * o],
            bias: vec![0.25; o],
            activation: Activation::Relu,
        }
    }

    #[test]
    fn quantization_reports_the_largest_error() {
        let (m, r) = quantize(&[fl("a", 2, 3, 0.1), fl("b", 3, 1, 1.0 / 3.0)]).unwrap();
        assert_eq!(m.dims(), vec![2, 3, 1]);
        assert_eq!(r.values, 6 + 3 + 3 + 1);
        assert!(r.max_abs_error <= 0.5 / 65536.0 + 1e-12 && r.max_abs_error > 0.0);
        assert_eq!(m.layers()[0].weights()[0], 6554); // round(0.1 * 65536)
    }

    #[test]
    fn refusals_name_the_tensor_and_reason() {
        let mut nan = fl("a", 2, 2, 1.0);
        nan.weight[3] = f64::NAN;
        assert!(matches!(
            quantize(&[nan]),
            Err(ImportError::NonFinite { tensor, index: 3, .. }) if tensor == "a.weight"
        ));
        let mut inf = fl("a", 2, 2, 1.0);
        inf.bias[1] = f64::NEG_INFINITY;
        assert!(matches!(
            quantize(&[inf]),
            Err(ImportError::NonFinite { tensor, index: 1, .. }) if tensor == "a.bias"
        ));
        let big = fl("a", 2, 2, 40000.0);
        assert!(matches!(
            quantize(&[big]),
            Err(ImportError::OutOfRange { tensor, index: 0, .. }) if tensor == "a.weight"
        ));
        assert!(matches!(
            quantize(&[fl("a", 2, 3, 1.0), fl("b", 4, 1, 1.0)]),
            Err(ImportError::Chain { layer, got: 4, expected: 3 }) if layer == "b.weight"
        ));
        assert_eq!(quantize(&[]), Err(ImportError::NoLayers));
        let many: Vec<_> = (0..8).map(|k| fl(&k.to_string(), 2, 2, 1.0)).collect();
        assert_eq!(quantize(&many), Err(ImportError::TooManyLayers(8)));
        assert!(matches!(
            quantize(&[fl("w", 2, 5000, 0.0)]),
            Err(ImportError::TooWide { dim: 5000, .. })
        ));
        assert!(parse_activations("relu,gelu").is_err());
    }
}
