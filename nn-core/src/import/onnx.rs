// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Import of an ONNX MLP.
//!
//! The protobuf messages are the subset of `onnx.proto` (ONNX IR) this
//! importer reads, declared with `prost`'s derive: no code generation step
//! and no `protoc`. Fields not declared here are skipped by the decoder.
//!
//! # What is accepted
//! One graph input of a float type (`[batch, in]`), one graph output, and a
//! single chain of nodes from the input to the output made of:
//! * `Gemm(x, W, C)` with `transA = 0`, `transB` 0 or 1, any `alpha`/`beta`
//!   (folded into the weights before quantization), `W` and `C` initializers
//!   (`C` of shape `[out]` or `[1, out]`, optional);
//! * `MatMul(x, W)` with an initializer `W` of shape `[in, out]`, optionally
//!   followed by `Add(·, b)` with an initializer `b` of shape `[out]` or
//!   `[1, out]` (either operand order);
//! * `Relu` after a dense layer; `Identity` anywhere.
//!
//! Initializers may be FLOAT, DOUBLE, FLOAT16 or BFLOAT16, inline or as
//! `raw_data` (not external data). Anything else — another operator, a
//! branch, an initializer used as data, a non-float type — is refused with
//! the node or tensor named.

use std::collections::BTreeMap;
use std::string::{String, ToString};
use std::vec::Vec;

use prost::Message;

use super::{bf16_to_f64, check_dims, f16_to_f64, quantize, FloatLayer, ImportError, QuantReport};
use crate::mlp::{Activation, Mlp};

/// `onnx.ModelProto` (subset).
#[allow(missing_docs)]
#[derive(Clone, PartialEq, prost::Message)]
pub struct ModelProto {
    #[prost(int64, tag = "1")]
    pub ir_version: i64,
    #[prost(string, tag = "2")]
    pub producer_name: String,
    #[prost(message, optional, tag = "7")]
    pub graph: Option<GraphProto>,
    #[prost(message, repeated, tag = "8")]
    pub opset_import: Vec<OperatorSetIdProto>,
}

/// `onnx.OperatorSetIdProto`.
#[allow(missing_docs)]
#[derive(Clone, PartialEq, prost::Message)]
pub struct OperatorSetIdProto {
    #[prost(string, tag = "1")]
    pub domain: String,
    #[prost(int64, tag = "2")]
    pub version: i64,
}

/// `onnx.GraphProto` (subset).
#[allow(missing_docs)]
#[derive(Clone, PartialEq, prost::Message)]
pub struct GraphProto {
    #[prost(message, repeated, tag = "1")]
    pub node: Vec<NodeProto>,
    #[prost(string, tag = "2")]
    pub name: String,
    #[prost(message, repeated, tag = "5")]
    pub initializer: Vec<TensorProto>,
    #[prost(message, repeated, tag = "11")]
    pub input: Vec<ValueInfoProto>,
    #[prost(message, repeated, tag = "12")]
    pub output: Vec<ValueInfoProto>,
}

/// `onnx.NodeProto` (subset).
#[allow(missing_docs)]
#[derive(Clone, PartialEq, prost::Message)]
pub struct NodeProto {
    #[prost(string, repeated, tag = "1")]
    pub input: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    pub output: Vec<String>,
    #[prost(string, tag = "3")]
    pub name: String,
    #[prost(string, tag = "4")]
    pub op_type: String,
    #[prost(message, repeated, tag = "5")]
    pub attribute: Vec<AttributeProto>,
    #[prost(string, tag = "7")]
    pub domain: String,
}

/// `onnx.AttributeProto` (subset).
#[allow(missing_docs)]
#[derive(Clone, PartialEq, prost::Message)]
pub struct AttributeProto {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(float, tag = "2")]
    pub f: f32,
    #[prost(int64, tag = "3")]
    pub i: i64,
    /// `AttributeType`: 1 FLOAT, 2 INT, ...
    #[prost(int32, tag = "20")]
    pub r#type: i32,
}

