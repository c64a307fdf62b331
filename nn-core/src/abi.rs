// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The guest-facing definitions as JSON, for the code that cannot use this
//! crate: the Python tests (`tests/avocado/nnlib.py`) and, through them, the
//! guest suite's shell script read them from `nn-model abi` instead of
//! keeping their own copies of the device id, the `/dev/neural_network`
//! magics and header layout, or the `/proc` limits.
//!
//! Every value comes from [`crate::protocol`], [`crate::dev_abi`] and
//! [`crate::proc_text`].

use std::fmt::Write;

use crate::{dev_abi, proc_text, protocol};

fn fields(f: &[(&str, usize)]) -> String {
    let v: Vec<String> = f
        .iter()
        .map(|(name, off)| format!("[\"{name}\", {off}]"))
        .collect();
    format!("[{}]", v.join(", "))
}

fn magic(value: u32) -> String {
    let tag = String::from_utf8_lossy(&value.to_le_bytes()).into_owned();
    format!("{{\"value\": {value}, \"tag\": \"{tag}\"}}")
}

/// The definitions as one JSON object (pretty-printed, keys in a fixed
/// order):
///
/// * `virtio_id`, `config_size`, `frac_bits`, `max_dim`: from `protocol`;
/// * `dev`: `path`, `request_magic` / `device_only_magic` / `null_magic` /
///   `response_magic` / `fallback_magic`
///   (`{"value": u32, "tag": "NNRQ"}`), `header_len`, `max_write_len`,
///   `request_header` / `response_header` (`[name, byte offset]` pairs, each
///   field a le32, in order);
/// * `proc`: `max_write_len`, `whole_range` and `q16_range` (the values a
///   write to `predict` / `predict_q16` may hold, inclusive).
pub fn json() -> String {
    let (wmin, wmax) = proc_text::Format::Whole.range();
    let (qmin, qmax) = proc_text::Format::Q16.range();
    let mut s = String::new();
    // Writing to a String cannot fail.
    let _ = write!(
        s,
        r#"{{
  "virtio_id": {virtio_id},
  "config_size": {config_size},
  "frac_bits": {frac_bits},
  "max_dim": {max_dim},
  "dev": {{
    "path": "/dev/{name}",
    "request_magic": {request_magic},
    "device_only_magic": {device_only_magic},
    "null_magic": {null_magic},
    "response_magic": {response_magic},
    "fallback_magic": {fallback_magic},
    "header_len": {header_len},
    "max_write_len": {dev_max},
    "request_header": {request_header},
    "response_header": {response_header}
  }},
  "proc": {{
    "max_write_len": {proc_max},
    "whole_range": [{wmin}, {wmax}],
    "q16_range": [{qmin}, {qmax}]
  }}
}}
"#,
        virtio_id = protocol::VIRTIO_ID_NN,
        config_size = protocol::CONFIG_SIZE,
        frac_bits = protocol::FRAC_BITS,
        max_dim = protocol::MAX_DIM,
        name = dev_abi::DEVICE_NAME,
        request_magic = magic(dev_abi::REQUEST_MAGIC),
        device_only_magic = magic(dev_abi::DEVICE_ONLY_MAGIC),
        null_magic = magic(dev_abi::NULL_MAGIC),
        response_magic = magic(dev_abi::RESPONSE_MAGIC),
        fallback_magic = magic(dev_abi::FALLBACK_RESPONSE_MAGIC),
        header_len = dev_abi::HEADER_LEN,
        dev_max = dev_abi::MAX_WRITE_LEN,
        request_header = fields(&dev_abi::request::FIELDS),
        response_header = fields(&dev_abi::response::FIELDS),
        proc_max = proc_text::MAX_WRITE_LEN,
    );
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn json_has_the_values() {
        let j = super::json();
        assert!(j.contains("\"virtio_id\": 38,"), "{j}");
        assert!(
            j.contains("\"request_magic\": {\"value\": 1364348494, \"tag\": \"NNRQ\"}"),
            "{j}"
        );
        assert!(
            j.contains("\"request_header\": [[\"magic\", 0], [\"num_samples\", 4], [\"in_dim\", 8], [\"timeout_ms\", 12]]"),
            "{j}"
        );
        assert!(j.contains("\"whole_range\": [-32768, 32767]"), "{j}");
    }
}
