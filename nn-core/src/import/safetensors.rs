// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Import of a PyTorch `state_dict` saved as safetensors
//! (`safetensors.torch.save_file(model.state_dict(), path)`).
//!
//! # What is accepted
//! * Every tensor is named `PREFIX.weight` (shape `[out, in]`, as
//!   `nn.Linear.weight`) or `PREFIX.bias` (shape `[out]`); a layer without a
//!   bias (`bias=False`) gets zeros. Any other tensor (a BatchNorm's
//!   `running_mean`, an embedding, a rank-1 `.weight` of a LayerNorm...) is
//!   refused, as ignoring it would change what the model computes.
//! * dtypes F32, F64, F16 and BF16; finite values in the Q16.16 range.
//! * Layer order: the prefixes sorted naturally (digit runs compared as
//!   numbers: `0 < 2 < 10`, `fc1 < fc2 < fc10`, `layers.9 < layers.10`),
//!   which is the order of an `nn.Sequential` or of numbered attributes; or
//!   an explicit list of prefixes ([`Options::layers`]), which must then name
//!   every layer of the file.
//! * Activations: ReLU after every layer but the last, identity at the end,
//!   unless [`Options::activations`] says otherwise (the activations are not
//!   in a `state_dict`).

use std::collections::BTreeMap;
use std::string::{String, ToString};
use std::vec::Vec;

use safetensors::{Dtype, SafeTensors};

use super::{
    bf16_to_f64, check_dims, default_activations, f16_to_f64, natural_cmp, quantize, FloatLayer,
    ImportError, QuantReport,
};
use crate::mlp::{Activation, Mlp};

/// Choices the file cannot tell.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// The layers' prefixes in order (default: all prefixes, sorted
    /// naturally).
    pub layers: Option<Vec<String>>,
    /// One activation per layer (default: ReLU, then identity at the end).
    pub activations: Option<Vec<Activation>>,
}

fn float_values(
    name: &str,
    t: &safetensors::tensor::TensorView<'_>,
) -> Result<Vec<f64>, ImportError> {
    let d = t.data();
    let v = match t.dtype() {
        Dtype::F32 => d
            .chunks_exact(4)
            .map(|b| f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]])))
            .collect(),
        Dtype::F64 => d
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")))
            .collect(),
        Dtype::F16 => d
            .chunks_exact(2)
            .map(|b| f16_to_f64(u16::from_le_bytes([b[0], b[1]])))
            .collect(),
        Dtype::BF16 => d
            .chunks_exact(2)
            .map(|b| bf16_to_f64(u16::from_le_bytes([b[0], b[1]])))
            .collect(),
        other => {
            return Err(ImportError::Dtype {
                tensor: name.to_string(),
                dtype: format!("{other:?}"),
            })
        }
    };
    Ok(v)
}

/// Reads the float layers of a safetensors `state_dict`.
pub fn read(bytes: &[u8], opts: &Options) -> Result<Vec<FloatLayer>, ImportError> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| ImportError::Container {
        format: "safetensors",
        reason: e.to_string(),
    })?;
    // prefix -> (has weight, has bias)
    let mut prefixes: BTreeMap<String, (bool, bool)> = BTreeMap::new();
    let mut names = st.names();
    names.sort_by(|a, b| natural_cmp(a, b));
    for name in &names {
        if let Some(p) = name.strip_suffix(".weight") {
            prefixes.entry(p.to_string()).or_default().0 = true;
        } else if let Some(p) = name.strip_suffix(".bias") {
            prefixes.entry(p.to_string()).or_default().1 = true;
        } else {
            return Err(ImportError::UnexpectedTensor {
                tensor: name.to_string(),
                reason: "only Linear layers' `.weight` and `.bias` are supported".into(),
            });
        }
    }
    if let Some((p, _)) = prefixes.iter().find(|(_, (w, _))| !*w) {
        return Err(ImportError::UnexpectedTensor {
            tensor: format!("{p}.bias"),
            reason: format!("a bias without a weight `{p}.weight`"),
        });
    }
    let order: Vec<String> = match &opts.layers {
        Some(list) => {
            if let Some(p) = prefixes.keys().find(|p| !list.contains(p)) {
                return Err(ImportError::UnexpectedTensor {
                    tensor: format!("{p}.weight"),
                    reason: "not in the given layer list".into(),
                });
            }
            list.clone()
        }
        None => {
            let mut v: Vec<String> = prefixes.keys().cloned().collect();
            v.sort_by(|a, b| natural_cmp(a, b));
            v
        }
    };
    let acts = match &opts.activations {
        Some(a) if a.len() != order.len() => {
            return Err(ImportError::Options(format!(
                "{} activations given for {} layers",
                a.len(),
                order.len()
            )))
        }
        Some(a) => a.clone(),
        None => default_activations(order.len()),
    };
    let mut layers = Vec::with_capacity(order.len());
    for (p, activation) in order.iter().zip(acts) {
        let wn = format!("{p}.weight");
        let w = st
            .tensor(&wn)
            .map_err(|_| ImportError::MissingTensor(wn.clone()))?;
        let (out_dim, in_dim) = match *w.shape() {
            [o, i] => (o, i),
            _ => {
                return Err(ImportError::Shape {
                    tensor: wn,
                    shape: w.shape().to_vec(),
                    expected: "[out, in] (a Linear weight)".into(),
                })
            }
        };
        // Before the values are read or a zero bias allocated.
        check_dims(&wn, in_dim, out_dim)?;
        let weight = float_values(&wn, &w)?;
        let bn = format!("{p}.bias");
        let (bias_name, bias) = match st.tensor(&bn) {
            Ok(b) => {
                if b.shape() != [out_dim] {
                    return Err(ImportError::Shape {
                        tensor: bn,
                        shape: b.shape().to_vec(),
                        expected: format!("[{out_dim}]"),
                    });
                }
                let v = float_values(&bn, &b)?;
                (Some(bn), v)
            }
            Err(_) => (None, vec![0.0; out_dim]),
        };
        layers.push(FloatLayer {
            weight_name: wn,
            bias_name,
            in_dim,
            out_dim,
            weight,
            bias,
            activation,
        });
    }
    Ok(layers)
}

