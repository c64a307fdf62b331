// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The text format of `/proc/neural_network/predict` and `predict_q16`: the
//! one definition of it.
//!
//! A write is a list of comma-separated decimal integers; each field may have
//! an optional sign and surrounding whitespace, and the whole text may end with
//! a newline. A read is the list of outputs joined with `,` plus a trailing
//! `\n`. [`Format`] says how the numbers relate to the Q16.16 values on the
//! device.
//!
//! Like `protocol.rs`, this file is used by every side: the guest kernel
//! module includes it with `#[path = ...] mod proc_text;` (its `/proc`
//! files), and the host tools and tests use it as `nn_core::proc_text`
//! (`nn-model predict` reads and prints this format; the end-to-end tests
//! write and parse it). It therefore depends on nothing but `core`: no
//! allocation, no `std`, no other module of this crate, no `unsafe`.

/// Most bytes one write may carry.
pub const MAX_WRITE_LEN: usize = 64 * 1024;

/// Bytes [`format_values`] needs per value at most: `-2147483648` and a
/// separator.
pub const MAX_FORMATTED_VALUE_LEN: usize = 12;

/// How the values of a proc file are read and written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `predict`: whole numbers in, whole numbers out. An input `x` becomes
    /// the Q16.16 value `x << 16`; an output `y` is shown as `y >> 16`
    /// (arithmetic, that is rounded towards minus infinity).
    Whole,
    /// `predict_q16`: raw Q16.16 values, as decimal `i32`, both ways.
    Q16,
}

impl Format {
    /// Smallest and largest value a write may hold.
    pub const fn range(self) -> (i64, i64) {
        match self {
            // The whole numbers whose Q16.16 value fits an `i32`.
            Format::Whole => (i16::MIN as i64, i16::MAX as i64),
            Format::Q16 => (i32::MIN as i64, i32::MAX as i64),
        }
    }

    /// The Q16.16 value of `value` as written in this format, or `None` if
    /// it is outside [`Format::range`].
    pub const fn to_q16(self, value: i64) -> Option<i32> {
        let (min, max) = self.range();
        if value < min || value > max {
            return None;
        }
        Some(match self {
            // In range, so the shift cannot overflow an `i32`.
            Format::Whole => (value as i32) << 16,
            Format::Q16 => value as i32,
        })
    }

    /// How the Q16.16 value `value` is shown in this format.
    pub const fn from_q16(self, value: i32) -> i32 {
        match self {
            Format::Whole => value >> 16,
            Format::Q16 => value,
        }
    }
}

/// Why a write is not a valid list of values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// Nothing but whitespace.
    Empty,
    /// A field is empty (e.g. `1,,2` or a trailing comma).
    EmptyField,
    /// A field is not a decimal integer.
    NotANumber,
    /// A value is outside the range of the format.
    Overflow,
    /// The number of values is not the one asked for.
    WrongCount,
}

impl core::fmt::Display for ParseError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            ParseError::Empty => "no values",
            ParseError::EmptyField => "an empty field",
            ParseError::NotANumber => "a field that is not a decimal integer",
            ParseError::Overflow => "a value out of range",
            ParseError::WrongCount => "the wrong number of values",
        })
    }
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = s {
        if !first.is_ascii_whitespace() {
            break;
        }
        s = rest;
    }
    while let [rest @ .., last] = s {
        if !last.is_ascii_whitespace() {
            break;
        }
        s = rest;
    }
    s
}

/// Number of values in `text` (its fields, valid or not); 0 when it is empty.
pub fn count_fields(text: &[u8]) -> usize {
    let text = trim(text);
    if text.is_empty() {
        return 0;
    }
    1 + text.iter().filter(|&&c| c == b',').count()
}

