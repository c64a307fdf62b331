// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Compute kernels: the scalar reference and SIMD paths for x86-64 (AVX2,
//! AVX-512) and aarch64 (NEON), chosen at run time.
//!
//! Every kernel computes exactly [`crate::fixed`]'s arithmetic: exact 64-bit
//! products, wrapping 64-bit accumulation from `bias << 16`, round half up,
//! saturation to `i32`, then the activation. The SIMD kernels only reorder the
//! (associative, commutative) wrapping sum, so their results are the same bits
//! as the scalar reference; property tests check it on random models,
//! including saturating and extreme values.
//!
//! # Layout
//! At construction, each layer's weights are packed once into groups of
//! [`GROUP`] output neurons: `[group][input][GROUP]`, outputs past `out_dim`
//! padded with zero weights and bias, and the biases pre-shifted to the
//! accumulators' `bias << 16`. The x86-64 kernels load 8 (AVX-512) or 4
//! (AVX2) weights sign-extended to 64-bit lanes (`vpmovsxdq`) and multiply
//! with `vpmuldq` (`_mm512_mul_epi32` / `_mm256_mul_epi32`: the low signed
//! 32 bits of each lane, exact 64-bit product) by the input broadcast to
//! every lane, then add with `vpaddq`; NEON uses `smlal` (`vmlal_s32`).
//! Keeping the weights 32-bit halves the memory traffic of wide layers.
//!
//! The batch path runs the whole network on blocks of samples ([`BLOCK`] for
//! narrow models, so activations stay in L1; more for wide ones, so each
//! weight fetched from L2/L3 serves more samples), and within a layer
//! computes tiles of several samples by several output groups, reusing each
//! loaded weight vector for every sample of the tile. A single sample goes
//! through a tile that splits each sum over 4 accumulators (shorter
//! dependency chains).
//!
//! # Choosing a kernel
//! [`Kernel::Auto`] resolves to the fastest kernel the CPU has
//! ([`Kernel::detect`]): with the `std` feature by run-time CPU detection,
//! without it by the features enabled at compile time; [`crate::Mlp::new`]
//! uses it. [`crate::Mlp::with_kernel`] forces a kernel explicitly; the
//! library itself reads no environment. The daemon takes the choice from its
//! `--kernel` option or, without it, the environment variable [`ENV_VAR`]
//! (`NN_CORE_KERNEL`: `scalar`, `avx2`, `avx512`, `neon` or `auto`);
//! `nn-model predict` only from `--kernel` (default `scalar`: the host
//! reference stays the scalar one whatever kernel the daemon under test was
//! given). Both refuse a kernel the CPU lacks with a clear error.
//!
//! All `unsafe` code of the crate lives in this module's SIMD submodules.
//! Their entry points (`layer`) are safe functions compiled with the
//! kernel's `#[target_feature]`s that check their slices' sizes once, so the
//! one `unsafe` left to `run_layer` is that the CPU has those features; the
//! inner loops (`samples`, `tile`) take raw pointers and are `unsafe fn`s
//! whose contracts `layer` meets. The register-only helpers are safe
//! `#[target_feature]` functions: since Rust 1.87 the `core::arch`
//! intrinsics that take no pointer are safe to call where their features
//! are enabled.

use alloc::vec::Vec;
use core::fmt;
use core::str::FromStr;

use crate::fixed;

