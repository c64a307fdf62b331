// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Conversions between floats and Q16.16 (`crate::fixed`), for the
//! importers, the benchmarks and test models. Host only: the arithmetic the
//! guest kernel shares (`fixed.rs`) has no floats.

use crate::fixed;

/// Converts a float to the nearest Q16.16 value (ties away from zero), or
/// `None` for NaN, infinities and values outside the Q16.16 range.
pub fn from_f64(x: f64) -> Option<i32> {
    let scaled = x * f64::from(fixed::ONE);
    if !scaled.is_finite() {
        return None;
    }
    // Rounding by hand: `f64::round` needs std.
    let r = if scaled >= 0.0 {
        (scaled + 0.5) as i64 as f64
    } else {
        -((-scaled + 0.5) as i64 as f64)
    };
    if r < f64::from(i32::MIN) || r > f64::from(i32::MAX) {
        return None;
    }
    Some(r as i32)
}

/// Converts Q16.16 to a float (exact).
pub fn to_f64(x: i32) -> f64 {
    f64::from(x) / f64::from(fixed::ONE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixed::ONE;

    #[test]
    fn float_conversion() {
        assert_eq!(from_f64(0.5), Some(ONE / 2));
        assert_eq!(from_f64(-1.5), Some(-3 * ONE / 2));
        assert_eq!(from_f64(f64::NAN), None);
        assert_eq!(from_f64(32768.0), None);
        assert_eq!(from_f64(-32768.0), Some(i32::MIN));
        assert_eq!(to_f64(ONE / 4), 0.25);
    }
}
