// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! AVX2 kernel: a group of 8 outputs is two `ymm` of 4 lanes, `vpmuldq` +
//! `vpaddq` per 4 multiply-accumulates. AVX2 has no 64-bit arithmetic shift
//! nor 64-bit min/max, so rounding is a logical shift with the sign bits put
//! back, and saturation is two compares and blends, per 4 outputs.

use core::arch::x86_64::*;

use super::{check_layer, Packed, GROUP};

/// Whether the CPU runs this kernel.
pub(super) fn supported() -> bool {
    #[cfg(feature = "std")]
    {
        std::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(feature = "std"))]
    {
        cfg!(target_feature = "avx2")
    }
}

/// `sat32(round16(acc))` on 4 lanes, still as `i64` lanes.
#[inline]
#[target_feature(enable = "avx2")]
fn round_sat(acc: __m256i) -> __m256i {
    let t = _mm256_add_epi64(acc, _mm256_set1_epi64x(1 << 15));
    // Arithmetic shift right by 16: logical shift, then the top 16 bits set
    // for negative values.
    let neg = _mm256_cmpgt_epi64(_mm256_setzero_si256(), t);
    let r = _mm256_or_si256(_mm256_srli_epi64::<16>(t), _mm256_slli_epi64::<48>(neg));
    let max = _mm256_set1_epi64x(i64::from(i32::MAX));
    let min = _mm256_set1_epi64x(i64::from(i32::MIN));
    let r = _mm256_blendv_epi8(r, max, _mm256_cmpgt_epi64(r, max));
    _mm256_blendv_epi8(r, min, _mm256_cmpgt_epi64(min, r))
}

/// Packs the low 32 bits of two vectors of 4 `i64` lanes into 8 `i32`.
#[inline]
#[target_feature(enable = "avx2")]
fn narrow(lo: __m256i, hi: __m256i) -> __m256i {
    let idx = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
    let a = _mm256_permutevar8x32_epi32(lo, idx);
    let b = _mm256_permutevar8x32_epi32(hi, idx);
    _mm256_permute2x128_si256::<0x20>(a, b)
}

/// One tile: `S` samples by `V` groups of 8 outputs.
///
/// # Safety
/// The CPU has AVX2. `w` points to `V` consecutive packed groups
/// (`V * in_dim * 8` values), `bias` to `V * 8` values, `x` to `S` rows of
/// stride `x_stride` with `in_dim` readable values each, `y` to `S` rows of
/// stride `y_stride` with `V * 8` writable values each.
#[inline]
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const S: usize, const V: usize>(
    w: *const i32,
    in_dim: usize,
    bias: *const i64,
    x: *const i32,
    x_stride: usize,
    y: *mut i32,
    y_stride: usize,
    relu: bool,
) {
    let mut acc = [[[_mm256_setzero_si256(); 2]; V]; S];
    for v in 0..V {
        // SAFETY: `bias` has `V * 8` readable values (the caller's contract):
        // these are the 8 of group `v < V`.
        let (b0, b1) = unsafe {
            let b = bias.add(v * GROUP);
            (
                _mm256_loadu_si256(b.cast()),
                _mm256_loadu_si256(b.add(4).cast()),
            )
        };
        for a in acc.iter_mut() {
            a[v] = [b0, b1];
        }
    }
    for i in 0..in_dim {
        let mut wv = [[_mm256_setzero_si256(); 2]; V];
        for (v, wv) in wv.iter_mut().enumerate() {
            // SAFETY: `w` has `V` groups of `in_dim * 8` readable values (the
            // caller's contract): these are the 8 of input `i < in_dim` in
            // group `v < V`.
            let (lo, hi) = unsafe {
                let p = w.add((v * in_dim + i) * GROUP);
                (_mm_loadu_si128(p.cast()), _mm_loadu_si128(p.add(4).cast()))
            };
            *wv = [_mm256_cvtepi32_epi64(lo), _mm256_cvtepi32_epi64(hi)];
        }
        for (s, a) in acc.iter_mut().enumerate() {
            // SAFETY: row `s < S` of `x` has `in_dim` readable values (the
            // caller's contract), and `i < in_dim`.
            let xi = unsafe { *x.add(s * x_stride + i) };
            // x in the low half of every 64-bit lane for vpmuldq.
            let xs = _mm256_set1_epi32(xi);
            for v in 0..V {
                a[v][0] = _mm256_add_epi64(a[v][0], _mm256_mul_epi32(wv[v][0], xs));
                a[v][1] = _mm256_add_epi64(a[v][1], _mm256_mul_epi32(wv[v][1], xs));
            }
        }
    }
    let zero = _mm256_setzero_si256();
    for (s, a) in acc.iter().enumerate() {
        for (v, a) in a.iter().enumerate() {
            let mut o = narrow(round_sat(a[0]), round_sat(a[1]));
            if relu {
                o = _mm256_max_epi32(o, zero);
            }
            // SAFETY: row `s < S` of `y` has `V * 8` writable values (the
            // caller's contract): these are the 8 of group `v < V`.
            unsafe { _mm256_storeu_si256(y.add(s * y_stride + v * GROUP).cast(), o) };
        }
    }
}

x86_samples!("avx2");

/// Runs a packed layer on `n` samples (see `super::run_layer`).
///
/// Safe to call where AVX2 is enabled (a caller without it needs `unsafe`
/// and a run-time check that the CPU has it): the sizes are checked here.
///
/// # Panics
/// As [`check_layer`].
#[target_feature(enable = "avx2")]
pub(super) fn layer(p: &Packed, x: &[i32], x_stride: usize, n: usize, y: &mut [i32]) {
    check_layer(p, x, x_stride, n, y);
    let (x, y) = (x.as_ptr(), y.as_mut_ptr());
    let groups = p.groups;
    // Tiles of 4 samples x 1 group: 8 accumulators + 2 weights + 1 input of
    // the 16 ymm registers.
    let full = n / 4 * 4;
    if full > 0 {
        // SAFETY: `x`, `y` and `p` have the sizes `samples` needs (checked
        // above), `full` is a multiple of 4 and `groups - 0` of 1.
        unsafe { samples::<4, 1>(p, 0, groups, x, x_stride, full, y) };
    }
    let rest = n - full;
    if rest > 0 {
        let g2 = groups / 2 * 2;
        // SAFETY: the `rest` rows after the first `full` rows of `x` and `y`
        // (checked above) are rows `full..n`, so the offsets stay inside and
        // `samples` gets `rest` rows of the sizes it needs; `rest` is a
        // multiple of 1, `g2` of 2 and `groups - g2` of 1.
        unsafe {
            let (x, y) = (x.add(full * x_stride), y.add(full * p.out_pad));
            samples::<1, 2>(p, 0, g2, x, x_stride, rest, y);
            samples::<1, 1>(p, g2, groups, x, x_stride, rest, y);
        }
    }
}
