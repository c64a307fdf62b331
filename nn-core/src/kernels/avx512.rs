// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! AVX-512 (F + VL) kernel: 8 outputs per `zmm`, `vpmuldq` + `vpaddq` per 8
//! multiply-accumulates, then `vpsraq` (round), `vpmovsqd` (saturate to i32)
//! and `vpmaxsd` (ReLU) per 8 outputs.

use core::arch::x86_64::*;

use super::{check_layer, Packed, GROUP};

/// Whether the CPU runs this kernel.
pub(super) fn supported() -> bool {
    #[cfg(feature = "std")]
    {
        std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512vl")
            && std::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(feature = "std"))]
    {
        cfg!(all(
            target_feature = "avx512f",
            target_feature = "avx512vl",
            target_feature = "avx2"
        ))
    }
}

/// One tile: `S` samples by `V` groups of 8 outputs.
///
/// # Safety
/// The CPU has AVX-512 F + VL and AVX2. `w` points to `V` consecutive packed
/// groups (`V * in_dim * 8` values), `bias` to `V * 8` values, `x` to `S`
/// rows of stride `x_stride` with `in_dim` readable values each, `y` to `S`
/// rows of stride `y_stride` with `V * 8` writable values each.
#[inline]
#[target_feature(enable = "avx512f,avx512vl,avx2")]
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
    let mut acc = [[_mm512_setzero_si512(); V]; S];
    for v in 0..V {
        // SAFETY: `bias` has `V * 8` readable values (the caller's contract):
        // these are the 8 of group `v < V`.
        let b = unsafe { _mm512_loadu_si512(bias.add(v * GROUP).cast()) };
        for a in acc.iter_mut() {
            a[v] = b;
        }
    }
    for i in 0..in_dim {
        let mut wv = [_mm512_setzero_si512(); V];
        for (v, wv) in wv.iter_mut().enumerate() {
            // SAFETY: `w` has `V` groups of `in_dim * 8` readable values (the
            // caller's contract): these are the 8 of input `i < in_dim` in
            // group `v < V`.
            let w8 = unsafe { _mm256_loadu_si256(w.add((v * in_dim + i) * GROUP).cast()) };
            *wv = _mm512_cvtepi32_epi64(w8);
        }
        for (s, a) in acc.iter_mut().enumerate() {
            // SAFETY: row `s < S` of `x` has `in_dim` readable values (the
            // caller's contract), and `i < in_dim`.
            let xi = unsafe { *x.add(s * x_stride + i) };
            // x in the low half of every 64-bit lane: vpmuldq multiplies the
            // low signed 32 bits of each lane into an exact 64-bit product.
            let xs = _mm512_set1_epi32(xi);
            for v in 0..V {
                a[v] = _mm512_add_epi64(a[v], _mm512_mul_epi32(wv[v], xs));
            }
        }
    }
    let half = _mm512_set1_epi64(1 << 15);
    let zero = _mm256_setzero_si256();
    for (s, a) in acc.iter().enumerate() {
        for (v, &a) in a.iter().enumerate() {
            let r = _mm512_srai_epi64::<16>(_mm512_add_epi64(a, half));
            let mut o = _mm512_cvtsepi64_epi32(r);
            if relu {
                o = _mm256_max_epi32(o, zero);
            }
            // SAFETY: row `s < S` of `y` has `V * 8` writable values (the
            // caller's contract): these are the 8 of group `v < V`.
            unsafe { _mm256_storeu_si256(y.add(s * y_stride + v * GROUP).cast(), o) };
        }
    }
}