/// Parses one field (already trimmed) into a value within `range`.
fn parse_field(field: &[u8], (min, max): (i64, i64)) -> Result<i64, ParseError> {
    let (negative, digits) = match field {
        [] => return Err(ParseError::EmptyField),
        [b'-', rest @ ..] => (true, rest),
        [b'+', rest @ ..] => (false, rest),
        _ => (false, field),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(ParseError::NotANumber);
    }
    let mut value: i64 = 0;
    for &d in digits {
        // Stop as soon as the value leaves the range: no wrap-around however
        // many digits there are.
        value = value * 10 + i64::from(d - b'0');
        if value > max.max(-min) {
            return Err(ParseError::Overflow);
        }
    }
    let value = if negative { -value } else { value };
    if value < min || value > max {
        return Err(ParseError::Overflow);
    }
    Ok(value)
}

/// Parses `text` into `out` as Q16.16 values; `text` must hold exactly
/// `out.len()` values (see [`count_fields`]). On error `out` may be partly
/// written.
pub fn parse_values(text: &[u8], format: Format, out: &mut [i32]) -> Result<(), ParseError> {
    let text = trim(text);
    if text.is_empty() {
        return Err(ParseError::Empty);
    }
    let mut fields = text.split(|&c| c == b',');
    for slot in out.iter_mut() {
        let field = fields.next().ok_or(ParseError::WrongCount)?;
        let value = parse_field(trim(field), format.range())?;
        *slot = format.to_q16(value).ok_or(ParseError::Overflow)?;
    }
    if fields.next().is_some() {
        return Err(ParseError::WrongCount);
    }
    Ok(())
}

