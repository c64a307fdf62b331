// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The multi-layer perceptron: a chain of dense layers, validated once when it
//! is built and then run without per-sample shape checks.
//!
//! The scalar reference is [`crate::reference::forward_into`] over the
//! layers' views ([`Layer::view`]): every faster path ([`crate::kernels`])
//! must give the same bits. The arithmetic of each neuron is defined in
//! [`crate::fixed`].

use alloc::vec;
use alloc::vec::Vec;

use crate::kernels::{self, Kernel, Packed};
use crate::protocol::{MAX_BATCH, MAX_DIM, MAX_LAYERS};
use crate::reference::{self, LayerView, Values};

pub use crate::reference::Activation;

/// One dense layer: `out_dim` neurons over `in_dim` inputs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layer {
    in_dim: usize,
    out_dim: usize,
    /// Row-major `[out_dim][in_dim]`, as PyTorch's `nn.Linear.weight`.
    weights: Vec<i32>,
    bias: Vec<i32>,
    activation: Activation,
}

/// Why a set of layers is not a model this engine runs.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ShapeError {
    /// No layers at all.
    #[error("a model needs at least one layer")]
    NoLayers,
    /// More layers than [`MAX_LAYERS`].
    #[error("{0} layers; at most {max} are supported", max = MAX_LAYERS)]
    TooManyLayers(usize),
    /// A width of 0 or above [`MAX_DIM`].
    #[error("layer {layer}: width {dim} is outside 1..={max}", max = MAX_DIM)]
    BadDim {
        /// Index of the layer.
        layer: usize,
        /// The offending width.
        dim: usize,
    },
    /// The weight or bias vector has the wrong number of values.
    #[error("layer {layer}: {what} has {got} values, expected {expected}")]
    BadLength {
        /// Index of the layer.
        layer: usize,
        /// `"weight"` or `"bias"`.
        what: &'static str,
        /// Values present.
        got: usize,
        /// Values needed.
        expected: usize,
    },
    /// A layer's input width is not the previous layer's output width.
    #[error("layer {layer} takes {got} inputs but the previous layer gives {expected}")]
    Chain {
        /// Index of the layer.
        layer: usize,
        /// Its input width.
        got: usize,
        /// The previous layer's output width.
        expected: usize,
    },
    /// Input or output slices of a prediction call have the wrong size.
    #[error("buffer holds {got} values, expected {expected}")]
    Buffer {
        /// Values present.
        got: usize,
        /// Values needed.
        expected: usize,
    },
    /// A batch of 0 or above [`MAX_BATCH`] samples.
    #[error("batch of {0} samples is outside 1..={max}", max = MAX_BATCH)]
    Batch(usize),
    /// The scalar reference refused the layers or buffers (checked when the
    /// network was built, so not expected).
    #[error("scalar reference: {0}")]
    Reference(reference::ForwardError),
}

impl From<reference::ForwardError> for ShapeError {
    fn from(e: reference::ForwardError) -> Self {
        ShapeError::Reference(e)
    }
}

impl Layer {
    /// Builds a layer from row-major weights `[out_dim][in_dim]` and biases.
    pub fn new(
        in_dim: usize,
        out_dim: usize,
        weights: Vec<i32>,
        bias: Vec<i32>,
        activation: Activation,
    ) -> Result<Self, ShapeError> {
        for dim in [in_dim, out_dim] {
            if dim == 0 || dim > MAX_DIM as usize {
                return Err(ShapeError::BadDim { layer: 0, dim });
            }
        }
        if weights.len() != in_dim * out_dim {
            return Err(ShapeError::BadLength {
                layer: 0,
                what: "weight",
                got: weights.len(),
                expected: in_dim * out_dim,
            });
        }
        if bias.len() != out_dim {
            return Err(ShapeError::BadLength {
                layer: 0,
                what: "bias",
                got: bias.len(),
                expected: out_dim,
            });
        }
        Ok(Self {
            in_dim,
            out_dim,
            weights,
            bias,
            activation,
        })
    }

    /// Input width.
    pub fn in_dim(&self) -> usize {
        self.in_dim
    }

