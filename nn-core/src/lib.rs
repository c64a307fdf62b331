// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! nn-core: the engine, model format and wire protocol of virtio-nn.
//!
//! * [`fixed`]: Q16.16 values and the exact arithmetic of a neuron (product
//!   width, accumulation, rounding, saturation) — the definition every path
//!   must reproduce bit for bit.
//! * [`reference`]: the scalar reference forward pass over borrowed layers
//!   ([`reference::forward_into`]), the one definition the engine's scalar
//!   path and the guest driver's fallback run; [`quant`]: float conversions.
//! * [`mlp`]: the multi-layer perceptron (dense layers with ReLU or identity),
//!   validated once at construction; the scalar reference, and the batch and
//!   single-sample API ([`Mlp::predict_batch`], [`Mlp::predict`]).
//! * [`kernels`]: SIMD kernels (x86-64 AVX2 and AVX-512, aarch64 NEON) that
//!   give the scalar reference's bits, chosen at run time by CPU detection;
//!   [`Mlp::with_kernel`] forces one (the daemon's `--kernel` /
//!   `NN_CORE_KERNEL` and `nn-model predict --kernel` go through it).
//! * `import` (feature `import`): float models — a PyTorch `state_dict` in
//!   safetensors, an ONNX MLP — quantized to Q16.16.
//! * [`model`]: the model file format (safetensors with Q16.16 `I32` tensors,
//!   a format version and a CRC-32C checksum) with a clear error for every
//!   malformed file.
//! * [`model_view`]: an allocation-free reader of the canonical model file
//!   (what [`Model::to_bytes`] writes and the daemon serves with
//!   `GET_MODEL`) into borrowed layers for [`reference`].
//! * [`protocol`]: the device's wire protocol (config space, request and
//!   response layouts, status codes), shared verbatim with the guest driver.
//! * [`proc_text`] and [`dev_abi`]: the guest driver's user interfaces (the
//!   `/proc/neural_network` text format, the `/dev/neural_network` binary
//!   layout), also shared verbatim with the guest driver, as are [`fixed`],
//!   [`reference`] and [`model_view`] (`core` only, no `alloc`;
//!   `tests/core_only.rs` builds them so).
//! * `abi` (feature `std`): those definitions as JSON for the scripts and
//!   Python tests (`nn-model abi`).
//!
//! The crate is `no_std` + `alloc` without its default `std` feature (the
//! kernels are then chosen by the target features enabled at compile time).
//!
//! # Limits
//! At most [`protocol::MAX_LAYERS`] layers, each at most [`protocol::MAX_DIM`]
//! wide, and [`protocol::MAX_BATCH`] samples per batch call.

#![cfg_attr(not(feature = "std"), no_std)]
#![deny(missing_docs)]

extern crate alloc;

#[cfg(feature = "std")]
pub mod abi;
pub mod dev_abi;
pub mod fixed;
#[cfg(feature = "import")]
pub mod import;
pub mod kernels;
pub mod mlp;
pub mod model;
pub mod model_view;
pub mod proc_text;
pub mod protocol;
pub mod quant;
pub mod reference;

// The arithmetic and the wire agree on the fixed-point format (fixed.rs and
// protocol.rs each define it: both are shared with the guest kernel, and
// neither may depend on the other).
const _: () = assert!(fixed::FRAC_BITS == protocol::FRAC_BITS);

pub use kernels::Kernel;
pub use mlp::{Activation, Layer, Mlp, Scratch, ShapeError};
pub use model::{Model, ModelError};
