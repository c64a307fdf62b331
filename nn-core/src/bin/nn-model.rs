// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `nn-model`: make, inspect and run virtio-nn model files on the host.
//!
//! `predict` is the host reference the demo and the end-to-end tests compare
//! the guest's answers with: it runs nn-core's scalar reference (unless
//! `--kernel` says otherwise; every kernel gives the same bits).
//!
//! Its `--input` and its output are the text of `/proc/neural_network/predict`
//! (or `predict_q16` with `--q16`), read and written by the driver's own
//! code, `nn_core::proc_text`.
//!
//! `import-safetensors` and `import-onnx` quantize a float model (a PyTorch
//! `state_dict` saved as safetensors, or an ONNX MLP) to a model file and
//! report the largest quantization error; `eval` measures a classifier's
//! accuracy on a CSV test set. `abi` prints the guest-facing definitions
//! (device id, `/dev` and `/proc` formats) as JSON for the scripts.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use nn_core::import::{self, ImportError, QuantReport};
use nn_core::proc_text::{self, Format};
use nn_core::{fixed, Kernel, Mlp, Model};
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
    /// Runs the scalar reference on one sample and prints the outputs, as
    /// /proc/neural_network/predict (or predict_q16) does.
    Predict {
        /// Model file.
        model: PathBuf,
        /// Comma-separated inputs: whole numbers, or raw Q16.16 with --q16
        /// (what a write to the /proc file may hold).
        #[arg(long, allow_hyphen_values = true)]
        input: String,
        /// Inputs and outputs are raw Q16.16 integers (as /proc/neural_network/predict_q16);
        /// without it inputs are whole numbers and outputs are floored to whole numbers
        /// (as /proc/neural_network/predict).
        #[arg(long)]
        q16: bool,
        /// Kernel: scalar (the reference), avx2, avx512, neon or auto.
        #[arg(long, default_value = "scalar")]
        kernel: Kernel,
    },
    /// Quantizes a PyTorch state_dict saved as safetensors (F32/F64/F16/BF16
    /// tensors PREFIX.weight of shape (out, in) and PREFIX.bias of shape (out)) to a model file.
    /// Layers are the prefixes in natural order (0 < 2 < 10, fc1 < fc2 < fc10)
    /// unless --layers lists them.
    ImportSafetensors {
        /// The float state_dict.
        input: PathBuf,
        /// Output model file.
        #[arg(short, long)]
        out: PathBuf,
        /// Layer prefixes in order, e.g. fc1,fc2,head (default: natural order).
        #[arg(long, value_delimiter = ',')]
        layers: Option<Vec<String>>,
        /// One activation per layer, e.g. relu,relu,identity (default: relu
        /// after every layer but the last, identity at the end).
        #[arg(long)]
        activations: Option<String>,
        /// Model name stored in the metadata (default: the input's file name).
        #[arg(long)]
        name: Option<String>,
    },
    /// Quantizes an ONNX MLP (Gemm / MatMul+Add / Relu chain) to a model file.
    ImportOnnx {
        /// The ONNX model.
        input: PathBuf,
        /// Output model file.
        #[arg(short, long)]
        out: PathBuf,
        /// Model name stored in the metadata (default: the input's file name).
        #[arg(long)]
        name: Option<String>,
    },
    /// Accuracy of a classifier on a CSV test set: one sample a line, the
    /// input features then the class index (argmax of the outputs); a first
    /// line that is not numbers is a header. Features are whole numbers
    /// (converted by << 16, as /proc/neural_network/predict), or raw Q16.16
    /// with --q16.
    Eval {
        /// Model file.
        model: PathBuf,
        /// CSV test set.
        #[arg(long)]
        csv: PathBuf,
        /// Features are raw Q16.16.
        #[arg(long)]
        q16: bool,
    },
    /// Prints the guest-facing definitions as JSON: the virtio device id,
    /// the /dev/neural_network magics and header layout, the /proc limits
    /// (what tests/avocado/nnlib.py reads instead of keeping copies).
    Abi,
}

fn import_name(name: Option<String>, input: &std::path::Path) -> String {
    name.unwrap_or_else(|| {
        input
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    })
}

fn write_import(
    res: Result<(Mlp, QuantReport), ImportError>,
    input: &std::path::Path,
    out: &std::path::Path,
    name: &str,
) -> Result<(), String> {
    let (mlp, report) = res.map_err(|e| format!("{}: {e}", input.display()))?;
    let m = Model::new(mlp, name);
    std::fs::write(out, m.to_bytes()).map_err(|e| format!("{}: {e}", out.display()))?;
    println!(
        "wrote {} ({:?}, crc32c:{:08x})",
        out.display(),
        m.mlp.dims(),
        m.checksum
    );
    println!("{report}");
    Ok(())
}