/// `onnx.TensorProto` (subset).
#[allow(missing_docs)]
#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorProto {
    #[prost(int64, repeated, tag = "1")]
    pub dims: Vec<i64>,
    #[prost(int32, tag = "2")]
    pub data_type: i32,
    #[prost(float, repeated, tag = "4")]
    pub float_data: Vec<f32>,
    #[prost(int32, repeated, tag = "5")]
    pub int32_data: Vec<i32>,
    #[prost(string, tag = "8")]
    pub name: String,
    #[prost(bytes = "vec", tag = "9")]
    pub raw_data: Vec<u8>,
    #[prost(double, repeated, tag = "10")]
    pub double_data: Vec<f64>,
    #[prost(message, repeated, tag = "13")]
    pub external_data: Vec<StringStringEntryProto>,
    #[prost(int32, tag = "14")]
    pub data_location: i32,
}

/// `onnx.StringStringEntryProto`.
#[allow(missing_docs)]
#[derive(Clone, PartialEq, prost::Message)]
pub struct StringStringEntryProto {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

/// `onnx.ValueInfoProto` (subset).
#[allow(missing_docs)]
#[derive(Clone, PartialEq, prost::Message)]
pub struct ValueInfoProto {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, optional, tag = "2")]
    pub r#type: Option<TypeProto>,
}

/// `onnx.TypeProto` (only the tensor case).
#[allow(missing_docs)]
#[derive(Clone, PartialEq, prost::Message)]
pub struct TypeProto {
    #[prost(message, optional, tag = "1")]
    pub tensor_type: Option<TensorTypeProto>,
}

/// `onnx.TypeProto.Tensor`.
#[allow(missing_docs)]
#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorTypeProto {
    #[prost(int32, tag = "1")]
    pub elem_type: i32,
    #[prost(message, optional, tag = "2")]
    pub shape: Option<TensorShapeProto>,
}

/// `onnx.TensorShapeProto`.
#[allow(missing_docs)]
#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorShapeProto {
    #[prost(message, repeated, tag = "1")]
    pub dim: Vec<Dimension>,
}

/// `onnx.TensorShapeProto.Dimension`.
#[allow(missing_docs)]
#[derive(Clone, PartialEq, prost::Message)]
pub struct Dimension {
    #[prost(int64, optional, tag = "1")]
    pub dim_value: Option<i64>,
    #[prost(string, optional, tag = "2")]
    pub dim_param: Option<String>,
}

/// `TensorProto.DataType` values used here.
pub mod data_type {
    /// float32
    pub const FLOAT: i32 = 1;
    /// int32
    pub const INT32: i32 = 6;
    /// float16
    pub const FLOAT16: i32 = 10;
    /// float64
    pub const DOUBLE: i32 = 11;
    /// bfloat16
    pub const BFLOAT16: i32 = 16;
}

fn is_float(dt: i32) -> bool {
    matches!(
        dt,
        data_type::FLOAT | data_type::FLOAT16 | data_type::DOUBLE | data_type::BFLOAT16
    )
}

