// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The scalar reference forward pass: the one definition of running a chain
//! of dense layers on one sample, over borrowed weights.
//!
//! Every path runs it or is compared with it bit for bit: the engine's
//! scalar kernel ([`crate::Mlp`] with `Kernel::Scalar`, and
//! `Mlp::predict_batch_reference`, which the SIMD kernels are tested
//! against) and the guest driver's fallback, which runs it on its copy of
//! the served model (layers borrowed from the model file's bytes by
//! `model_view.rs`). The arithmetic of each neuron is `crate::fixed`'s.
//!
//! # Shared with the guest kernel
//!
//! The guest driver includes this file with `#[path = ...] mod reference;`
//! next to `fixed.rs` (as `mod fixed`) and `protocol.rs` (as `mod
//! protocol`) at its crate root, which is what `crate::fixed` and
//! `crate::protocol` name here. It needs only `core`: no allocation, no
//! `std`, no floats, no `unsafe`, and it never panics: every length and
//! width is checked ([`forward_into`] returns a [`ForwardError`]), slices
//! are taken with `get`, and arithmetic on sizes is checked.

#![deny(
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::float_arithmetic,
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used
)]

use crate::fixed;
use crate::protocol::{MAX_DIM, MAX_LAYERS};

/// What a layer applies to its rounded, saturated outputs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Activation {
    /// `y`
    #[default]
    Identity,
    /// `max(y, 0)`
    Relu,
}

impl Activation {
    /// The name used in model files.
    pub const fn name(self) -> &'static str {
        match self {
            Activation::Identity => "identity",
            Activation::Relu => "relu",
        }
    }

    /// Parses a name used in model files.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::from_bytes(name.as_bytes())
    }

    /// Parses a name used in model files, as bytes.
    pub fn from_bytes(name: &[u8]) -> Option<Self> {
        match name {
            b"identity" => Some(Activation::Identity),
            b"relu" => Some(Activation::Relu),
            _ => None,
        }
    }

    /// Applies the activation to one rounded, saturated output.
    #[inline(always)]
    pub fn apply(self, y: i32) -> i32 {
        match self {
            Activation::Identity => y,
            Activation::Relu => y.max(0),
        }
    }
}

/// Q16.16 values, borrowed either as `i32` (the engine's layers) or as the
/// little-endian bytes of a model file (4 per value; the guest's copy).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Values<'a> {
    /// Native values.
    I32(&'a [i32]),
    /// Little-endian bytes, 4 per value.
    Le(&'a [u8]),
}

impl Default for Values<'_> {
    fn default() -> Self {
        Values::I32(&[])
    }
}

impl Values<'_> {
    /// Number of whole values held (trailing bytes of an `Le` slice that do
    /// not make a value are not counted).
    pub fn len(&self) -> usize {
        match self {
            Values::I32(v) => v.len(),
            Values::Le(b) => b.len() / 4,
        }
    }

    /// Whether no value is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the slice holds exactly `n` values (and, for bytes, nothing
    /// more).
    fn holds_exactly(&self, n: usize) -> bool {
        match self {
            Values::I32(v) => v.len() == n,
            Values::Le(b) => n.checked_mul(4) == Some(b.len()),
        }
    }

    /// Value `i`, if present.
    pub fn get(&self, i: usize) -> Option<i32> {
        match self {
            Values::I32(v) => v.get(i).copied(),
            Values::Le(b) => {
                let at = i.checked_mul(4)?;
                match *b.get(at..at.checked_add(4)?)? {
                    [b0, b1, b2, b3] => Some(i32::from_le_bytes([b0, b1, b2, b3])),
                    _ => None,
                }
            }
        }
    }

    /// `sat32(round16(bias << 16 + row . x))` with `row` the `x.len()`
    /// values from value `start` (`None` if they are not all present).
    fn neuron(&self, start: usize, bias: i32, x: &[i32]) -> Option<i32> {
        let end = start.checked_add(x.len())?;
        match self {
            Values::I32(v) => Some(fixed::neuron(v.get(start..end)?, bias, x)),
            Values::Le(b) => Some(fixed::neuron_le(
                b.get(start.checked_mul(4)?..end.checked_mul(4)?)?,
                bias,
                x,
            )),
        }
    }
}

/// One dense layer, borrowed: `out_dim` neurons over `in_dim` inputs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LayerView<'a> {
    /// Input width, `1..=MAX_DIM`.
    pub in_dim: usize,
    /// Output width, `1..=MAX_DIM`.
    pub out_dim: usize,
    /// Row-major `[out_dim][in_dim]` weights (PyTorch's `nn.Linear.weight`).
    pub weights: Values<'a>,
    /// One bias per output.
    pub bias: Values<'a>,
    /// The activation after each output.
    pub activation: Activation,
}