    /// Output width.
    pub fn out_dim(&self) -> usize {
        self.out_dim
    }

    /// Row-major weights `[out_dim][in_dim]`.
    pub fn weights(&self) -> &[i32] {
        &self.weights
    }

    /// Biases, one per output.
    pub fn bias(&self) -> &[i32] {
        &self.bias
    }

    /// The activation.
    pub fn activation(&self) -> Activation {
        self.activation
    }

    /// The layer packed for the SIMD kernels.
    fn pack(&self) -> Packed {
        Packed::new(
            self.in_dim,
            &self.weights,
            &self.bias,
            self.activation == Activation::Relu,
        )
    }

    /// The layer as the scalar reference borrows it.
    pub fn view(&self) -> LayerView<'_> {
        LayerView {
            in_dim: self.in_dim,
            out_dim: self.out_dim,
            weights: Values::I32(&self.weights),
            bias: Values::I32(&self.bias),
            activation: self.activation,
        }
    }
}

/// A validated chain of dense layers, with the weights packed for the
/// kernel it runs on ([`Mlp::kernel`]).
///
/// Two networks are equal when their layers are, whatever their kernels.
#[derive(Clone)]
pub struct Mlp {
    layers: Vec<Layer>,
    max_width: usize,
    kernel: Kernel,
    /// One per layer for a SIMD kernel; empty for [`Kernel::Scalar`].
    packed: Vec<Packed>,
}

impl PartialEq for Mlp {
    fn eq(&self, other: &Self) -> bool {
        self.layers == other.layers
    }
}

impl Eq for Mlp {}

impl core::fmt::Debug for Mlp {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Mlp")
            .field("dims", &self.dims())
            .field("kernel", &self.kernel)
            .field("layers", &self.layers)
            .finish()
    }
}

/// Reusable work memory for [`Mlp::predict_batch`], so that prediction does
/// not allocate: two activation buffers sized for the widest layer (and, for
/// the SIMD kernels, a block of samples). One that is too small is resized.
#[derive(Default)]
pub struct Scratch {
    a: Vec<i32>,
    b: Vec<i32>,
}

impl Mlp {
    /// Checks the chain (count, widths, lengths, matching dims) once, and
    /// packs the weights for [`Kernel::Auto`]'s choice (the fastest kernel
    /// this CPU has). [`Mlp::with_kernel`] forces another.
    pub fn new(layers: Vec<Layer>) -> Result<Self, ShapeError> {
        Ok(Self::new_unpacked(layers)?.packed_for(Kernel::detect()))
    }