/// Values of a float initializer, with its shape.
fn tensor_values(t: &TensorProto) -> Result<(Vec<usize>, Vec<f64>), ImportError> {
    let name = t.name.clone();
    if t.data_location == 1 || !t.external_data.is_empty() {
        return Err(ImportError::UnexpectedTensor {
            tensor: name,
            reason: "external data is not supported (save the model with its weights inline)"
                .into(),
        });
    }
    let shape: Vec<usize> = t
        .dims
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<Result<_, _>>()
        .map_err(|_| ImportError::Shape {
            tensor: name.clone(),
            shape: Vec::new(),
            expected: "non-negative dims".into(),
        })?;
    // Checked: `[2^32, 2^32]` must not wrap to 0 and match empty data.
    let count = shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| ImportError::Shape {
            tensor: name.clone(),
            shape: shape.clone(),
            expected: "dims whose product fits in memory".into(),
        })?;
    let raw = &t.raw_data;
    let values: Vec<f64> = match t.data_type {
        data_type::FLOAT if !raw.is_empty() => raw
            .chunks_exact(4)
            .map(|b| f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]])))
            .collect(),
        data_type::FLOAT => t.float_data.iter().map(|&v| f64::from(v)).collect(),
        data_type::DOUBLE if !raw.is_empty() => raw
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")))
            .collect(),
        data_type::DOUBLE => t.double_data.clone(),
        data_type::FLOAT16 | data_type::BFLOAT16 => {
            let conv = if t.data_type == data_type::FLOAT16 {
                f16_to_f64
            } else {
                bf16_to_f64
            };
            if raw.is_empty() {
                t.int32_data.iter().map(|&v| conv(v as u16)).collect()
            } else {
                raw.chunks_exact(2)
                    .map(|b| conv(u16::from_le_bytes([b[0], b[1]])))
                    .collect()
            }
        }
        other => {
            return Err(ImportError::Dtype {
                tensor: name,
                dtype: format!("ONNX data type {other}"),
            })
        }
    };
    if values.len() != count {
        return Err(ImportError::Shape {
            tensor: name,
            shape,
            expected: format!("{} values as the dims say, found {}", count, values.len()),
        });
    }
    Ok((shape, values))
}

fn node_name(n: &NodeProto) -> String {
    if !n.name.is_empty() {
        n.name.clone()
    } else {
        n.output.first().cloned().unwrap_or_default()
    }
}

fn refuse(n: &NodeProto, reason: impl Into<String>) -> ImportError {
    ImportError::Node {
        node: node_name(n),
        op: n.op_type.clone(),
        reason: reason.into(),
    }
}

/// A bias initializer of shape `[out]` or `[1, out]`.
fn bias_values(t: &TensorProto, out: usize) -> Result<Vec<f64>, ImportError> {
    let (shape, v) = tensor_values(t)?;
    if shape == [out] || shape == [1, out] {
        Ok(v)
    } else {
        Err(ImportError::Shape {
            tensor: t.name.clone(),
            shape,
            expected: format!("[{out}] or [1, {out}] (a bias)"),
        })
    }
}

