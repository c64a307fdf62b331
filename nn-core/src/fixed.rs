// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Q16.16 fixed-point numbers and the exact arithmetic of one neuron.
//!
//! A value is an `i32` holding `x * 2^16`: 16 integer bits (with the sign) and
//! 16 fractional bits, so the range is `[-32768, 32768 - 2^-16]` with a step
//! of `2^-16`.
//!
//! # The arithmetic of a dense neuron
//!
//! `y = act(sat32(round16(B + sum_i W_i * X_i)))`, precisely:
//!
//! 1. **Products**: each `W_i * X_i` is the exact 64-bit product of two `i32`
//!    (a Q32.32 value; it always fits in `i64`).
//! 2. **Accumulation**: the bias enters as `B = bias << 16` (also Q32.32) and
//!    the products are added to it in `i64` with **wrapping** (two's
//!    complement, modulo 2^64) addition. Because wrapping addition is
//!    associative and commutative, the sum is the same in any order, which is
//!    what lets SIMD kernels split and reorder the sum and still give the same
//!    bits. A wrap needs |sum| >= 2^63, i.e. values near the extremes of i32 in
//!    both operands (e.g. two products of `i32::MIN * i32::MIN`); real models
//!    are nowhere near, and the result is still defined.
//! 3. **Rounding**: `round16(a) = (a + 2^15) >> 16` with a wrapping add and an
//!    arithmetic shift: round to nearest, ties towards +infinity.
//! 4. **Saturation**: the rounded `i64` is clamped to `[i32::MIN, i32::MAX]`.
//! 5. **Activation**: ReLU is `max(y, 0)`; identity leaves `y`.
//!
//! # Shared with the guest kernel
//!
//! The guest driver includes this very file with `#[path = ...] mod fixed;`
//! (with `reference.rs` and `model_view.rs`, the forward pass and the model
//! file reader it runs on its copy of the model): it depends on nothing but
//! `core` — no allocation, no `std`, no floats (the kernel has no FPU
//! context), no other module of this crate, no `unsafe` — and nothing in it
//! can panic (no indexing; the shifts and products cannot overflow).
//! `nn-core/tests/core_only.rs` builds it as a `#![no_std]` crate without
//! `alloc`. Float conversions are in `crate::quant`.

#![deny(
    clippy::indexing_slicing,
    clippy::float_arithmetic,
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used
)]

/// Number of fractional bits (also `protocol::FRAC_BITS`, the wire's; a
/// compile-time assertion in the crate root keeps the two equal).
pub const FRAC_BITS: u32 = 16;
/// 1.0 in Q16.16.
pub const ONE: i32 = 1 << FRAC_BITS;
/// Largest whole number that converts to Q16.16 without overflow.
pub const INT_MAX: i32 = i32::MAX >> FRAC_BITS;
/// Smallest whole number that converts to Q16.16 without overflow.
pub const INT_MIN: i32 = i32::MIN >> FRAC_BITS;

/// Converts a whole number to Q16.16, or `None` if it is out of range.
pub fn from_int(x: i32) -> Option<i32> {
    if (INT_MIN..=INT_MAX).contains(&x) {
        Some(x << FRAC_BITS)
    } else {
        None
    }
}

/// Converts Q16.16 to a whole number, rounding towards minus infinity (an
/// arithmetic shift, as the original design's `FIXED_TO_INT`).
pub fn to_int(x: i32) -> i32 {
    x >> FRAC_BITS
}

/// The accumulator's starting value for a bias (step 2).
#[inline(always)]
pub fn bias_acc(bias: i32) -> i64 {
    i64::from(bias) << FRAC_BITS
}

/// Adds one product to the accumulator (steps 1 and 2).
#[inline(always)]
pub fn mac(acc: i64, w: i32, x: i32) -> i64 {
    acc.wrapping_add(i64::from(w) * i64::from(x))
}

/// Rounds and saturates an accumulator to Q16.16 (steps 3 and 4).
#[inline(always)]
pub fn round_sat(acc: i64) -> i32 {
    let r = acc.wrapping_add(1 << (FRAC_BITS - 1)) >> FRAC_BITS;
    r.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32
}

/// One neuron without its activation: `sat32(round16(bias << 16 + w . x))`.
pub fn neuron(weights: &[i32], bias: i32, inputs: &[i32]) -> i32 {
    let acc = weights
        .iter()
        .zip(inputs)
        .fold(bias_acc(bias), |acc, (&w, &x)| mac(acc, w, x));
    round_sat(acc)
}

/// [`neuron`] with the weights as little-endian bytes (4 per weight, as a
/// model file stores them): the same arithmetic on the same values.
pub fn neuron_le(weights: &[u8], bias: i32, inputs: &[i32]) -> i32 {
    // `split_first_chunk`, not `chunks_exact`: the latter's division brings
    // a panic path that the guest kernel's objtool reports.
    let mut acc = bias_acc(bias);
    let mut rest = weights;
    for &x in inputs {
        let Some((w, tail)) = rest.split_first_chunk::<4>() else {
            break;
        };
        acc = mac(acc, i32::from_le_bytes(*w), x);
        rest = tail;
    }
    round_sat(acc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int_conversion_bounds() {
        assert_eq!(from_int(1), Some(ONE));
        assert_eq!(from_int(-32768), Some(i32::MIN));
        assert_eq!(from_int(32767), Some(32767 << 16));
        assert_eq!(from_int(32768), None);
        assert_eq!(from_int(-32769), None);
        assert_eq!(to_int(-1), -1, "floor, not truncation");
        assert_eq!(to_int(ONE + ONE / 2), 1);
    }

    #[test]
    fn rounding_is_half_up_and_saturates() {
        // 0.5 * 2^-16 rounds up; -0.5 * 2^-16 rounds up to 0.
        assert_eq!(round_sat(1 << 15), 1);
        assert_eq!(round_sat(-(1 << 15)), 0);
        assert_eq!(round_sat(-(1 << 15) - 1), -1);
        assert_eq!(round_sat(i64::MAX / 2), i32::MAX);
        assert_eq!(round_sat(i64::MIN / 2), i32::MIN);
    }

    #[test]
    fn neuron_matches_real_arithmetic() {
        // 1.5 * 2.0 + 0.25 * -4.0 + bias 0.5 = 2.5
        let w = [3 * ONE / 2, ONE / 4];
        let x = [2 * ONE, -4 * ONE];
        assert_eq!(neuron(&w, ONE / 2, &x), 5 * ONE / 2);
        // Saturation: 30000 * 30000 does not fit.
        assert_eq!(neuron(&[30000 * ONE], 0, &[30000 * ONE]), i32::MAX);
        assert_eq!(neuron(&[30000 * ONE], 0, &[-30000 * ONE]), i32::MIN);
    }

    #[test]
    fn accumulation_wraps_independently_of_order() {
        let w = [i32::MIN, i32::MIN, i32::MIN, 7];
        let x = [i32::MIN, i32::MIN, i32::MIN, -3];
        let fwd = neuron(&w, 1, &x);
        let mut wr = w;
        let mut xr = x;
        wr.reverse();
        xr.reverse();
        assert_eq!(fwd, neuron(&wr, 1, &xr));
    }
}