/// Reads a CSV test set: (features, label) per line.
fn read_csv(path: &std::path::Path, q16: bool) -> Result<Vec<(Vec<i32>, usize)>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut rows = Vec::new();
    for (ln, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        let parsed: Result<Vec<i64>, _> = fields.iter().map(|f| f.parse::<i64>()).collect();
        let Ok(v) = parsed else {
            if ln == 0 {
                continue; // header
            }
            return Err(format!("{}:{}: not integers", path.display(), ln + 1));
        };
        let (label, feats) = v.split_last().ok_or("empty line")?;
        let x = feats
            .iter()
            .map(|&f| {
                let f =
                    i32::try_from(f).map_err(|_| format!("line {}: {f} is not an i32", ln + 1))?;
                if q16 {
                    Ok(f)
                } else {
                    fixed::from_int(f)
                        .ok_or_else(|| format!("line {}: {f} does not fit in Q16.16", ln + 1))
                }
            })
            .collect::<Result<Vec<i32>, String>>()?;
        rows.push((x, usize::try_from(*label).map_err(|_| "negative label")?));
    }
    Ok(rows)
}

fn generate(dims: &[usize], seed: u64, name: &str) -> Result<Model, String> {
    if dims.len() < 2 {
        return Err("--dims needs at least an input and an output width".into());
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mlp = Mlp::he_uniform(dims, |b| rng.random_range(-b..b)).map_err(|e| e.to_string())?;
    Ok(Model::new(mlp, name))
}

/// Parses `--input` as a write to the /proc file of `format`.
fn parse_inputs(s: &str, format: Format) -> Result<Vec<i32>, String> {
    let mut x = vec![0; proc_text::count_fields(s.as_bytes())];
    proc_text::parse_values(s.as_bytes(), format, &mut x)
        .map_err(|e| format!("--input `{s}`: {e}"))?;
    Ok(x)
}

/// The text a read of the /proc file of `format` returns for `y`.
fn format_outputs(y: &[i32], format: Format) -> String {
    let mut out = vec![0u8; proc_text::formatted_len(y.len())];
    let len = proc_text::format_values(y, format, &mut out);
    out.truncate(len);
    String::from_utf8(out).expect("decimal digits")
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
            println!("kernel: {} (fastest on this CPU)", Kernel::detect());
        }
        Cmd::ImportSafetensors {
            input,
            out,
            layers,
            activations,
            name,
        } => {
            let bytes = std::fs::read(&input).map_err(|e| format!("{}: {e}", input.display()))?;
            let opts = import::safetensors::Options {
                layers,
                activations: activations
                    .as_deref()
                    .map(import::parse_activations)
                    .transpose()
                    .map_err(|e| e.to_string())?,
            };
            let name = import_name(name, &input);
            write_import(
                import::safetensors::import(&bytes, &opts),
                &input,
                &out,
                &name,
            )?;
        }
        Cmd::ImportOnnx { input, out, name } => {
            let bytes = std::fs::read(&input).map_err(|e| format!("{}: {e}", input.display()))?;
            let name = import_name(name, &input);
            write_import(import::onnx::import(&bytes), &input, &out, &name)?;
        }
        Cmd::Eval { model, csv, q16 } => {
            let m = Model::load(&model).map_err(|e| e.to_string())?;
            let rows = read_csv(&csv, q16)?;
            let (ind, outd) = (m.mlp.input_dim(), m.mlp.output_dim());
            let mut correct = 0;
            let mut s = m.mlp.scratch();
            let mut y = vec![0; outd];
            for (k, (x, label)) in rows.iter().enumerate() {
                if x.len() != ind {
                    return Err(format!(
                        "sample {}: {} features, the model takes {ind}",
                        k + 1,
                        x.len()
                    ));
                }
                m.mlp
                    .predict_batch(x, &mut y, &mut s)
                    .map_err(|e| e.to_string())?;
                if Mlp::argmax(&y) == Some(*label) {
                    correct += 1;
                }
            }
            println!(
                "accuracy: {correct}/{} = {:.4} (kernel {})",
                rows.len(),
                correct as f64 / rows.len().max(1) as f64,
                m.mlp.kernel()
            );
        }
        Cmd::Predict {
            model,
            input,
            q16,
            kernel,
        } => {
            let m = Model::load(&model).map_err(|e| e.to_string())?;
            let mlp = m.mlp.with_kernel(kernel).map_err(|e| e.to_string())?;
            let format = if q16 { Format::Q16 } else { Format::Whole };
            let x = parse_inputs(&input, format)?;
            let y = mlp.predict(&x).map_err(|e| e.to_string())?;
            print!("{}", format_outputs(&y, format));
        }
        Cmd::Abi => print!("{}", nn_core::abi::json()),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn predict_reads_and_prints_the_proc_format() {
        // What a write to /proc/neural_network/predict may hold, signs and
        // spaces included; the same limits.
        assert_eq!(
            parse_inputs(" +1, -2 ,3\n", Format::Whole).unwrap(),
            [1 << 16, -2 << 16, 3 << 16]
        );
        assert!(parse_inputs("40000", Format::Whole).is_err());
        assert!(parse_inputs("1,,2", Format::Q16).is_err());
        assert_eq!(parse_inputs("40000", Format::Q16).unwrap(), [40000]);
        assert_eq!(format_outputs(&[-0x8000, 3 << 16], Format::Whole), "-1,3\n");
        assert_eq!(
            format_outputs(&[-0x8000, 3 << 16], Format::Q16),
            "-32768,196608\n"
        );
    }
}