/// Reads the float layers of an ONNX MLP.
pub fn read(bytes: &[u8]) -> Result<Vec<FloatLayer>, ImportError> {
    let model = ModelProto::decode(bytes).map_err(|e| ImportError::Container {
        format: "ONNX",
        reason: e.to_string(),
    })?;
    let graph = model.graph.ok_or_else(|| ImportError::Container {
        format: "ONNX",
        reason: "the model has no graph".into(),
    })?;
    let inits: BTreeMap<&str, &TensorProto> = graph
        .initializer
        .iter()
        .map(|t| (t.name.as_str(), t))
        .collect();
    let data_inputs: Vec<&ValueInfoProto> = graph
        .input
        .iter()
        .filter(|i| !inits.contains_key(i.name.as_str()))
        .collect();
    let input = match data_inputs.as_slice() {
        [one] => *one,
        other => {
            return Err(ImportError::Options(format!(
                "the graph has {} data inputs; an MLP has exactly one",
                other.len()
            )))
        }
    };
    let mut in_width = None;
    if let Some(tt) = input.r#type.as_ref().and_then(|t| t.tensor_type.as_ref()) {
        if !is_float(tt.elem_type) {
            return Err(ImportError::Dtype {
                tensor: input.name.clone(),
                dtype: format!("ONNX data type {}", tt.elem_type),
            });
        }
        if let Some(s) = &tt.shape {
            if s.dim.len() != 2 {
                return Err(ImportError::Shape {
                    tensor: input.name.clone(),
                    shape: s
                        .dim
                        .iter()
                        .map(|d| d.dim_value.unwrap_or(0) as usize)
                        .collect(),
                    expected: "[batch, features]".into(),
                });
            }
            in_width = s.dim[1].dim_value.map(|v| v as usize);
        }
    }
    let output = match graph.output.as_slice() {
        [one] => one.name.clone(),
        other => {
            return Err(ImportError::Options(format!(
                "the graph has {} outputs; an MLP has exactly one",
                other.len()
            )))
        }
    };

    let init = |n: &NodeProto, name: &str| -> Result<&TensorProto, ImportError> {
        inits
            .get(name)
            .copied()
            .ok_or_else(|| refuse(n, format!("operand `{name}` is not an initializer")))
    };
    let mut cur = input.name.clone();
    let mut layers: Vec<FloatLayer> = Vec::new();
    // A MatMul's layer may still take an Add's bias.
    let mut open_matmul = false;
    for n in &graph.node {
        if !n.domain.is_empty() && n.domain != "ai.onnx" {
            return Err(refuse(n, format!("operator domain `{}`", n.domain)));
        }
        if n.output.len() != 1 {
            return Err(refuse(n, "expected exactly one output"));
        }
        let data_operands = n.input.iter().filter(|i| **i == cur).count();
        if data_operands != 1 {
            return Err(refuse(
                n,
                format!("the chain is not linear: expected `{cur}` as exactly one operand"),
            ));
        }
        let was_open = open_matmul;
        open_matmul = false;
        match n.op_type.as_str() {
            "Gemm" => {
                let attr = |name: &str| n.attribute.iter().find(|a| a.name == name);
                for a in &n.attribute {
                    if !matches!(a.name.as_str(), "alpha" | "beta" | "transA" | "transB") {
                        return Err(refuse(n, format!("attribute `{}`", a.name)));
                    }
                }
                let alpha = attr("alpha").map_or(1.0, |a| f64::from(a.f));
                let beta = attr("beta").map_or(1.0, |a| f64::from(a.f));
                if attr("transA").is_some_and(|a| a.i != 0) {
                    return Err(refuse(n, "transA = 1"));
                }
                let trans_b = attr("transB").is_some_and(|a| a.i != 0);
                if n.input.len() < 2 || n.input[0] != cur {
                    return Err(refuse(n, format!("expected Gemm(`{cur}`, W[, C])")));
                }
                let wt = init(n, &n.input[1])?;
                let (shape, w) = tensor_values(wt)?;
                let (out_dim, in_dim) = match (shape.as_slice(), trans_b) {
                    (&[o, i], true) => (o, i),
                    (&[i, o], false) => (o, i),
                    _ => {
                        return Err(ImportError::Shape {
                            tensor: wt.name.clone(),
                            shape,
                            expected: "rank 2 (a Gemm weight)".into(),
                        })
                    }
                };
                // Before the transposed copy or a zero bias is allocated.
                check_dims(&wt.name, in_dim, out_dim)?;
                let mut weight = if trans_b {
                    w
                } else {
                    transpose(&w, in_dim, out_dim)
                };
                weight.iter_mut().for_each(|v| *v *= alpha);
                let (bias_name, mut bias) = match n.input.get(2).filter(|s| !s.is_empty()) {
                    Some(c) => {
                        let ct = init(n, c)?;
                        (Some(ct.name.clone()), bias_values(ct, out_dim)?)
                    }
                    None => (None, vec![0.0; out_dim]),
                };
                bias.iter_mut().for_each(|v| *v *= beta);
                layers.push(FloatLayer {
                    weight_name: wt.name.clone(),
                    bias_name,
                    in_dim,
                    out_dim,
                    weight,
                    bias,
                    activation: Activation::Identity,
                });
            }
            "MatMul" => {
                if n.input.len() != 2 || n.input[0] != cur {
                    return Err(refuse(n, format!("expected MatMul(`{cur}`, W)")));
                }
                let wt = init(n, &n.input[1])?;
                let (shape, w) = tensor_values(wt)?;
                let (in_dim, out_dim) = match shape.as_slice() {
                    &[i, o] => (i, o),
                    _ => {
                        return Err(ImportError::Shape {
                            tensor: wt.name.clone(),
                            shape,
                            expected: "[in, out] (a MatMul weight)".into(),
                        })
                    }
                };
                check_dims(&wt.name, in_dim, out_dim)?;
                layers.push(FloatLayer {
                    weight_name: wt.name.clone(),
                    bias_name: None,
                    in_dim,
                    out_dim,
                    weight: transpose(&w, in_dim, out_dim),
                    bias: vec![0.0; out_dim],
                    activation: Activation::Identity,
                });
                open_matmul = true;
            }
            "Add" => {
                if !was_open {
                    return Err(refuse(n, "Add is only supported as the bias of a MatMul"));
                }
                let other = n.input.iter().find(|i| **i != cur);
                let Some(other) = other.filter(|_| n.input.len() == 2) else {
                    return Err(refuse(n, "expected Add(x, b)"));
                };
                let bt = init(n, other)?;
                let last = layers.last_mut().expect("open MatMul");
                last.bias = bias_values(bt, last.out_dim)?;
                last.bias_name = Some(bt.name.clone());
            }
            "Relu" => match layers.last_mut() {
                Some(l) if l.activation == Activation::Identity => l.activation = Activation::Relu,
                Some(_) => return Err(refuse(n, "two Relu in a row")),
                None => return Err(refuse(n, "Relu before any dense layer")),
            },
            "Identity" => open_matmul = was_open,
            other => {
                return Err(refuse(
                    n,
                    format!(
                    "operator {other} (supported: Gemm, MatMul, Add after MatMul, Relu, Identity)"
                ),
                ))
            }
        }
        cur = n.output[0].clone();
    }
    if cur != output {
        return Err(ImportError::Options(format!(
            "the chain of nodes ends at `{cur}`, not at the graph output `{output}`"
        )));
    }
    if let (Some(w), Some(first)) = (in_width, layers.first()) {
        if w != first.in_dim {
            return Err(ImportError::Chain {
                layer: first.weight_name.clone(),
                got: first.in_dim,
                expected: w,
            });
        }
    }
    Ok(layers)
}

