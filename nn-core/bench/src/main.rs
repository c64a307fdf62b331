// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Throughput of nn-core's kernels beside tract and ONNX Runtime (f32, same
//! weights), single thread, batch 1 and batch 4096, on two models: the
//! default 16-32-4 and a compute-bound 256-1024-1024-10.
//!
//! ```text
//! cargo run --release --manifest-path nn-core/bench/Cargo.toml [-- --secs 0.5 --only 16-32-4 --nn-only --whole]
//! ```
//!
//! ONNX Runtime's shared library is loaded at run time from ORT_DYLIB_PATH,
//! or else from the PyPI wheel `onnxruntime` installed in the venv
//! `~/.cache/virtio-nn/venv` (see README.md).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use nn_core::import::onnx::{export, float_layers};
use nn_core::{quant, Kernel, Mlp, Model, Scratch};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// A deterministic generator (xorshift64*), so both models are the same on
/// every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `[-b, b)`.
    fn uniform(&mut self, b: f64) -> f64 {
        ((self.next() >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) * b
    }
}

/// He-uniform weights, small biases, ReLU then identity.
fn random_mlp(dims: &[usize], seed: u64) -> Mlp {
    let mut rng = Rng(seed);
    Mlp::he_uniform(dims, |b| rng.uniform(b)).expect("benchmark shapes are valid")
}

/// Runs `f` (one call on `batch` samples) for at least `secs` (and at least
/// once), three times; returns the best samples per second.
fn measure(batch: usize, secs: f64, mut f: impl FnMut()) -> f64 {
    f(); // warm-up
    let mut best: f64 = 0.0;
    for _ in 0..3 {
        let start = Instant::now();
        let mut calls = 0u64;
        while calls == 0 || start.elapsed() < Duration::from_secs_f64(secs) {
            f();
            calls += 1;
        }
        let rate = (calls as f64 * batch as f64) / start.elapsed().as_secs_f64();
        best = best.max(rate);
    }
    best
}

fn ort_library() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        return Some(PathBuf::from(p));
    }
    let venv = PathBuf::from(std::env::var_os("HOME")?).join(".cache/virtio-nn/venv/lib");
    for py in std::fs::read_dir(venv).ok()?.flatten() {
        let capi = py.path().join("site-packages/onnxruntime/capi");
        for f in std::fs::read_dir(capi).ok()?.flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            if name.starts_with("libonnxruntime.so") {
                return Some(f.path());
            }
        }
    }
    None
}

struct Row {
    model: String,
    batch: usize,
    engine: String,
    rate: f64,
}

fn max_diff(a: &[f32], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (f64::from(*x) - y).abs())
        .fold(0.0, f64::max)
}

/// How a benchmark draws its inputs.
#[derive(Clone, Copy)]
enum Inputs {
    /// Q16.16 values in [0, 2) with fractional bits.
    Fractional,
    /// Whole numbers 0..=64, the default model's natural units (as
    /// `/proc/neural_network/predict` sends them).
    Whole,
}

