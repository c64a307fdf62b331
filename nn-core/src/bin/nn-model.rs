// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `nn-model`: make, inspect and run virtio-nn model files on the host.
//!
//! `predict` is the host reference the demo and the end-to-end tests compare
//! the guest's answers with: it runs nn-core's scalar reference.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use nn_core::{fixed, Activation, Layer, Mlp, Model};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[derive(Parser)]
#[command(version, about = "Make, inspect and run virtio-nn model files")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Writes a deterministic, randomly initialised model (He-uniform weights,
    /// small biases, ReLU between layers, identity at the end).
    Generate {
        /// Layer widths, input first, e.g. 16,32,4.
        #[arg(long, value_delimiter = ',', required = true)]
        dims: Vec<usize>,
        /// Seed of the ChaCha8 generator: the same seed gives the same file.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Model name stored in the metadata.
        #[arg(long, default_value = "generated")]
        name: String,
        /// Output file.
        #[arg(short, long)]
        out: PathBuf,
    },
    /// Validates a model file and prints its shape, activations and checksum.
    Info {
        /// Model file.
        model: PathBuf,
    },
    /// Runs the scalar reference on one sample and prints the outputs.
    Predict {
        /// Model file.
        model: PathBuf,
        /// Comma-separated inputs: whole numbers, or raw Q16.16 with --q16.
        #[arg(long, allow_hyphen_values = true)]
        input: String,
        /// Inputs and outputs are raw Q16.16 integers (as /proc/neural_network/predict_q16);
        /// without it inputs are whole numbers and outputs are floored to whole numbers
        /// (as /proc/neural_network/predict).
        #[arg(long)]
        q16: bool,
    },
}

fn generate(dims: &[usize], seed: u64, name: &str) -> Result<Model, String> {
    if dims.len() < 2 {
        return Err("--dims needs at least an input and an output width".into());
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let last = dims.len() - 2;
    let layers = dims
        .windows(2)
        .enumerate()
        .map(|(k, d)| {
            let (i, o) = (d[0], d[1]);
            let bound = (6.0 / i as f64).sqrt();
            let mut q = |b: f64| fixed::from_f64(rng.random_range(-b..b)).expect("in range");
            let w = (0..i * o).map(|_| q(bound)).collect();
            let b = (0..o).map(|_| q(0.1)).collect();
            let act = if k == last {
                Activation::Identity
            } else {
                Activation::Relu
            };
            Layer::new(i, o, w, b, act).map_err(|e| format!("layer {k}: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Model::new(
        Mlp::new(layers).map_err(|e| e.to_string())?,
        name,
    ))
}

fn parse_inputs(s: &str, q16: bool) -> Result<Vec<i32>, String> {
    s.split(',')
        .map(|t| {
            let t = t.trim();
            let v: i32 = t.parse().map_err(|_| format!("`{t}` is not an i32"))?;
            if q16 {
                Ok(v)
            } else {
                fixed::from_int(v).ok_or_else(|| format!("{v} does not fit in Q16.16"))
            }
        })
        .collect()
}

fn join(v: impl Iterator<Item = i32>) -> String {
    v.map(|x| x.to_string()).collect::<Vec<_>>().join(",")
}

fn run(cli: Cli) -> Result<(), String> {
    match cli.cmd {
        Cmd::Generate {
            dims,
            seed,
            name,
            out,
        } => {
            let m = generate(&dims, seed, &name)?;
            std::fs::write(&out, m.to_bytes()).map_err(|e| format!("{}: {e}", out.display()))?;
            println!(
                "wrote {} ({:?}, crc32c:{:08x})",
                out.display(),
                m.mlp.dims(),
                m.checksum
            );
        }
        Cmd::Info { model } => {
            let m = Model::load(&model).map_err(|e| e.to_string())?;
            let dims: Vec<String> = m.mlp.dims().iter().map(|d| d.to_string()).collect();
            let acts: Vec<&str> = m
                .mlp
                .layers()
                .iter()
                .map(|l| l.activation().name())
                .collect();
            println!("name: {}", m.name);
            println!("dims: {}", dims.join("x"));
            println!("activations: {}", acts.join(","));
            println!("checksum: crc32c:{:08x}", m.checksum);
        }
        Cmd::Predict { model, input, q16 } => {
            let m = Model::load(&model).map_err(|e| e.to_string())?;
            let x = parse_inputs(&input, q16)?;
            let y = m.mlp.predict(&x).map_err(|e| e.to_string())?;
            if q16 {
                println!("{}", join(y.into_iter()));
            } else {
                println!("{}", join(y.into_iter().map(fixed::to_int)));
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nn-model: {e}");
            ExitCode::FAILURE
        }
    }
}