/// One sample by `V` groups, for latency: each group's sum is split over 4
/// accumulators (inputs `i % 4`), so the dependency chains are a quarter as
/// long; wrapping addition is associative, so the sum is the same.
///
/// # Safety
/// As [`tile`] with `S = 1`.
#[inline]
#[target_feature(enable = "avx512f,avx512vl,avx2")]
#[allow(clippy::needless_range_loop)] // indexing several arrays by group
unsafe fn single<const V: usize>(
    w: *const i32,
    in_dim: usize,
    bias: *const i64,
    x: *const i32,
    y: *mut i32,
    relu: bool,
) {
    const P: usize = 4;
    let mut acc = [[_mm512_setzero_si512(); V]; P];
    for v in 0..V {
        // SAFETY: `bias` has `V * 8` readable values (the caller's contract):
        // these are the 8 of group `v < V`.
        acc[0][v] = unsafe { _mm512_loadu_si512(bias.add(v * GROUP).cast()) };
    }
    // The 8 weights of input `i` in group `v`, sign-extended to 64 bits.
    let wl = |v: usize, i: usize| {
        debug_assert!(v < V && i < in_dim);
        // SAFETY: `w` has `V` groups of `in_dim * 8` readable values (the
        // caller's contract), and every call below has `v < V`, `i < in_dim`.
        let w8 = unsafe { _mm256_loadu_si256(w.add((v * in_dim + i) * GROUP).cast()) };
        _mm512_cvtepi32_epi64(w8)
    };
    let mut i = 0;
    while i + P <= in_dim {
        for (p, a) in acc.iter_mut().enumerate() {
            // SAFETY: `x` has `in_dim` readable values (the caller's
            // contract), and `i + p < i + P <= in_dim`.
            let xs = _mm512_set1_epi32(unsafe { *x.add(i + p) });
            for v in 0..V {
                a[v] = _mm512_add_epi64(a[v], _mm512_mul_epi32(wl(v, i + p), xs));
            }
        }
        i += P;
    }
    while i < in_dim {
        // SAFETY: `x` has `in_dim` readable values, and `i < in_dim`.
        let xs = _mm512_set1_epi32(unsafe { *x.add(i) });
        for v in 0..V {
            acc[0][v] = _mm512_add_epi64(acc[0][v], _mm512_mul_epi32(wl(v, i), xs));
        }
        i += 1;
    }
    let half = _mm512_set1_epi64(1 << 15);
    let zero = _mm256_setzero_si256();
    for v in 0..V {
        let a = _mm512_add_epi64(
            _mm512_add_epi64(acc[0][v], acc[1][v]),
            _mm512_add_epi64(acc[2][v], acc[3][v]),
        );
        let r = _mm512_srai_epi64::<16>(_mm512_add_epi64(a, half));
        let mut o = _mm512_cvtsepi64_epi32(r);
        if relu {
            o = _mm256_max_epi32(o, zero);
        }
        // SAFETY: `y` has `V * 8` writable values (the caller's contract):
        // these are the 8 of group `v < V`.
        unsafe { _mm256_storeu_si256(y.add(v * GROUP).cast(), o) };
    }
}

/// Runs one sample over groups `g0..g1`, `V` groups at a time.
///
/// # Safety
/// The CPU has AVX-512 F + VL and AVX2; `p` has the sizes
/// [`check_layer`] checks; `x` has `p.in_dim` readable values and `y`
/// `p.out_pad` writable ones; `g1 <= p.groups`.
#[inline]
#[target_feature(enable = "avx512f,avx512vl,avx2")]
unsafe fn one<const V: usize>(p: &Packed, g0: usize, g1: usize, x: *const i32, y: *mut i32) {
    let mut g = g0;
    while g + V <= g1 {
        // SAFETY: groups `g..g + V` exist (`g + V <= g1 <= p.groups`), so
        // `w` and `b` point to their `V * in_dim * 8` weights and `V * 8`
        // biases, and `y + g * 8` to their `V * 8` outputs of the row.
        unsafe {
            let w = p.w32.as_ptr().add(g * p.in_dim * GROUP);
            let b = p.bias.as_ptr().add(g * GROUP);
            single::<V>(w, p.in_dim, b, x, y.add(g * GROUP), p.relu);
        }
        g += V;
    }
}

x86_samples!("avx512f,avx512vl,avx2");

/// Runs a packed layer on `n` samples (see `super::run_layer`).
///
/// Safe to call where AVX-512 F + VL and AVX2 are enabled (a caller without
/// them needs `unsafe` and a run-time check that the CPU has them): the
/// sizes are checked here.
///
/// # Panics
/// As [`check_layer`].
#[target_feature(enable = "avx512f,avx512vl,avx2")]
pub(super) fn layer(p: &Packed, x: &[i32], x_stride: usize, n: usize, y: &mut [i32]) {
    check_layer(p, x, x_stride, n, y);
    let (x, y) = (x.as_ptr(), y.as_mut_ptr());
    let groups = p.groups;
    let g2 = groups / 2 * 2;
    // Blocks of 8 samples: each weight vector loaded once serves 8 samples.
    let full = n / 8 * 8;
    if full > 0 {
        // SAFETY: `x`, `y` and `p` have the sizes `samples` needs (checked
        // above), `full` is a multiple of 8, `g2` of 2 and `groups - g2` of 1.
        unsafe {
            samples::<8, 2>(p, 0, g2, x, x_stride, full, y);
            samples::<8, 1>(p, g2, groups, x, x_stride, full, y);
        }
    }
    // Remaining samples one at a time (the single-sample latency path).
    for s in full..n {
        // SAFETY: row `s < n` of `x` (`p.in_dim` values) and of `y`
        // (`p.out_pad` values) are inside the slices (checked above).
        unsafe {
            let (x, y) = (x.add(s * x_stride), y.add(s * p.out_pad));
            one::<2>(p, 0, g2, x, y);
            one::<1>(p, g2, groups, x, y);
        }
    }
}