/// Why [`forward_into`] refused to run (nothing meaningful was written).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ForwardError {
    /// No layers, or more than `MAX_LAYERS`.
    LayerCount(usize),
    /// Layer `layer` has a width of 0 or above `MAX_DIM`.
    Dim {
        /// Index of the layer.
        layer: usize,
    },
    /// Layer `layer`'s weights or biases are not `in_dim * out_dim` and
    /// `out_dim` values.
    Values {
        /// Index of the layer.
        layer: usize,
    },
    /// Layer `layer`'s input width is not the previous layer's output width.
    Chain {
        /// Index of the layer.
        layer: usize,
    },
    /// The input is not the first layer's width, the output not the last
    /// layer's, or a scratch buffer is narrower than a hidden layer.
    Buffer,
}

impl core::fmt::Display for ForwardError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ForwardError::LayerCount(n) => {
                write!(f, "{n} layers; 1..={MAX_LAYERS} are supported")
            }
            ForwardError::Dim { layer } => {
                write!(f, "layer {layer}: a width outside 1..={MAX_DIM}")
            }
            ForwardError::Values { layer } => {
                write!(f, "layer {layer}: weights or biases of the wrong length")
            }
            ForwardError::Chain { layer } => {
                write!(
                    f,
                    "layer {layer}: input width is not the previous output width"
                )
            }
            ForwardError::Buffer => write!(f, "input, output or scratch of the wrong size"),
        }
    }
}