fn transpose(w: &[f64], rows: usize, cols: usize) -> Vec<f64> {
    let mut t = vec![0.0; w.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = w[r * cols + c];
        }
    }
    t
}

/// Reads and quantizes an ONNX MLP.
pub fn import(bytes: &[u8]) -> Result<(Mlp, QuantReport), ImportError> {
    quantize(&read(bytes)?)
}

/// Builds an ONNX model of a float MLP: `Gemm` (`transB = 1`) per layer,
/// `Relu` where the layer has it; input `x` `[N, in]` and output `y`
/// `[N, out]` in f32. Used by tests and benchmarks to feed the same weights
/// to other runtimes.
pub fn export(layers: &[FloatLayer]) -> Vec<u8> {
    let f32_tensor = |name: &str, dims: Vec<i64>, v: &[f64]| TensorProto {
        dims,
        data_type: data_type::FLOAT,
        name: name.into(),
        raw_data: v.iter().flat_map(|&x| (x as f32).to_le_bytes()).collect(),
        ..Default::default()
    };
    let value_info = |name: &str, width: usize| ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            tensor_type: Some(TensorTypeProto {
                elem_type: data_type::FLOAT,
                shape: Some(TensorShapeProto {
                    dim: vec![
                        Dimension {
                            dim_value: None,
                            dim_param: Some("N".into()),
                        },
                        Dimension {
                            dim_value: Some(width as i64),
                            dim_param: None,
                        },
                    ],
                }),
            }),
        }),
    };
    let mut nodes = Vec::new();
    let mut inits = Vec::new();
    let mut cur = "x".to_string();
    for (k, l) in layers.iter().enumerate() {
        let (w, b) = (format!("layers.{k}.weight"), format!("layers.{k}.bias"));
        inits.push(f32_tensor(
            &w,
            vec![l.out_dim as i64, l.in_dim as i64],
            &l.weight,
        ));
        inits.push(f32_tensor(&b, vec![l.out_dim as i64], &l.bias));
        let last = k + 1 == layers.len();
        let gemm_out = if last && l.activation == Activation::Identity {
            "y".to_string()
        } else {
            format!("gemm{k}")
        };
        nodes.push(NodeProto {
            input: vec![cur.clone(), w, b],
            output: vec![gemm_out.clone()],
            name: format!("gemm{k}"),
            op_type: "Gemm".into(),
            attribute: vec![AttributeProto {
                name: "transB".into(),
                i: 1,
                r#type: 2,
                ..Default::default()
            }],
            ..Default::default()
        });
        cur = gemm_out;
        if l.activation == Activation::Relu {
            let out = if last { "y".into() } else { format!("relu{k}") };
            nodes.push(NodeProto {
                input: vec![cur.clone()],
                output: vec![out.clone()],
                name: format!("relu{k}"),
                op_type: "Relu".into(),
                ..Default::default()
            });
            cur = out;
        }
    }
    let model = ModelProto {
        ir_version: 8,
        producer_name: "nn-core".into(),
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: 13,
        }],
        graph: Some(GraphProto {
            node: nodes,
            name: "mlp".into(),
            initializer: inits,
            input: vec![value_info("x", layers.first().map_or(0, |l| l.in_dim))],
            output: vec![value_info("y", layers.last().map_or(0, |l| l.out_dim))],
        }),
    };
    model.encode_to_vec()
}