    /// A network of the layer widths `dims` (input first) with He-uniform
    /// weights (from `[-sqrt(6 / in), sqrt(6 / in))`) and biases from
    /// `[-0.1, 0.1)`, ReLU after every layer but the last (identity): for
    /// benchmarks and test models. `uniform(b)` draws a value from
    /// `[-b, b)`; it is called for each layer's weights, row-major, then its
    /// biases.
    #[cfg(feature = "std")]
    pub fn he_uniform(
        dims: &[usize],
        mut uniform: impl FnMut(f64) -> f64,
    ) -> Result<Self, ShapeError> {
        if dims.len() < 2 {
            return Err(ShapeError::NoLayers);
        }
        if dims.len() - 1 > MAX_LAYERS {
            return Err(ShapeError::TooManyLayers(dims.len() - 1));
        }
        // Widths first: nothing is drawn (or allocated) for a bad shape.
        if let Some((k, &dim)) = dims
            .iter()
            .enumerate()
            .find(|(_, &d)| d == 0 || d > MAX_DIM as usize)
        {
            return Err(ShapeError::BadDim {
                layer: k.saturating_sub(1),
                dim,
            });
        }
        let last = dims.len() - 2;
        let mut q = |b: f64| crate::quant::from_f64(uniform(b)).unwrap_or(0);
        let layers = dims
            .windows(2)
            .enumerate()
            .map(|(k, d)| {
                let (i, o) = (d[0], d[1]);
                let bound = (6.0 / i as f64).sqrt();
                let w = (0..i * o).map(|_| q(bound)).collect();
                let b = (0..o).map(|_| q(0.1)).collect();
                let act = if k == last {
                    Activation::Identity
                } else {
                    Activation::Relu
                };
                Layer::new(i, o, w, b, act)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Self::new(layers)
    }

    /// The same network on another kernel ([`Kernel::Auto`]: the fastest this
    /// CPU has), or an error if the CPU cannot run it.
    pub fn with_kernel(self, kernel: Kernel) -> Result<Self, kernels::Unsupported> {
        Ok(self.packed_for(kernel.resolve()?))
    }

    /// Packs the weights for `kernel`, a resolved kernel the CPU supports.
    fn packed_for(mut self, kernel: Kernel) -> Self {
        if kernel != self.kernel || (kernel != Kernel::Scalar && self.packed.is_empty()) {
            self.packed = if kernel == Kernel::Scalar {
                Vec::new()
            } else {
                self.layers.iter().map(Layer::pack).collect()
            };
            self.kernel = kernel;
        }
        self
    }

    /// The kernel this network runs on (never [`Kernel::Auto`]).
    pub fn kernel(&self) -> Kernel {
        self.kernel
    }

    fn new_unpacked(layers: Vec<Layer>) -> Result<Self, ShapeError> {
        if layers.is_empty() {
            return Err(ShapeError::NoLayers);
        }
        if layers.len() > MAX_LAYERS {
            return Err(ShapeError::TooManyLayers(layers.len()));
        }
        for (i, pair) in layers.windows(2).enumerate() {
            if pair[1].in_dim != pair[0].out_dim {
                return Err(ShapeError::Chain {
                    layer: i + 1,
                    got: pair[1].in_dim,
                    expected: pair[0].out_dim,
                });
            }
        }
        let max_width = layers
            .iter()
            .map(|l| l.in_dim.max(l.out_dim))
            .max()
            .unwrap_or(0);
        Ok(Self {
            layers,
            max_width,
            kernel: Kernel::Scalar,
            packed: Vec::new(),
        })
    }

    /// The layers, input side first.
    pub fn layers(&self) -> &[Layer] {
        &self.layers
    }

    /// Width of one input sample.
    pub fn input_dim(&self) -> usize {
        self.layers[0].in_dim
    }

    /// Width of one output sample.
    pub fn output_dim(&self) -> usize {
        self.layers[self.layers.len() - 1].out_dim
    }

    /// `[input_dim, width of layer 0's output, ..., output_dim]`.
    pub fn dims(&self) -> Vec<usize> {
        core::iter::once(self.input_dim())
            .chain(self.layers.iter().map(|l| l.out_dim))
            .collect()
    }

    /// Values in each of the scratch buffers this network needs.
    fn scratch_len(&self) -> usize {
        if self.kernel == Kernel::Scalar {
            self.max_width
        } else {
            kernels::block_len(self.max_width) * kernels::padded(self.max_width)
        }
    }

    /// Work memory sized for this model.
    pub fn scratch(&self) -> Scratch {
        let n = self.scratch_len();
        Scratch {
            a: vec![0; n],
            b: vec![0; n],
        }
    }

    /// Runs `n` samples: `inputs` holds `n * input_dim` values sample after
    /// sample, `outputs` receives `n * output_dim`.
    pub fn predict_batch(
        &self,
        inputs: &[i32],
        outputs: &mut [i32],
        scratch: &mut Scratch,
    ) -> Result<(), ShapeError> {
        let n = self.check(inputs, outputs)?;
        let (ind, outd) = (self.input_dim(), self.output_dim());
        let len = self.scratch_len();
        if scratch.a.len() < len || scratch.b.len() < len {
            *scratch = self.scratch();
        }
        if self.kernel == Kernel::Scalar {
            self.run_scalar(inputs, outputs, scratch)?;
        } else {
            let mut s0 = 0;
            while s0 < n {
                let m = (n - s0).min(kernels::block_len(self.max_width));
                let x = &inputs[s0 * ind..(s0 + m) * ind];
                let y = &mut outputs[s0 * outd..(s0 + m) * outd];
                self.forward_block(x, y, m, scratch);
                s0 += m;
            }
        }
        Ok(())
    }

    /// Runs the scalar reference on `inputs`, whatever [`Mlp::kernel`] is
    /// (same contract as [`Mlp::predict_batch`]).
    pub fn predict_batch_reference(
        &self,
        inputs: &[i32],
        outputs: &mut [i32],
        scratch: &mut Scratch,
    ) -> Result<(), ShapeError> {
        self.check(inputs, outputs)?;
        if scratch.a.len() < self.max_width || scratch.b.len() < self.max_width {
            *scratch = Scratch {
                a: vec![0; self.max_width],
                b: vec![0; self.max_width],
            };
        }
        self.run_scalar(inputs, outputs, scratch)
    }

    fn run_scalar(
        &self,
        inputs: &[i32],
        outputs: &mut [i32],
        scratch: &mut Scratch,
    ) -> Result<(), ShapeError> {
        let (ind, outd) = (self.input_dim(), self.output_dim());
        let mut views = [LayerView::default(); MAX_LAYERS];
        for (v, l) in views.iter_mut().zip(&self.layers) {
            *v = l.view();
        }
        let views = &views[..self.layers.len()];
        for (x, y) in inputs.chunks_exact(ind).zip(outputs.chunks_exact_mut(outd)) {
            // The layers were checked when the network was built.
            reference::forward_checked(views, x, &mut scratch.a, &mut scratch.b, y)?;
        }
        Ok(())
    }

    /// Checks the buffers of a prediction call; returns the sample count.
    fn check(&self, inputs: &[i32], outputs: &[i32]) -> Result<usize, ShapeError> {
        let (ind, outd) = (self.input_dim(), self.output_dim());
        // No division for the single sample (the latency path).
        let n = if inputs.len() == ind {
            1
        } else {
            inputs.len() / ind
        };
        if n == 0 || n > MAX_BATCH as usize {
            return Err(ShapeError::Batch(n));
        }
        if inputs.len() != n * ind {
            return Err(ShapeError::Buffer {
                got: inputs.len(),
                expected: n * ind,
            });
        }
        if outputs.len() != n * outd {
            return Err(ShapeError::Buffer {
                got: outputs.len(),
                expected: n * outd,
            });
        }
        Ok(n)
    }

    /// Index of the largest output of one sample's outputs (the class of a
    /// classifier; the first one on ties).
    pub fn argmax(outputs: &[i32]) -> Option<usize> {
        let mut best: Option<(usize, i32)> = None;
        for (i, &v) in outputs.iter().enumerate() {
            if best.is_none_or(|(_, b)| v > b) {
                best = Some((i, v));
            }
        }
        best.map(|(i, _)| i)
    }

    /// Runs a block of samples on the SIMD kernel, layer by layer.
    fn forward_block(&self, x: &[i32], y: &mut [i32], n: usize, s: &mut Scratch) {
        let (ind, outd) = (self.input_dim(), self.output_dim());
        let (mut cur, mut next) = (&mut s.a, &mut s.b);
        let mut stride = ind;
        for (i, p) in self.packed.iter().enumerate() {
            let input: &[i32] = if i == 0 { x } else { cur };
            kernels::run_layer(self.kernel, p, input, stride, n, next);
            stride = p.out_pad;
            core::mem::swap(&mut cur, &mut next);
        }
        for k in 0..n {
            y[k * outd..(k + 1) * outd].copy_from_slice(&cur[k * stride..k * stride + outd]);
        }
    }

    /// Runs one sample, allocating its own work memory.
    pub fn predict(&self, input: &[i32]) -> Result<Vec<i32>, ShapeError> {
        let mut out = vec![0; self.output_dim()];
        self.predict_batch(input, &mut out, &mut self.scratch())?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixed::ONE;

    fn tiny() -> Mlp {
        // 2 -> 2 (relu) -> 1 (identity)
        let l0 = Layer::new(
            2,
            2,
            vec![ONE, -ONE, 2 * ONE, ONE / 2],
            vec![0, -ONE],
            Activation::Relu,
        )
        .unwrap();
        let l1 = Layer::new(
            2,
            1,
            vec![ONE, -3 * ONE],
            vec![ONE / 4],
            Activation::Identity,
        )
        .unwrap();
        Mlp::new(vec![l0, l1]).unwrap()
    }

    #[test]
    fn forward_matches_hand_computation() {
        let m = tiny();
        // x = (3, 1): h0 = relu(3 - 1) = 2, h1 = relu(6 + 0.5 - 1) = 5.5
        // y = 2 - 16.5 + 0.25 = -14.25
        let y = m.predict(&[3 * ONE, ONE]).unwrap();
        assert_eq!(y, vec![-14 * ONE - ONE / 4]);
        // x = (-3, 1): h0 = relu(-4) = 0, h1 = relu(-6 + 0.5 - 1) = 0, y = 0.25
        assert_eq!(m.predict(&[-3 * ONE, ONE]).unwrap(), vec![ONE / 4]);
        assert_eq!(m.dims(), vec![2, 2, 1]);
    }

    #[test]
    fn batch_equals_single_samples() {
        let m = tiny();
        let inputs: Vec<i32> = (0..20).map(|i| (i - 10) * ONE / 3).collect();
        let mut out = vec![0; 10];
        m.predict_batch(&inputs, &mut out, &mut Scratch::default())
            .unwrap();
        for (x, y) in inputs.chunks(2).zip(&out) {
            assert_eq!(m.predict(x).unwrap(), vec![*y]);
        }
    }

    #[test]
    fn shapes_are_refused_with_reasons() {
        let l = |i, o| Layer::new(i, o, vec![0; i * o], vec![0; o], Activation::Relu).unwrap();
        assert_eq!(Mlp::new(vec![]), Err(ShapeError::NoLayers));
        assert_eq!(
            Mlp::new(vec![l(2, 3), l(4, 1)]),
            Err(ShapeError::Chain {
                layer: 1,
                got: 4,
                expected: 3
            })
        );
        assert_eq!(
            Mlp::new((0..8).map(|_| l(2, 2)).collect()),
            Err(ShapeError::TooManyLayers(8))
        );
        assert!(matches!(
            Layer::new(2, 2, vec![0; 3], vec![0; 2], Activation::Relu),
            Err(ShapeError::BadLength { what: "weight", .. })
        ));
        assert!(matches!(
            Layer::new(0, 2, vec![], vec![0; 2], Activation::Relu),
            Err(ShapeError::BadDim { dim: 0, .. })
        ));
        let m = tiny();
        assert_eq!(m.predict(&[1]), Err(ShapeError::Batch(0)));
        assert_eq!(
            m.predict(&[1, 2, 3]),
            Err(ShapeError::Buffer {
                got: 3,
                expected: 2
            })
        );
    }

    #[test]
    fn he_uniform_draws_within_bounds_and_refuses_bad_shapes() {
        // A draw of exactly the bound's edge shows what each value was
        // drawn with: the weight bound sqrt(6 / in) or the bias bound 0.1.
        let m = Mlp::he_uniform(&[6, 4, 2], |b| b).unwrap();
        assert_eq!(m.dims(), vec![6, 4, 2]);
        assert_eq!(m.layers[0].weights, vec![ONE; 24]);
        assert_eq!(
            m.layers[0].bias,
            vec![crate::quant::from_f64(0.1).unwrap(); 4]
        );
        assert_eq!(m.layers[1].activation, Activation::Identity);
        assert_eq!(m.layers[0].activation, Activation::Relu);
        let mut calls = 0;
        let mut count = |_| {
            calls += 1;
            0.0
        };
        assert_eq!(Mlp::he_uniform(&[4], &mut count), Err(ShapeError::NoLayers));
        assert_eq!(
            Mlp::he_uniform(&[4, 0, 2], &mut count),
            Err(ShapeError::BadDim { layer: 0, dim: 0 })
        );
        let huge = MAX_DIM as usize + 1;
        assert_eq!(
            Mlp::he_uniform(&[4, 4, huge], &mut count),
            Err(ShapeError::BadDim {
                layer: 1,
                dim: huge
            })
        );
        assert_eq!(
            Mlp::he_uniform(&[2; 9], &mut count),
            Err(ShapeError::TooManyLayers(8))
        );
        assert_eq!(calls, 0, "nothing is drawn for a bad shape");
    }
}