/// Checks `layers` as a model: 1..=MAX_LAYERS layers, widths in
/// 1..=MAX_DIM, value counts matching the widths, each input width the
/// previous output width. Returns the widest hidden output (the scratch
/// each buffer of [`forward_into`] needs; 0 for one layer).
pub fn check(layers: &[LayerView<'_>]) -> Result<usize, ForwardError> {
    if layers.is_empty() || layers.len() > MAX_LAYERS {
        return Err(ForwardError::LayerCount(layers.len()));
    }
    let mut hidden = 0;
    let mut prev_out: Option<usize> = None;
    for (layer, l) in layers.iter().enumerate() {
        for d in [l.in_dim, l.out_dim] {
            if d == 0 || d > MAX_DIM as usize {
                return Err(ForwardError::Dim { layer });
            }
        }
        let n = l
            .in_dim
            .checked_mul(l.out_dim)
            .ok_or(ForwardError::Dim { layer })?;
        if !l.weights.holds_exactly(n) || !l.bias.holds_exactly(l.out_dim) {
            return Err(ForwardError::Values { layer });
        }
        if let Some(p) = prev_out {
            if p != l.in_dim {
                return Err(ForwardError::Chain { layer });
            }
            hidden = hidden.max(p);
        }
        prev_out = Some(l.out_dim);
    }
    Ok(hidden)
}

/// Runs one layer: `y[j] = act(neuron(row j, bias j, x))`. The caller has
/// checked the layer ([`check`]) and the widths of `x` and `y`.
fn run_layer(l: &LayerView<'_>, x: &[i32], y: &mut [i32]) -> Result<(), ForwardError> {
    let mut start = 0usize;
    for (j, yj) in y.iter_mut().enumerate() {
        let b = l.bias.get(j).ok_or(ForwardError::Buffer)?;
        let v = l.weights.neuron(start, b, x).ok_or(ForwardError::Buffer)?;
        *yj = l.activation.apply(v);
        start = start.checked_add(l.in_dim).ok_or(ForwardError::Buffer)?;
    }
    Ok(())
}

/// Runs `layers` on one sample: `input` (the first layer's `in_dim`
/// values) through every layer into `out` (the last layer's `out_dim`
/// values). The hidden activations alternate between `scratch_a` and
/// `scratch_b`, each at least as long as the widest hidden layer ([`check`]
/// returns it). The layers are checked first, every call: a bad layer or
/// buffer is an error, never a panic, and `out` is then left unspecified.
pub fn forward_into(
    layers: &[LayerView<'_>],
    input: &[i32],
    scratch_a: &mut [i32],
    scratch_b: &mut [i32],
    out: &mut [i32],
) -> Result<(), ForwardError> {
    check(layers)?;
    forward_checked(layers, input, scratch_a, scratch_b, out)
}

/// [`forward_into`] for layers that passed [`check`] (the buffers are still
/// checked).
pub fn forward_checked(
    layers: &[LayerView<'_>],
    input: &[i32],
    scratch_a: &mut [i32],
    scratch_b: &mut [i32],
    out: &mut [i32],
) -> Result<(), ForwardError> {
    let (Some(first), Some(last)) = (layers.first(), layers.last()) else {
        return Err(ForwardError::LayerCount(0));
    };
    if input.len() != first.in_dim || out.len() != last.out_dim {
        return Err(ForwardError::Buffer);
    }
    let last_index = layers.len().saturating_sub(1);
    let (mut cur, mut next) = (scratch_a, scratch_b);
    for (i, l) in layers.iter().enumerate() {
        let x: &[i32] = if i == 0 {
            input
        } else {
            cur.get(..l.in_dim).ok_or(ForwardError::Buffer)?
        };
        if i == last_index {
            return run_layer(l, x, out);
        }
        let y = next.get_mut(..l.out_dim).ok_or(ForwardError::Buffer)?;
        run_layer(l, x, y)?;
        core::mem::swap(&mut cur, &mut next);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::indexing_slicing, clippy::unwrap_used)]
    use super::*;
    use crate::fixed::ONE;

    fn le(v: &[i32]) -> [u8; 16] {
        let mut b = [0u8; 16];
        for (c, x) in b.chunks_exact_mut(4).zip(v) {
            c.copy_from_slice(&x.to_le_bytes());
        }
        b
    }

    #[test]
    fn native_and_little_endian_values_give_the_same_bits() {
        // 2 -> 2 (relu) -> 1 (identity), as mlp.rs's tiny model.
        let (w0, b0) = ([ONE, -ONE, 2 * ONE, ONE / 2], [0, -ONE]);
        let (w1, b1) = ([ONE, -3 * ONE], [ONE / 4]);
        let native = [
            LayerView {
                in_dim: 2,
                out_dim: 2,
                weights: Values::I32(&w0),
                bias: Values::I32(&b0),
                activation: Activation::Relu,
            },
            LayerView {
                in_dim: 2,
                out_dim: 1,
                weights: Values::I32(&w1),
                bias: Values::I32(&b1),
                activation: Activation::Identity,
            },
        ];
        let (lw0, lb0, lw1, lb1) = (le(&w0), le(&b0), le(&w1), le(&b1));
        let bytes = [
            LayerView {
                weights: Values::Le(&lw0),
                bias: Values::Le(&lb0[..8]),
                ..native[0]
            },
            LayerView {
                weights: Values::Le(&lw1[..8]),
                bias: Values::Le(&lb1[..4]),
                ..native[1]
            },
        ];
        for layers in [&native, &bytes] {
            let (mut a, mut b, mut y) = ([0; 2], [0; 2], [0; 1]);
            forward_into(layers, &[3 * ONE, ONE], &mut a, &mut b, &mut y).unwrap();
            assert_eq!(y, [-14 * ONE - ONE / 4]);
            forward_into(layers, &[-3 * ONE, ONE], &mut a, &mut b, &mut y).unwrap();
            assert_eq!(y, [ONE / 4]);
        }
        assert_eq!(check(&native), Ok(2));
    }

    #[test]
    fn bad_layers_and_buffers_are_errors() {
        let w = [ONE; 6];
        let b = [0; 3];
        let l = |i, o, wn, bn| LayerView {
            in_dim: i,
            out_dim: o,
            weights: Values::I32(&w[..wn]),
            bias: Values::I32(&b[..bn]),
            activation: Activation::Relu,
        };
        let (mut a, mut s, mut y) = ([0; 8], [0; 8], [0; 8]);
        let mut run = |layers: &[LayerView<'_>], x: &[i32], n: usize| {
            forward_into(layers, x, &mut a, &mut s, &mut y[..n])
        };
        assert_eq!(run(&[], &[1], 1), Err(ForwardError::LayerCount(0)));
        assert_eq!(
            run(&[l(2, 3, 6, 3); 8], &[1, 1], 3),
            Err(ForwardError::LayerCount(8))
        );
        assert_eq!(
            run(&[l(0, 3, 0, 3)], &[], 3),
            Err(ForwardError::Dim { layer: 0 })
        );
        assert_eq!(
            run(&[l(2, 3, 5, 3)], &[1, 1], 3),
            Err(ForwardError::Values { layer: 0 })
        );
        assert_eq!(
            run(&[l(2, 3, 6, 2)], &[1, 1], 3),
            Err(ForwardError::Values { layer: 0 })
        );
        assert_eq!(
            run(&[l(2, 3, 6, 3), l(2, 3, 6, 3)], &[1, 1], 3),
            Err(ForwardError::Chain { layer: 1 })
        );
        assert_eq!(run(&[l(2, 3, 6, 3)], &[1], 3), Err(ForwardError::Buffer));
        assert_eq!(run(&[l(2, 3, 6, 3)], &[1, 1], 2), Err(ForwardError::Buffer));
        assert_eq!(run(&[l(2, 3, 6, 3)], &[1, 1], 3), Ok(()));
        // A byte slice with a stray byte is not `n` values.
        let bytes = [0u8; 25];
        let odd = LayerView {
            weights: Values::Le(&bytes),
            ..l(2, 3, 6, 3)
        };
        assert_eq!(check(&[odd]), Err(ForwardError::Values { layer: 0 }));
        // Scratch narrower than the hidden layer.
        let two = [l(2, 3, 6, 3), l(3, 2, 6, 2)];
        let (mut a, mut s, mut y) = ([0; 2], [0; 2], [0; 2]);
        assert_eq!(
            forward_into(&two, &[1, 1], &mut a, &mut s, &mut y),
            Err(ForwardError::Buffer)
        );
        let (mut a, mut s) = ([0; 3], [0; 3]);
        assert_eq!(forward_into(&two, &[1, 1], &mut a, &mut s, &mut y), Ok(()));
    }
}
