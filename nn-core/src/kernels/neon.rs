// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! aarch64 Advanced SIMD kernel: a group of 8 outputs is four `int64x2`
//! accumulators, `smlal`/`smlal2` (exact widening multiply-accumulate, wrapping
//! modulo 2^64) per 2 multiply-accumulates, then `sshr` (round), `sqxtn`
//! (saturate to i32) and `smax` (ReLU).

use core::arch::aarch64::*;

use super::{check_layer, Packed, GROUP};

/// Whether the CPU runs this kernel.
pub(super) fn supported() -> bool {
    #[cfg(feature = "std")]
    {
        std::arch::is_aarch64_feature_detected!("neon")
    }
    #[cfg(not(feature = "std"))]
    {
        cfg!(target_feature = "neon")
    }
}

/// One tile: `S` samples by one group of 8 outputs.
///
/// # Safety
/// The CPU has NEON. `w` points to one packed group (`in_dim * 8` values),
/// `bias` to 8 values, `x` to `S` rows of stride `x_stride` with `in_dim`
/// readable values each, `y` to `S` rows of stride `y_stride` with 8
/// writable values each.
#[inline]
#[target_feature(enable = "neon")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const S: usize>(
    w: *const i32,
    in_dim: usize,
    bias: *const i64,
    x: *const i32,
    x_stride: usize,
    y: *mut i32,
    y_stride: usize,
    relu: bool,
) {
    // SAFETY: `bias` has 8 readable values (the caller's contract).
    let b = unsafe {
        [
            vld1q_s64(bias),
            vld1q_s64(bias.add(2)),
            vld1q_s64(bias.add(4)),
            vld1q_s64(bias.add(6)),
        ]
    };
    let mut acc = [b; S];
    for i in 0..in_dim {
        // SAFETY: `w` has `in_dim * 8` readable values (the caller's
        // contract): these are the 8 of input `i < in_dim`.
        let (w0, w1) = unsafe { (vld1q_s32(w.add(i * GROUP)), vld1q_s32(w.add(i * GROUP + 4))) };
        for (s, a) in acc.iter_mut().enumerate() {
            // SAFETY: row `s < S` of `x` has `in_dim` readable values (the
            // caller's contract), and `i < in_dim`.
            let xs = unsafe { *x.add(s * x_stride + i) };
            a[0] = vmlal_n_s32(a[0], vget_low_s32(w0), xs);
            a[1] = vmlal_high_n_s32(a[1], w0, xs);
            a[2] = vmlal_n_s32(a[2], vget_low_s32(w1), xs);
            a[3] = vmlal_high_n_s32(a[3], w1, xs);
        }
    }
    let half = vdupq_n_s64(1 << 15);
    let zero = vdupq_n_s32(0);
    for (s, a) in acc.iter().enumerate() {
        let r = |v: int64x2_t| vqmovn_s64(vshrq_n_s64::<16>(vaddq_s64(v, half)));
        let mut lo = vcombine_s32(r(a[0]), r(a[1]));
        let mut hi = vcombine_s32(r(a[2]), r(a[3]));
        if relu {
            lo = vmaxq_s32(lo, zero);
            hi = vmaxq_s32(hi, zero);
        }
        // SAFETY: row `s < S` of `y` has 8 writable values (the caller's
        // contract).
        unsafe {
            vst1q_s32(y.add(s * y_stride), lo);
            vst1q_s32(y.add(s * y_stride + 4), hi);
        }
    }
}

/// Runs a packed layer on `n` samples (see `super::run_layer`).
///
/// Safe to call where NEON is enabled (a caller without it needs `unsafe`
/// and a run-time check that the CPU has it): the sizes are checked here.
///
/// # Panics
/// As [`check_layer`].
#[target_feature(enable = "neon")]
pub(super) fn layer(p: &Packed, x: &[i32], x_stride: usize, n: usize, y: &mut [i32]) {
    check_layer(p, x, x_stride, n, y);
    let (x, y) = (x.as_ptr(), y.as_mut_ptr());
    for g in 0..p.groups {
        let w = p.w32[g * p.in_dim * GROUP..].as_ptr();
        let b = p.bias[g * GROUP..].as_ptr();
        let mut s = 0;
        while s + 4 <= n {
            // SAFETY: group `g < groups` has `in_dim * 8` weights at `w` and
            // 8 biases at `b`, and rows `s..s + 4` of `x` and `y` exist
            // (`s + 4 <= n`; sizes checked above), each with the `in_dim`
            // inputs and the group's 8 outputs `tile` reads and writes.
            unsafe {
                let (xs, ys) = (x.add(s * x_stride), y.add(s * p.out_pad + g * GROUP));
                tile::<4>(w, p.in_dim, b, xs, x_stride, ys, p.out_pad, p.relu);
            }
            s += 4;
        }
        while s < n {
            // SAFETY: as above, with row `s < n`.
            unsafe {
                let (xs, ys) = (x.add(s * x_stride), y.add(s * p.out_pad + g * GROUP));
                tile::<1>(w, p.in_dim, b, xs, x_stride, ys, p.out_pad, p.relu);
            }
            s += 1;
        }
    }
}