fn bench_model(
    name: &str,
    mlp: &Mlp,
    inputs: Inputs,
    secs: f64,
    ort_env: Option<&ort::environment::Environment>,
    nn_only: bool,
    rows: &mut Vec<Row>,
) -> Result<()> {
    let onnx_bytes = export(&float_layers(mlp));
    let (ind, outd) = (mlp.input_dim(), mlp.output_dim());
    for batch in [1usize, 4096] {
        let mut rng = Rng(42 + batch as u64);
        let xq: Vec<i32> = (0..batch * ind)
            .map(|_| match inputs {
                Inputs::Fractional => quant::from_f64(rng.uniform(2.0).abs()).unwrap(),
                Inputs::Whole => ((rng.next() % 65) as i32) << 16,
            })
            .collect();
        let xf: Vec<f32> = xq.iter().map(|&v| quant::to_f64(v) as f32).collect();
        let mut reference = vec![0; batch * outd];
        mlp.clone().with_kernel(Kernel::Scalar)?.predict_batch(
            &xq,
            &mut reference,
            &mut Scratch::default(),
        )?;
        let reference: Vec<f64> = reference.iter().map(|&v| quant::to_f64(v)).collect();
        let mut push = |engine: String, rate: f64| {
            println!(
                "  {name:<18} batch {batch:>4}  {engine:<22} {rate:>14.0} samples/s  {:>10.1} ns/sample",
                1e9 / rate
            );
            rows.push(Row {
                model: name.into(),
                batch,
                engine,
                rate,
            });
        };

        for k in [Kernel::Scalar, Kernel::Avx2, Kernel::Avx512, Kernel::Neon] {
            if !k.is_supported() {
                continue;
            }
            let m = mlp.clone().with_kernel(k)?;
            let mut s = m.scratch();
            let mut y = vec![0; batch * outd];
            let rate = measure(batch, secs, || {
                m.predict_batch(std::hint::black_box(&xq), &mut y, &mut s)
                    .unwrap();
            });
            push(format!("nn-core {k}"), rate);
        }

        if nn_only {
            continue;
        }
        // tract (f32), plan specialised to this batch size.
        {
            use tract_onnx::prelude::*;
            let plan = tract_onnx::onnx()
                .model_for_read(&mut &onnx_bytes[..])?
                .with_input_fact(0, f32::fact([batch, ind]).into())?
                .into_optimized()?
                .into_runnable()?;
            let input: Tensor =
                tract_ndarray::Array2::from_shape_vec((batch, ind), xf.clone())?.into();
            let out = plan.run(tvec!(input.clone().into()))?;
            let y: Vec<f32> = out[0]
                .to_plain_array_view::<f32>()?
                .iter()
                .copied()
                .collect();
            let d = max_diff(&y, &reference);
            let rate = measure(batch, secs, || {
                let out = plan.run(tvec!(input.clone().into())).unwrap();
                std::hint::black_box(out);
            });
            push(format!("tract f32 (Δ {d:.1e})"), rate);
        }

        // ONNX Runtime (f32), one intra-op thread, sequential execution.
        if let Some(env) = ort_env {
            use ort::session::builder::GraphOptimizationLevel;
            use ort::session::Session;
            use ort::value::TensorRef;
            let mut session = Session::builder(env)?
                .with_optimization_level(GraphOptimizationLevel::Level3)?
                .with_intra_threads(1)?
                .with_inter_threads(1)?
                .with_parallel_execution(false)?
                .commit_from_memory(&onnx_bytes)?;
            let d = {
                let out = session.run(ort::inputs![TensorRef::from_array_view((
                    [batch, ind],
                    &xf[..]
                ))?])?;
                let (_, y) = out[0].try_extract_tensor::<f32>()?;
                max_diff(y, &reference)
            };
            let rate = measure(batch, secs, || {
                let out = session
                    .run(ort::inputs![TensorRef::from_array_view((
                        [batch, ind],
                        &xf[..]
                    ))
                    .unwrap()])
                    .unwrap();
                std::hint::black_box(out);
            });
            push(format!("onnxruntime f32 (Δ {d:.1e})"), rate);
        }
    }
    Ok(())
}

fn main() -> Result<()> {
    let mut secs = 0.5;
    let mut only: Option<String> = None;
    let mut nn_only = false;
    let mut inputs = Inputs::Fractional;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--secs" => secs = args.next().ok_or("--secs N")?.parse()?,
            "--only" => only = Some(args.next().ok_or("--only MODEL")?),
            "--nn-only" => nn_only = true,
            "--whole" => inputs = Inputs::Whole,
            "--bench" => {} // passed by `cargo bench`
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let default = Model::load(&repo.join("weights/default.safetensors"))?;
    let models = [
        ("16-32-4", default.mlp, inputs),
        (
            "256-1024-1024-10",
            random_mlp(&[256, 1024, 1024, 10], 7),
            inputs,
        ),
    ];

    let ort_env = match ort_library() {
        Some(lib) => {
            println!("ONNX Runtime: {} (load-dynamic)", lib.display());
            Some(ort::init_from(&lib)?.build()?)
        }
        None => {
            println!("ONNX Runtime: not found (set ORT_DYLIB_PATH); skipped");
            None
        }
    };
    println!(
        "nn-core kernels here: {:?}; auto = {}; single thread; best of 3 runs of >= {secs} s",
        Kernel::ALL
            .into_iter()
            .filter(|k| k.is_supported())
            .map(|k| k.name())
            .collect::<Vec<_>>(),
        Kernel::detect()
    );
    let mut rows = Vec::new();
    for (name, mlp, inputs) in &models {
        if only.as_deref().is_some_and(|o| !name.starts_with(o)) {
            continue;
        }
        bench_model(
            name,
            mlp,
            *inputs,
            secs,
            ort_env.as_ref(),
            nn_only,
            &mut rows,
        )?;
    }

    println!();
    println!("| model | batch | engine | samples/s | ns/sample | × scalar | × onnxruntime |");
    println!("|---|---:|---|---:|---:|---:|---:|");
    for r in &rows {
        let find = |prefix: &str| {
            rows.iter()
                .find(|o| o.model == r.model && o.batch == r.batch && o.engine.starts_with(prefix))
                .map(|o| o.rate)
        };
        let ratio = |base: Option<f64>| base.map_or("—".into(), |b| format!("{:.2}", r.rate / b));
        println!(
            "| {} | {} | {} | {:.0} | {:.1} | {} | {} |",
            r.model,
            r.batch,
            r.engine,
            r.rate,
            1e9 / r.rate,
            ratio(find("nn-core scalar")),
            ratio(find("onnxruntime"))
        );
    }
    Ok(())
}