/// Reads and quantizes a safetensors `state_dict`.
pub fn import(bytes: &[u8], opts: &Options) -> Result<(Mlp, QuantReport), ImportError> {
    quantize(&read(bytes, opts)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::tensor::TensorView;

    fn file(tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) -> Vec<u8> {
        let views: Vec<(String, TensorView<'_>)> = tensors
            .iter()
            .map(|(n, d, s, b)| (n.to_string(), TensorView::new(*d, s.clone(), b).unwrap()))
            .collect();
        safetensors::serialize(views, None).unwrap()
    }

    fn f32s(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    fn seq() -> Vec<(&'static str, Dtype, Vec<usize>, Vec<u8>)> {
        vec![
            ("0.weight", Dtype::F32, vec![3, 2], f32s(&[1.0; 6])),
            ("0.bias", Dtype::F32, vec![3], f32s(&[0.5; 3])),
            ("2.weight", Dtype::F32, vec![1, 3], f32s(&[-1.0; 3])),
            ("2.bias", Dtype::F32, vec![1], f32s(&[0.25])),
        ]
    }

    #[test]
    fn sequential_state_dict_imports() {
        let (m, r) = import(&file(&seq()), &Options::default()).unwrap();
        assert_eq!(m.dims(), vec![2, 3, 1]);
        assert_eq!(r.max_abs_error, 0.0);
        assert_eq!(m.layers()[0].activation(), Activation::Relu);
        assert_eq!(m.layers()[1].activation(), Activation::Identity);
        // x = (1, 2): h = 3.5 each, y = -10.5 + 0.25
        let y = m.predict(&[1 << 16, 2 << 16]).unwrap();
        assert_eq!(y, vec![(-41 << 16) / 4]);
    }

    #[test]
    fn other_dtypes_and_natural_order() {
        let h = |v: u16, n: usize| -> Vec<u8> { (0..n).flat_map(|_| v.to_le_bytes()).collect() };
        let f64s = |v: f64, n: usize| -> Vec<u8> { (0..n).flat_map(|_| v.to_le_bytes()).collect() };
        let t = vec![
            ("fc10.weight", Dtype::BF16, vec![1, 4], h(0x3f80, 4)),
            ("fc2.weight", Dtype::F16, vec![4, 3], h(0x3c00, 12)),
            ("fc2.bias", Dtype::F64, vec![4], f64s(0.5, 4)),
            ("fc1.weight", Dtype::F64, vec![3, 2], f64s(1.0, 6)),
        ];
        let (m, _) = import(&file(&t), &Options::default()).unwrap();
        assert_eq!(m.dims(), vec![2, 3, 4, 1]);
        assert_eq!(m.layers()[0].bias(), &[0, 0, 0], "no bias: zeros");
    }

    #[test]
    fn explicit_layers_and_activations() {
        let opts = Options {
            layers: Some(vec!["0".into(), "2".into()]),
            activations: Some(vec![Activation::Identity, Activation::Relu]),
        };
        let (m, _) = import(&file(&seq()), &opts).unwrap();
        assert_eq!(m.layers()[1].activation(), Activation::Relu);
        let bad = Options {
            layers: Some(vec!["0".into()]),
            activations: None,
        };
        assert!(matches!(
            import(&file(&seq()), &bad),
            Err(ImportError::UnexpectedTensor { tensor, .. }) if tensor == "2.weight"
        ));
        let missing = Options {
            layers: Some(vec!["0".into(), "2".into(), "4".into()]),
            activations: None,
        };
        assert_eq!(
            import(&file(&seq()), &missing),
            Err(ImportError::MissingTensor("4.weight".into()))
        );
        let acts = Options {
            layers: None,
            activations: Some(vec![Activation::Relu]),
        };
        assert!(matches!(
            import(&file(&seq()), &acts),
            Err(ImportError::Options(_))
        ));
    }

    #[test]
    fn refusals_name_the_tensor() {
        assert!(matches!(
            import(b"not a file", &Options::default()),
            Err(ImportError::Container { .. })
        ));
        let mut t = seq();
        t.push(("1.running_mean", Dtype::F32, vec![3], f32s(&[0.0; 3])));
        assert!(matches!(
            import(&file(&t), &Options::default()),
            Err(ImportError::UnexpectedTensor { tensor, .. }) if tensor == "1.running_mean"
        ));
        let mut t = seq();
        t.push(("4.bias", Dtype::F32, vec![1], f32s(&[0.0])));
        assert!(matches!(
            import(&file(&t), &Options::default()),
            Err(ImportError::UnexpectedTensor { tensor, .. }) if tensor == "4.bias"
        ));
        let mut t = seq();
        t[0] = ("0.weight", Dtype::I32, vec![3, 2], vec![0; 24]);
        assert!(matches!(
            import(&file(&t), &Options::default()),
            Err(ImportError::Dtype { tensor, .. }) if tensor == "0.weight"
        ));
        let mut t = seq();
        t[0] = ("0.weight", Dtype::F32, vec![6], f32s(&[1.0; 6]));
        assert!(matches!(
            import(&file(&t), &Options::default()),
            Err(ImportError::Shape { tensor, .. }) if tensor == "0.weight"
        ));
        let mut t = seq();
        t[1] = ("0.bias", Dtype::F32, vec![2], f32s(&[1.0; 2]));
        assert!(matches!(
            import(&file(&t), &Options::default()),
            Err(ImportError::Shape { tensor, .. }) if tensor == "0.bias"
        ));
        let mut t = seq();
        t[2] = ("2.weight", Dtype::F32, vec![1, 4], f32s(&[1.0; 4]));
        assert!(matches!(
            import(&file(&t), &Options::default()),
            Err(ImportError::Chain { layer, got: 4, expected: 3 }) if layer == "2.weight"
        ));
        let mut t = seq();
        t[3] = ("2.bias", Dtype::F32, vec![1], f32s(&[f32::NAN]));
        assert!(matches!(
            import(&file(&t), &Options::default()),
            Err(ImportError::NonFinite { tensor, index: 0, .. }) if tensor == "2.bias"
        ));
        let mut t = seq();
        t[0] = (
            "0.weight",
            Dtype::F32,
            vec![3, 2],
            f32s(&[1.0, 2.0, 3.0, 1e6, 0.0, 0.0]),
        );
        assert!(matches!(
            import(&file(&t), &Options::default()),
            Err(ImportError::OutOfRange { tensor, index: 3, .. }) if tensor == "0.weight"
        ));
    }

    /// Hostile shapes are refused before anything is allocated for them:
    /// `[2^40, 0]` holds no data (so the container accepts it) but asked
    /// for a zero bias of 2^40 values; `[2^32, 2^32]` overflows the
    /// element count.
    #[test]
    fn hostile_shapes_are_refused_without_allocating() {
        let raw = |shape: &str| -> Vec<u8> {
            let mut h = format!(
                r#"{{"big.weight":{{"dtype":"F32","shape":{shape},"data_offsets":[0,0]}}}}"#
            );
            while h.len() % 8 != 0 {
                h.push(' ');
            }
            let mut out = (h.len() as u64).to_le_bytes().to_vec();
            out.extend_from_slice(h.as_bytes());
            out
        };
        for (shape, dim) in [
            // [out, in]: the input width is checked first.
            ("[1099511627776,0]", 0usize),
            ("[0,1099511627776]", 1 << 40),
            ("[4096,0]", 0),
        ] {
            assert_eq!(
                import(&raw(shape), &Options::default()),
                Err(ImportError::TooWide {
                    layer: "big.weight".into(),
                    dim
                }),
                "{shape}"
            );
        }
        assert!(matches!(
            import(&raw("[4294967296,4294967296]"), &Options::default()),
            Err(ImportError::Container { .. })
        ));
    }
}