/// Defines, in an x86 kernel module that has a `tile::<S, V>` function,
/// `samples::<S, V>(p, g0, g1, x, x_stride, n, y)`: runs tiles of `S`
/// samples over groups `g0..g1`, `V` groups at a time, compiled with the
/// module's target features so that `tile` inlines.
///
/// The generated function's safety contract: the CPU has the features; `p`
/// has the sizes [`check_layer`] checks; `x` has `n` rows of stride
/// `x_stride` with `p.in_dim` readable values and `y` `n` rows of
/// `p.out_pad` writable values (as `check_layer` checks for slices);
/// `g1 <= p.groups`; `n` is a multiple of `S`.
#[cfg(target_arch = "x86_64")]
macro_rules! x86_samples {
    ($features:literal) => {
        /// Runs tiles of `S` samples over groups `g0..g1`, `V` groups at a
        /// time (see `x86_samples!`).
        ///
        /// # Safety
        /// See `x86_samples!`: the CPU has the module's features; `p`, `x`
        /// and `y` have the sizes of `n` rows; `g1 <= p.groups`; `n` is a
        /// multiple of `S`.
        #[inline]
        #[target_feature(enable = $features)]
        unsafe fn samples<const S: usize, const V: usize>(
            p: &Packed,
            g0: usize,
            g1: usize,
            x: *const i32,
            x_stride: usize,
            n: usize,
            y: *mut i32,
        ) {
            let mut g = g0;
            while g + V <= g1 {
                let mut s = 0;
                while s < n {
                    // SAFETY: groups `g..g + V` exist (`g + V <= g1 <=
                    // p.groups`): `w` and `b` point to their `V * in_dim * 8`
                    // weights and `V * 8` biases. Rows `s..s + S` exist
                    // (`s + S <= n`, `n` a multiple of `S`): `x + s *
                    // x_stride` points to `S` rows of `in_dim` values, and
                    // `y + s * out_pad + g * 8` to `S` rows with `V * 8`
                    // writable values each (`(g + V) * 8 <= out_pad`).
                    unsafe {
                        tile::<S, V>(
                            p.w32.as_ptr().add(g * p.in_dim * GROUP),
                            p.in_dim,
                            p.bias.as_ptr().add(g * GROUP),
                            x.add(s * x_stride),
                            x_stride,
                            y.add(s * p.out_pad + g * GROUP),
                            p.out_pad,
                            p.relu,
                        );
                    }
                    s += S;
                }
                g += V;
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "aarch64")]
mod neon;

/// Output neurons per packed group (and the padding of activation rows).
pub const GROUP: usize = 8;
/// Samples per block of the batch path for narrow models.
pub const BLOCK: usize = 8;

/// Samples per block of the batch path: [`BLOCK`] for narrow models, where
/// everything stays in L1; more for wide ones, so that each weight panel
/// fetched from L2/L3 serves more samples (activations then live in L2).
pub(crate) fn block_len(max_width: usize) -> usize {
    if padded(max_width) >= 256 {
        BLOCK_WIDE
    } else {
        BLOCK
    }
}

const BLOCK_WIDE: usize = 64;

/// Name of the environment variable that forces the daemon's kernel (its
/// `--kernel` option's default; nn-core itself does not read it).
pub const ENV_VAR: &str = "NN_CORE_KERNEL";

/// A compute path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// The scalar reference ([`crate::fixed::neuron`] per output).
    Scalar,
    /// x86-64 AVX2 (`vpmuldq` on 4 lanes).
    Avx2,
    /// x86-64 AVX-512 F + VL (`vpmuldq` on 8 lanes, `vpsraq`, `vpmovsqd`).
    Avx512,
    /// aarch64 Advanced SIMD (`smlal`, `sqxtn`).
    Neon,
    /// The fastest kernel this CPU supports (resolved at construction).
    Auto,
}

/// A kernel name that is not one of `scalar`, `avx2`, `avx512`, `neon`, `auto`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown kernel `{0}` (expected scalar, avx2, avx512, neon or auto)")]
pub struct UnknownKernel(pub alloc::string::String);

/// A kernel this CPU (or build) cannot run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("kernel `{0}` is not supported on this CPU or build")]
pub struct Unsupported(pub Kernel);

impl Kernel {
    /// Every concrete kernel (not [`Kernel::Auto`]).
    pub const ALL: [Kernel; 4] = [Kernel::Scalar, Kernel::Avx2, Kernel::Avx512, Kernel::Neon];

    /// The name used by `NN_CORE_KERNEL` and in logs.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Scalar => "scalar",
            Kernel::Avx2 => "avx2",
            Kernel::Avx512 => "avx512",
            Kernel::Neon => "neon",
            Kernel::Auto => "auto",
        }
    }

    /// Whether this CPU (and build) can run the kernel. [`Kernel::Auto`] and
    /// [`Kernel::Scalar`] always can.
    pub fn is_supported(self) -> bool {
        match self {
            Kernel::Scalar | Kernel::Auto => true,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => avx2::supported(),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => avx512::supported(),
            #[cfg(target_arch = "aarch64")]
            Kernel::Neon => neon::supported(),
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// The fastest supported kernel.
    pub fn detect() -> Kernel {
        [Kernel::Avx512, Kernel::Avx2, Kernel::Neon]
            .into_iter()
            .find(|k| k.is_supported())
            .unwrap_or(Kernel::Scalar)
    }

    /// Resolves [`Kernel::Auto`], and checks that the CPU supports the kernel.
    pub fn resolve(self) -> Result<Kernel, Unsupported> {
        match self {
            Kernel::Auto => Ok(Kernel::detect()),
            k if k.is_supported() => Ok(k),
            k => Err(Unsupported(k)),
        }
    }
}

impl fmt::Display for Kernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Kernel {
    type Err = UnknownKernel;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "scalar" => Ok(Kernel::Scalar),
            "avx2" => Ok(Kernel::Avx2),
            "avx512" => Ok(Kernel::Avx512),
            "neon" => Ok(Kernel::Neon),
            "auto" | "" => Ok(Kernel::Auto),
            _ => Err(UnknownKernel(s.into())),
        }
    }
}

