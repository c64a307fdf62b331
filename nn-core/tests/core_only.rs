// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The `core`-only files the guest kernel shares (`fixed.rs`, `reference.rs`,
//! `model_view.rs`, with `protocol.rs`):
//!
//! * they build as a `#![no_std]` crate (rustc on a crate root that
//!   includes them with `#[path]`, as the guest driver does), and their code
//!   names no float type, `alloc` or `std`;
//! * `model_view::parse` + `reference::forward_into` over the file's bytes
//!   give the engine's bits (scalar reference and the SIMD kernel this CPU
//!   runs) on the default model and on random models;
//! * `parse` refuses every truncation of a model file, and any mutated file
//!   it accepts is one `Model::from_bytes` accepts with the same layers.

#![cfg(feature = "std")]

use std::path::PathBuf;
use std::process::Command;

use nn_core::model::crc32c;
use nn_core::model_view::{self, ViewError};
use nn_core::reference::{self, LayerView};
use nn_core::{Mlp, Model, Scratch};
use proptest::prelude::*;

fn src() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The files shared with the guest kernel by this path.
const SHARED: [&str; 4] = ["protocol.rs", "fixed.rs", "reference.rs", "model_view.rs"];

#[test]
fn shared_files_build_without_alloc_or_std() {
    let dir = std::env::temp_dir().join(format!("nn-core-core-only-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut root = String::from("#![no_std]\n#![forbid(unsafe_code)]\n");
    for f in SHARED {
        let module = f.trim_end_matches(".rs");
        root += &format!(
            "#[path = {:?}]\npub mod {module};\n",
            src().join(f).display().to_string()
        );
    }
    let root_path = dir.join("lib.rs");
    std::fs::write(&root_path, root).unwrap();
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let out = Command::new(rustc)
        .args(["--edition", "2021", "--crate-type", "lib", "--crate-name"])
        .arg("core_only")
        .args(["--emit", "metadata", "-D", "warnings", "--out-dir"])
        .arg(&dir)
        .arg(&root_path)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "the shared files need more than core:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The code of the shared files (before their test module, without
/// comments) names no float type and nothing from `alloc` or `std`: rustc
/// would let a `#![no_std]` crate `extern crate alloc`, so the build above
/// does not show that alone.
#[test]
fn shared_files_name_no_floats_alloc_or_std() {
    for f in SHARED {
        let text = std::fs::read_to_string(src().join(f)).unwrap();
        let code = text.split("#[cfg(test)]").next().unwrap_or("");
        for (n, line) in code.lines().enumerate() {
            let line = line.split("//").next().unwrap_or("");
            let words: Vec<&str> = line
                .split(|c: char| !c.is_alphanumeric() && c != '_')
                .collect();
            for t in ["f32", "f64", "alloc", "std", "extern"] {
                assert!(
                    !words.contains(&t),
                    "{f}:{}: `{t}` in a file the kernel shares: {line}",
                    n + 1
                );
            }
        }
    }
}

fn weights() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../weights")
}

/// Runs `layers` on each sample of `inputs` with the core-only path.
fn core_forward(layers: &[LayerView<'_>], inputs: &[i32]) -> Vec<i32> {
    let hidden = reference::check(layers).unwrap();
    let (ind, outd) = (layers[0].in_dim, layers[layers.len() - 1].out_dim);
    let (mut a, mut b) = (vec![0; hidden], vec![0; hidden]);
    let mut out = vec![0; inputs.len() / ind * outd];
    for (x, y) in inputs.chunks_exact(ind).zip(out.chunks_exact_mut(outd)) {
        reference::forward_into(layers, x, &mut a, &mut b, y).unwrap();
    }
    out
}

/// The engine's answers: scalar reference and the auto-chosen kernel.
fn engine(mlp: &Mlp, inputs: &[i32]) -> (Vec<i32>, Vec<i32>) {
    let n = inputs.len() / mlp.input_dim() * mlp.output_dim();
    let (mut r, mut k) = (vec![0; n], vec![0; n]);
    let mut s = Scratch::default();
    mlp.predict_batch_reference(inputs, &mut r, &mut s).unwrap();
    mlp.predict_batch(inputs, &mut k, &mut s).unwrap();
    (r, k)
}

/// Parses `model`'s canonical bytes and compares the core-only path with
/// the engine on `inputs`.
fn same_bits(model: &Model, inputs: &[i32]) {
    let bytes = model.to_bytes();
    let view = model_view::parse(&bytes, crc32c).unwrap();
    assert_eq!(view.checksum(), model.checksum);
    assert_eq!(
        (view.input_dim(), view.output_dim()),
        (model.mlp.input_dim(), model.mlp.output_dim())
    );
    for (v, l) in view.layers().iter().zip(model.mlp.layers()) {
        assert_eq!(
            (v.in_dim, v.out_dim, v.activation),
            (l.in_dim(), l.out_dim(), l.activation())
        );
        let w: Vec<i32> = (0..v.weights.len())
            .map(|i| v.weights.get(i).unwrap())
            .collect();
        let b: Vec<i32> = (0..v.bias.len()).map(|i| v.bias.get(i).unwrap()).collect();
        assert_eq!((w.as_slice(), b.as_slice()), (l.weights(), l.bias()));
    }
    let got = core_forward(view.layers(), inputs);
    let (reference, kernel) = engine(&model.mlp, inputs);
    assert_eq!(got, reference, "core-only path vs the scalar reference");
    assert_eq!(
        got,
        kernel,
        "core-only path vs the {} kernel",
        model.mlp.kernel()
    );
}

#[test]
fn default_model_gives_the_engines_bits() {
    let model = Model::load(&weights().join("default.safetensors")).unwrap();
    let ind = model.mlp.input_dim();
    // The held-out split's range (whole numbers 0..=64) and extremes.
    let mut inputs: Vec<i32> = (0..64 * ind as i32).map(|i| (i % 65) << 16).collect();
    inputs.extend((0..ind).map(|i| if i % 2 == 0 { i32::MAX } else { i32::MIN }));
    same_bits(&model, &inputs);
}

/// A random model of widths `dims` (He-uniform, deterministic in `seed`).
fn random_model(dims: &[usize], seed: u64) -> Model {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mlp = Mlp::he_uniform(dims, |b| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let u = (state >> 11) as f64 / (1u64 << 53) as f64;
        (2.0 * u - 1.0) * b
    })
    .unwrap();
    Model::new(mlp, &format!("random {seed} \"q\" \\ \u{1}"))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn random_models_give_the_engines_bits(
        dims in prop::collection::vec(1usize..40, 2..=8),
        seed in any::<u64>(),
        inputs in prop::collection::vec(any::<i32>(), 40 * 3),
    ) {
        let model = random_model(&dims, seed);
        let n = inputs.len() / dims[0] * dims[0];
        same_bits(&model, &inputs[..n]);
    }
}

proptest! {
    /// The software CRC-32C the guest can use is the `crc` crate's, over
    /// data given whole or in two pieces.
    #[test]
    fn the_core_crc32c_is_the_crc_crates(
        data in prop::collection::vec(any::<u8>(), 0..2000),
        cut in any::<prop::sample::Index>(),
    ) {
        prop_assert_eq!(model_view::Crc32c::of(&data), crc32c(&data));
        let (a, b) = data.split_at(cut.index(data.len() + 1));
        let mut c = model_view::Crc32c::new();
        c.update(a);
        c.update(b);
        prop_assert_eq!(c.value(), crc32c(&data));
    }
}

#[test]
fn the_core_crc32c_check_value() {
    assert_eq!(model_view::Crc32c::of(b"123456789"), 0xe306_9283);
    assert_eq!(model_view::Crc32c::of(&[]), 0);
    let bytes = small();
    assert!(model_view::parse(&bytes, model_view::Crc32c::of).is_ok());
}

fn small() -> Vec<u8> {
    random_model(&[3, 4, 2], 7).to_bytes()
}

#[test]
fn every_truncation_is_refused() {
    let bytes = small();
    for n in 0..bytes.len() {
        assert!(
            model_view::parse(&bytes[..n], crc32c).is_err(),
            "{n} of {} bytes accepted",
            bytes.len()
        );
    }
    assert_eq!(
        model_view::parse(&bytes[..7], crc32c),
        Err(ViewError::Truncated)
    );
    let mut long = bytes.clone();
    long.extend([0; 4]);
    assert!(matches!(
        model_view::parse(&long, crc32c),
        Err(ViewError::DataLen { .. })
    ));
}

/// Every byte of a small file changed in turn (to a neighbouring value, a
/// digit, a quote, a space): `parse` never panics, and what it accepts
/// `Model::from_bytes` accepts too, with the same layers.
#[test]
fn mutated_files_are_refused_or_agree_with_the_host_reader() {
    let bytes = small();
    let mut accepted = 0;
    for i in 0..bytes.len() {
        for v in [
            bytes[i] ^ 1,
            bytes[i].wrapping_add(1),
            b'0',
            b'9',
            b'"',
            b' ',
            0xff,
        ] {
            if v == bytes[i] {
                continue;
            }
            let mut m = bytes.clone();
            m[i] = v;
            if let Ok(view) = model_view::parse(&m, crc32c) {
                accepted += 1;
                let host = Model::from_bytes(&m)
                    .unwrap_or_else(|e| panic!("byte {i} -> {v}: core accepts, host says {e}"));
                let inputs: Vec<i32> = (0..30).map(|k| k * 5000 - 70_000).collect();
                assert_eq!(
                    core_forward(view.layers(), &inputs),
                    engine(&host.mlp, &inputs).0
                );
            }
        }
    }
    // Only the name's characters may change and stay canonical.
    assert!(accepted > 0, "no mutation of the name was accepted");
}

#[test]
fn corrupt_files_get_their_reason() {
    let bytes = small();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = std::str::from_utf8(&bytes[8..8 + header_len])
        .unwrap()
        .to_string();
    let with = |h: &str, data: &[u8]| {
        let mut h = h.to_string();
        while !h.len().is_multiple_of(8) {
            h.push(' ');
        }
        let mut out = (h.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out
    };
    let data = &bytes[8 + header_len..];
    // The outcome only (the view borrows the bytes).
    let parse = |b: &[u8]| model_view::parse(b, crc32c).map(|v| v.checksum());
    let edit = |from: &str, to: &str| {
        assert!(header.contains(from), "{from} not in {header}");
        parse(&with(&header.replacen(from, to, 1), data))
    };
    assert_eq!(
        edit("\"format_version\":\"1\"", "\"format_version\":\"2\""),
        Err(ViewError::Metadata("format_version"))
    );
    assert_eq!(
        edit("relu,identity", "relu,sigmoid"),
        Err(ViewError::Activations)
    );
    assert_eq!(
        edit("\"shape\":[4,3]", "\"shape\":[4,5]"),
        Err(ViewError::Offsets { layer: 0 })
    );
    assert_eq!(
        edit("\"shape\":[4,3]", "\"shape\":[4,0]"),
        Err(ViewError::Shape { layer: 0 })
    );
    assert!(matches!(
        edit("\"shape\":[4,3]", "\"shape\":[4,03]"),
        Err(ViewError::Syntax { .. })
    ));
    assert!(matches!(
        edit("\"shape\":[4,3]", "\"shape\":[4,99999999999999999999999]"),
        Err(ViewError::Syntax { .. })
    ));
    // A space that a general JSON reader would skip is not canonical.
    assert!(matches!(
        edit("\"dtype\":\"I32\"", "\"dtype\": \"I32\""),
        Err(ViewError::Syntax { .. })
    ));
    // Data changed under the checksum.
    let mut flipped = bytes.clone();
    *flipped.last_mut().unwrap() ^= 0x80;
    assert!(matches!(parse(&flipped), Err(ViewError::Checksum { .. })));
    // A header length beyond the file, or not a multiple of 8.
    let mut b = bytes.clone();
    b[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(
        parse(&b),
        Err(ViewError::HeaderLen(_) | ViewError::Truncated)
    ));
    b[..8].copy_from_slice(&((header_len + 1) as u64).to_le_bytes());
    assert_eq!(parse(&b), Err(ViewError::HeaderLen(header_len as u64 + 1)));
    // A name of MAX_NAME_LEN bytes is taken, one more is not.
    let mut m = random_model(&[2, 2], 1);
    m.name = "\u{1}".repeat(model_view::MAX_NAME_LEN);
    assert!(parse(&m.to_bytes()).is_ok());
    m.name.push('x');
    assert_eq!(parse(&m.to_bytes()), Err(ViewError::NameTooLong));
    // Too many layers for the activations list.
    let eight = ["relu"; 8].join(",");
    assert_eq!(edit("relu,identity", &eight), Err(ViewError::Activations));
}

#[test]
fn the_served_form_of_the_default_model_reads_back() {
    // The committed file need not be canonical; what the daemon serves
    // (to_bytes) is, and reads back as the same model on both readers.
    let model = Model::load(&weights().join("default.safetensors")).unwrap();
    let canonical = model.to_bytes();
    assert_eq!(Model::from_bytes(&canonical).unwrap(), model);
    assert!(model_view::parse(&canonical, crc32c).is_ok());
}