/// Writes `value` in decimal at the start of `out`; returns the length.
fn format_i32(value: i32, out: &mut [u8]) -> usize {
    let mut digits = [0u8; 10];
    let mut n = 0;
    let mut v = i64::from(value).unsigned_abs();
    loop {
        digits[n] = b'0' + (v % 10) as u8;
        n += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    let mut len = 0;
    if value < 0 {
        out[0] = b'-';
        len = 1;
    }
    for &d in digits[..n].iter().rev() {
        out[len] = d;
        len += 1;
    }
    len
}

/// Bytes [`format_values`] needs for `n` values at most.
pub const fn formatted_len(n: usize) -> usize {
    n * MAX_FORMATTED_VALUE_LEN + 1
}

/// Formats `values` (Q16.16) as the text a read returns, into `out`, which
/// must hold at least [`formatted_len`]`(values.len())` bytes. Returns the
/// length of the text.
pub fn format_values(values: &[i32], format: Format, out: &mut [u8]) -> usize {
    let mut len = 0;
    for (i, &v) in values.iter().enumerate() {
        if i > 0 {
            out[len] = b',';
            len += 1;
        }
        len += format_i32(format.from_q16(v), &mut out[len..]);
    }
    out[len] = b'\n';
    len + 1
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use std::string::String;

    fn parse(text: &str, format: Format, n: usize) -> Result<[i32; 16], ParseError> {
        let mut out = [0i32; 16];
        parse_values(text.as_bytes(), format, &mut out[..n]).map(|()| out)
    }

    fn format(values: &[i32], format: Format) -> String {
        let mut out = [0u8; formatted_len(16)];
        let len = format_values(values, format, &mut out);
        String::from_utf8(out[..len].to_vec()).unwrap()
    }

    #[test]
    fn whole_numbers() {
        let v = parse("1,2,3\n", Format::Whole, 3).unwrap();
        assert_eq!(&v[..3], &[1 << 16, 2 << 16, 3 << 16]);
        let v = parse("  -1 ,+2,\t0 \n", Format::Whole, 3).unwrap();
        assert_eq!(&v[..3], &[-(1 << 16), 2 << 16, 0]);
        let v = parse("-32768,32767", Format::Whole, 2).unwrap();
        assert_eq!(&v[..2], &[i32::MIN, 32767 << 16]);
        assert_eq!(
            parse("32768,1", Format::Whole, 2),
            Err(ParseError::Overflow)
        );
        assert_eq!(
            parse("-32769,1", Format::Whole, 2),
            Err(ParseError::Overflow)
        );
        assert_eq!(parse("40000", Format::Whole, 1), Err(ParseError::Overflow));
        let long = "1".repeat(100);
        assert_eq!(parse(&long, Format::Whole, 1), Err(ParseError::Overflow));
    }

    #[test]
    fn q16_numbers() {
        let v = parse("-2147483648,2147483647,0", Format::Q16, 3).unwrap();
        assert_eq!(&v[..3], &[i32::MIN, i32::MAX, 0]);
        assert_eq!(
            parse("2147483648", Format::Q16, 1),
            Err(ParseError::Overflow)
        );
        assert_eq!(
            parse("-2147483649", Format::Q16, 1),
            Err(ParseError::Overflow)
        );
        assert_eq!(
            parse("-0000000000000000000001", Format::Q16, 1).unwrap()[0],
            -1
        );
    }

    #[test]
    fn bad_input() {
        assert_eq!(parse("", Format::Whole, 0), Err(ParseError::Empty));
        assert_eq!(parse(" \n", Format::Whole, 1), Err(ParseError::Empty));
        assert_eq!(parse("1,,2", Format::Whole, 3), Err(ParseError::EmptyField));
        assert_eq!(parse("1,2,", Format::Whole, 3), Err(ParseError::EmptyField));
        assert_eq!(parse("a,b", Format::Whole, 2), Err(ParseError::NotANumber));
        assert_eq!(parse("1 2", Format::Whole, 1), Err(ParseError::NotANumber));
        assert_eq!(parse("-", Format::Whole, 1), Err(ParseError::NotANumber));
        assert_eq!(parse("+-1", Format::Whole, 1), Err(ParseError::NotANumber));
        assert_eq!(parse("1\0", Format::Whole, 1), Err(ParseError::NotANumber));
        assert_eq!(parse("0x10", Format::Whole, 1), Err(ParseError::NotANumber));
        assert_eq!(parse("1,2", Format::Whole, 3), Err(ParseError::WrongCount));
        assert_eq!(
            parse("1,2,3", Format::Whole, 2),
            Err(ParseError::WrongCount)
        );
        assert_eq!(count_fields(b"1,2\n"), 2);
        assert_eq!(count_fields(b" \n"), 0);
        assert_eq!(count_fields(b",,"), 3);
    }

    #[test]
    fn formatting() {
        let v = [3 << 16, -(1 << 16), 0x8000, (7 << 16) + 0xffff];
        assert_eq!(format(&v, Format::Whole), "3,-1,0,7\n");
        // Floor, not truncation: -0.5 shows as -1.
        assert_eq!(format(&[-0x8000], Format::Whole), "-1\n");
        assert_eq!(
            format(&[i32::MIN, i32::MAX], Format::Whole),
            "-32768,32767\n"
        );
        assert_eq!(
            format(&[i32::MIN, i32::MAX, 0, -7], Format::Q16),
            "-2147483648,2147483647,0,-7\n"
        );
        assert_eq!(format(&[], Format::Q16), "\n");
        // The widest values fill the room formatted_len promises exactly.
        let widest = [i32::MIN; 16];
        assert_eq!(format(&widest, Format::Q16).len(), formatted_len(16) - 1);
    }

    #[test]
    fn conversions() {
        assert_eq!(Format::Whole.to_q16(-32768), Some(i32::MIN));
        assert_eq!(Format::Whole.to_q16(32767), Some(32767 << 16));
        assert_eq!(Format::Whole.to_q16(32768), None);
        assert_eq!(Format::Q16.to_q16(i64::from(i32::MIN) - 1), None);
        assert_eq!(Format::Whole.from_q16(-1), -1);
        assert_eq!(Format::Q16.from_q16(-1), -1);
    }

    #[test]
    fn what_is_written_reads_back() {
        // A read's text is a valid write of the same values (Q16), and of
        // the shown values (whole numbers).
        let v = [i32::MIN, -65537, -1, 0, 1, 65535, 65536, i32::MAX];
        for f in [Format::Q16, Format::Whole] {
            let text = format(&v, f);
            let mut back = [0i32; 8];
            parse_values(text.as_bytes(), f, &mut back).unwrap();
            for (b, x) in back.iter().zip(v) {
                assert_eq!(*b, f.to_q16(i64::from(f.from_q16(x))).unwrap());
            }
        }
    }
}
