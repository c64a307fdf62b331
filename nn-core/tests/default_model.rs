// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The committed default model (weights/default.safetensors) classifies its
//! committed held-out test split (weights/default-test.csv) with the
//! fixed-point accuracy its model card (weights/README.md) states, on every
//! kernel this machine runs.

#![cfg(feature = "std")]

use std::path::PathBuf;

use nn_core::{fixed, Kernel, Mlp, Model};

/// Correct answers out of 180 stated in weights/README.md.
const CARD_CORRECT: usize = 172;
const CARD_TOTAL: usize = 180;

fn weights() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../weights")
}

fn test_split() -> Vec<(Vec<i32>, usize)> {
    let text = std::fs::read_to_string(weights().join("default-test.csv")).unwrap();
    let mut lines = text.lines();
    let header = lines.next().unwrap();
    assert!(header.starts_with("f0,"), "header: {header}");
    lines
        .map(|l| {
            let v: Vec<i32> = l.split(',').map(|f| f.parse().unwrap()).collect();
            let (label, x) = v.split_last().unwrap();
            // Whole numbers, as /proc/neural_network/predict takes them.
            let x = x.iter().map(|&f| fixed::from_int(f).unwrap()).collect();
            (x, *label as usize)
        })
        .collect()
}

#[test]
fn default_model_accuracy_matches_the_model_card() {
    let model = Model::load(&weights().join("default.safetensors")).unwrap();
    assert_eq!(model.mlp.dims(), vec![16, 32, 4]);
    let split = test_split();
    assert_eq!(split.len(), CARD_TOTAL);
    for k in Kernel::ALL.into_iter().filter(|k| k.is_supported()) {
        let mlp = model.mlp.clone().with_kernel(k).unwrap();
        // One batch call, as the device does.
        let inputs: Vec<i32> = split.iter().flat_map(|(x, _)| x.iter().copied()).collect();
        let mut out = vec![0; split.len() * 4];
        mlp.predict_batch(&inputs, &mut out, &mut mlp.scratch())
            .unwrap();
        let correct = out
            .chunks(4)
            .zip(&split)
            .filter(|(y, (_, label))| Mlp::argmax(y) == Some(*label))
            .count();
        assert_eq!(
            correct, CARD_CORRECT,
            "kernel {k}: {correct}/{CARD_TOTAL}; update weights/README.md if the model changed"
        );
    }
}

/// The ONNX importer, on a file written by the reference `onnx` library
/// (scripts/train/make_onnx_fixture.py: Gemm + Relu, MatMul + Add), gives
/// the same model as the safetensors import of the same float weights.
#[cfg(feature = "import")]
#[test]
fn onnx_import_of_the_default_model_matches_the_safetensors_import() {
    let onnx =
        std::fs::read(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/default.onnx"))
            .unwrap();
    let (from_onnx, report) = nn_core::import::onnx::import(&onnx).unwrap();
    let float = std::fs::read(weights().join("default-float.safetensors")).unwrap();
    let (from_st, _) = nn_core::import::safetensors::import(&float, &Default::default()).unwrap();
    let committed = Model::load(&weights().join("default.safetensors")).unwrap();
    assert_eq!(from_onnx, from_st);
    assert_eq!(from_onnx, committed.mlp);
    assert!(report.max_abs_error <= 0.5 / 65536.0);
}