/// The float layers of a network (Q16.16 values converted exactly).
pub fn float_layers(mlp: &Mlp) -> Vec<FloatLayer> {
    mlp.layers()
        .iter()
        .enumerate()
        .map(|(k, l)| FloatLayer {
            weight_name: format!("layers.{k}.weight"),
            bias_name: Some(format!("layers.{k}.bias")),
            in_dim: l.in_dim(),
            out_dim: l.out_dim(),
            weight: l
                .weights()
                .iter()
                .map(|&v| crate::quant::to_f64(v))
                .collect(),
            bias: l.bias().iter().map(|&v| crate::quant::to_f64(v)).collect(),
            activation: l.activation(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layers() -> Vec<FloatLayer> {
        vec![
            FloatLayer {
                weight_name: "a".into(),
                bias_name: Some("ab".into()),
                in_dim: 2,
                out_dim: 3,
                weight: vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
                bias: vec![0.5, -0.5, 0.25],
                activation: Activation::Relu,
            },
            FloatLayer {
                weight_name: "b".into(),
                bias_name: Some("bb".into()),
                in_dim: 3,
                out_dim: 1,
                weight: vec![1.0, -1.0, 0.5],
                bias: vec![0.0],
                activation: Activation::Identity,
            },
        ]
    }

    fn model() -> ModelProto {
        ModelProto::decode(export(&layers()).as_slice()).unwrap()
    }

    fn graph(m: &mut ModelProto) -> &mut GraphProto {
        m.graph.as_mut().unwrap()
    }

    #[test]
    fn gemm_chain_round_trips() {
        let (m, r) = import(&export(&layers())).unwrap();
        assert_eq!(m.dims(), vec![2, 3, 1]);
        assert_eq!(r.max_abs_error, 0.0);
        assert_eq!(m.layers()[0].weights()[1], 2 << 16);
        assert_eq!(m.layers()[0].activation(), Activation::Relu);
        assert_eq!(m.layers()[1].activation(), Activation::Identity);
    }

    #[test]
    fn matmul_add_and_gemm_attributes() {
        let mut m = model();
        let g = graph(&mut m);
        // Layer 0 as MatMul(x, W^T) + Add(b, ·); layer 1 as Gemm with
        // transB = 0, alpha = 2, beta = 4.
        g.initializer[0].dims = vec![2, 3];
        g.initializer[0].raw_data = [1.0f32, 3.0, 5.0, 2.0, 4.0, 6.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let gemm0 = g.node.remove(0);
        g.node.insert(
            0,
            NodeProto {
                input: vec!["x".into(), gemm0.input[1].clone()],
                output: vec!["mm".into()],
                op_type: "MatMul".into(),
                ..Default::default()
            },
        );
        g.node.insert(
            1,
            NodeProto {
                input: vec![gemm0.input[2].clone(), "mm".into()],
                output: vec!["gemm0".into()],
                op_type: "Add".into(),
                ..Default::default()
            },
        );
        g.initializer[2].dims = vec![3, 1];
        g.initializer[3].raw_data = 1.0f32.to_le_bytes().to_vec();
        let gemm1 = g.node.iter_mut().find(|n| n.name == "gemm1").unwrap();
        gemm1.attribute = vec![
            AttributeProto {
                name: "alpha".into(),
                f: 2.0,
                r#type: 1,
                ..Default::default()
            },
            AttributeProto {
                name: "beta".into(),
                f: 4.0,
                r#type: 1,
                ..Default::default()
            },
        ];
        let (mlp, _) = import(&m.encode_to_vec()).unwrap();
        let want = import(&export(&layers())).unwrap().0;
        assert_eq!(mlp.layers()[0], want.layers()[0]);
        assert_eq!(mlp.layers()[1].weights(), &[2 << 16, -2 << 16, 1 << 16]);
        assert_eq!(mlp.layers()[1].bias(), &[4 << 16]);
    }

    fn refused(m: &ModelProto) -> ImportError {
        import(&m.encode_to_vec()).unwrap_err()
    }

    #[test]
    fn refusals_name_the_node_or_tensor() {
        assert!(matches!(
            import(b"\xff\xff\xff"),
            Err(ImportError::Container { .. })
        ));
        // Another operator.
        let mut m = model();
        graph(&mut m).node[1].op_type = "Sigmoid".into();
        assert!(
            matches!(refused(&m), ImportError::Node { node, op, .. } if node == "relu0" && op == "Sigmoid")
        );
        // A data operand that is not an initializer.
        let mut m = model();
        graph(&mut m).node[0].input[1] = "nowhere".into();
        assert!(matches!(refused(&m), ImportError::Node { node, .. } if node == "gemm0"));
        // transA.
        let mut m = model();
        graph(&mut m).node[0].attribute.push(AttributeProto {
            name: "transA".into(),
            i: 1,
            ..Default::default()
        });
        assert!(
            matches!(refused(&m), ImportError::Node { reason, .. } if reason.contains("transA"))
        );
        // A bare Add.
        let mut m = model();
        graph(&mut m).node[1].op_type = "Add".into();
        assert!(matches!(refused(&m), ImportError::Node { op, .. } if op == "Add"));
        // Unsupported dtype of an initializer.
        let mut m = model();
        graph(&mut m).initializer[1].data_type = data_type::INT32;
        assert!(
            matches!(refused(&m), ImportError::Dtype { tensor, .. } if tensor == "layers.0.bias")
        );
        // NaN.
        let mut m = model();
        graph(&mut m).initializer[2].raw_data[0..4].copy_from_slice(&f32::NAN.to_le_bytes());
        assert!(
            matches!(refused(&m), ImportError::NonFinite { tensor, index: 0, .. } if tensor == "layers.1.weight")
        );
        // Out of range.
        let mut m = model();
        graph(&mut m).initializer[2].raw_data[4..8].copy_from_slice(&1e9f32.to_le_bytes());
        assert!(
            matches!(refused(&m), ImportError::OutOfRange { tensor, index: 1, .. } if tensor == "layers.1.weight")
        );
        // Wrong shapes: bias and a weight of rank 3.
        let mut m = model();
        graph(&mut m).initializer[1].dims = vec![1, 1, 3];
        assert!(
            matches!(refused(&m), ImportError::Shape { tensor, .. } if tensor == "layers.0.bias")
        );
        let mut m = model();
        graph(&mut m).initializer[0].dims = vec![1, 3, 2];
        assert!(
            matches!(refused(&m), ImportError::Shape { tensor, .. } if tensor == "layers.0.weight")
        );
        // Dims that do not chain.
        let mut m = model();
        let g = graph(&mut m);
        g.initializer[2].dims = vec![1, 2];
        g.initializer[2].raw_data.truncate(8);
        assert!(
            matches!(refused(&m), ImportError::Chain { layer, got: 2, expected: 3 } if layer == "layers.1.weight")
        );
        // Input of an integer type.
        let mut m = model();
        graph(&mut m).input[0]
            .r#type
            .as_mut()
            .unwrap()
            .tensor_type
            .as_mut()
            .unwrap()
            .elem_type = data_type::INT32;
        assert!(matches!(refused(&m), ImportError::Dtype { tensor, .. } if tensor == "x"));
        // External data.
        let mut m = model();
        graph(&mut m).initializer[0].data_location = 1;
        assert!(
            matches!(refused(&m), ImportError::UnexpectedTensor { tensor, .. } if tensor == "layers.0.weight")
        );
        // A chain that does not reach the output.
        let mut m = model();
        graph(&mut m).output[0].name = "z".into();
        assert!(matches!(refused(&m), ImportError::Options(_)));
        // Two Relu in a row / Relu first.
        let mut m = model();
        let g = graph(&mut m);
        let mut r = g.node[1].clone();
        r.input = vec!["relu0".into()];
        r.output = vec!["relu0b".into()];
        r.name = "relu0b".into();
        g.node.insert(2, r);
        g.node[3].input[0] = "relu0b".into();
        assert!(matches!(refused(&m), ImportError::Node { node, .. } if node == "relu0b"));
    }

    /// Hostile dims are refused before anything is allocated for them:
    /// `[2^40, 0]` (no data, as the dims say) would ask for a zero bias of
    /// 2^40 values, `[2^32, 2^32]` overflows the element count (a panic in
    /// debug builds, a wrap to 0 matching the empty data in release ones).
    #[test]
    fn hostile_dims_are_refused_without_allocating() {
        let hostile = |dims: Vec<i64>, matmul: bool| {
            let mut m = model();
            let g = graph(&mut m);
            g.initializer[0].dims = dims;
            g.initializer[0].raw_data.clear();
            // No bias operand: the importer would make a zero bias itself.
            g.node[0].input.truncate(2);
            if matmul {
                g.node[0].op_type = "MatMul".into();
                g.node[0].attribute.clear();
            }
            refused(&m)
        };
        let too_wide = |dim| ImportError::TooWide {
            layer: "layers.0.weight".into(),
            dim,
        };
        // Gemm (transB = 1): [out, in]; MatMul: [in, out]. The input
        // width is checked first.
        assert_eq!(hostile(vec![1 << 40, 0], false), too_wide(0));
        assert_eq!(hostile(vec![0, 1 << 40], true), too_wide(0));
        assert_eq!(hostile(vec![0, 3], false), too_wide(0));
        for matmul in [false, true] {
            assert!(
                matches!(
                    hostile(vec![1 << 32, 1 << 32], matmul),
                    ImportError::Shape { tensor, expected, .. }
                        if tensor == "layers.0.weight" && expected.contains("product")
                ),
                "matmul: {matmul}"
            );
        }
    }
}