/// Rounds `n` up to a multiple of [`GROUP`].
pub(crate) const fn padded(n: usize) -> usize {
    n.div_ceil(GROUP) * GROUP
}

/// A layer packed for the SIMD kernels.
#[derive(Clone)]
pub(crate) struct Packed {
    pub in_dim: usize,
    /// `out_dim` rounded up to [`GROUP`]: the row stride of this layer's output.
    pub out_pad: usize,
    /// Number of groups of [`GROUP`] outputs.
    pub groups: usize,
    pub relu: bool,
    /// `[group][in][GROUP]`.
    pub w32: Vec<i32>,
    /// `bias << 16` per output, padded with zeros: the accumulators' start.
    pub bias: Vec<i64>,
}

impl Packed {
    /// Packs one dense layer: `weights` row-major `[out_dim][in_dim]` (as
    /// [`crate::Layer::weights`]), `bias` one per output, ReLU after the
    /// layer if `relu`.
    ///
    /// # Panics
    /// If `in_dim` is 0 or `weights.len()` is not `bias.len() * in_dim`.
    pub(crate) fn new(in_dim: usize, weights: &[i32], bias: &[i32], relu: bool) -> Self {
        let out_dim = bias.len();
        assert!(in_dim > 0 && weights.len() == out_dim * in_dim);
        let groups = out_dim.div_ceil(GROUP);
        let out_pad = groups * GROUP;
        let mut w32 = alloc::vec![0i32; groups * in_dim * GROUP];
        for (j, row) in weights.chunks_exact(in_dim).enumerate() {
            let (g, lane) = (j / GROUP, j % GROUP);
            for (i, &w) in row.iter().enumerate() {
                w32[(g * in_dim + i) * GROUP + lane] = w;
            }
        }
        let mut bias_acc = alloc::vec![0i64; out_pad];
        for (b, &v) in bias_acc.iter_mut().zip(bias) {
            *b = fixed::bias_acc(v);
        }

        Self {
            in_dim,
            out_pad,
            groups,
            relu,
            w32,
            bias: bias_acc,
        }
    }
}

/// Checks the sizes every kernel's `layer` relies on before it reads and
/// writes through raw pointers: `p`'s packed weights and biases, `n >= 1`
/// rows of `x` (stride `x_stride`, `p.in_dim` values each) and of `y`
/// (`p.out_pad` values each).
///
/// # Panics
/// If one of them is wrong (internal invariants, checked per call, not per
/// sample).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn check_layer(p: &Packed, x: &[i32], x_stride: usize, n: usize, y: &[i32]) {
    assert!(p.in_dim > 0 && p.out_pad == p.groups * GROUP);
    assert!(p.w32.len() == p.groups * p.in_dim * GROUP && p.bias.len() == p.out_pad);
    assert!(n >= 1 && x_stride >= p.in_dim);
    assert!(x.len() >= (n - 1) * x_stride + p.in_dim);
    assert!(y.len() >= n * p.out_pad);
}

/// Runs one packed layer on `n` samples.
///
/// `x` holds sample `s` at `x[s * x_stride..][..in_dim]`; `y` receives sample
/// `s` at `y[s * out_pad..][..out_dim]` (the padding outputs after them are
/// unspecified, and never read).
///
/// # Panics
/// If the slices are too short (see `check_layer`), or `kernel` is not a
/// supported SIMD kernel (both are internal invariants, checked per call,
/// not per sample).
pub(crate) fn run_layer(
    kernel: Kernel,
    p: &Packed,
    x: &[i32],
    x_stride: usize,
    n: usize,
    y: &mut [i32],
) {
    match kernel {
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 => {
            assert!(avx512::supported());
            // SAFETY: the CPU has the features `layer` is compiled for
            // (checked above), the only requirement of calling it from here;
            // it checks the slices' sizes itself.
            unsafe { avx512::layer(p, x, x_stride, n, y) }
        }
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => {
            assert!(avx2::supported());
            // SAFETY: as for AVX-512 above.
            unsafe { avx2::layer(p, x, x_stride, n, y) }
        }
        #[cfg(target_arch = "aarch64")]
        Kernel::Neon => {
            assert!(neon::supported());
            // SAFETY: as for AVX-512 above.
            unsafe { neon::layer(p, x, x_stride, n, y) }
        }
        k => panic!("run_layer: {k} is not a SIMD kernel of this build"),
    }
}
