// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The demo: starts the daemon with a model, boots a guest with the driver,
//! runs the original design's `echo ... > /proc/neural_network/predict;
//! cat /proc/neural_network/predict` in it, and prints the guest's answer
//! next to nn-core's answer on the host. Run through `scripts/demo.sh`, which
//! builds everything first.

use std::process::ExitCode;

use nn_core::Model;
use virtio_nn_tests::{csv, daemon, default_model, parse_csv, reference_int, reference_q16, Guest};

fn run() -> Result<bool, String> {
    let model_path = std::env::args_os()
        .nth(1)
        .map(Into::into)
        .unwrap_or_else(default_model);
    let model = Model::load(&model_path).map_err(|e| e.to_string())?;
    let input: Vec<i32> = (1..=model.mlp.input_dim() as i32).collect();

    println!("model:  {} ({:?})", model_path.display(), model.mlp.dims());
    let daemon = daemon(&model_path)
        .and_then(|d| d.start())
        .map_err(|e| format!("daemon: {e}"))?;
    println!("daemon: listening on {}", daemon.socket().display());
    let mut guest = Guest::boot(&daemon).map_err(|e| format!("guest: {e}"))?;
    println!("guest:  booted, virtio_nn loaded\n");

    let cmd = format!(
        "echo {} > /proc/neural_network/predict; cat /proc/neural_network/predict",
        csv(&input)
    );
    println!("guest # {cmd}");
    let out = guest.ok(&cmd).map_err(|e| e.to_string())?;
    print!("{out}");
    let q16_cmd = format!(
        "echo {} > /proc/neural_network/predict_q16; cat /proc/neural_network/predict_q16",
        csv(&input.iter().map(|v| v << 16).collect::<Vec<_>>())
    );
    println!("guest # {q16_cmd}");
    let out_q16 = guest.ok(&q16_cmd).map_err(|e| e.to_string())?;
    print!("{out_q16}");
    let _ = guest.shutdown();

    let host = reference_int(&model, &input);
    let host_q16 = reference_q16(&model, &input.iter().map(|v| v << 16).collect::<Vec<_>>());
    let guest_ans = parse_csv(&out).ok_or("unparsable guest answer")?;
    let guest_q16 = parse_csv(&out_q16).ok_or("unparsable guest answer")?;
    println!();
    println!(
        "                 {:<40} host (nn-core reference)",
        "guest (/proc, via the device)"
    );
    println!("whole numbers:   {:<40} {}", csv(&guest_ans), csv(&host));
    println!(
        "Q16.16 raw:      {:<40} {}",
        csv(&guest_q16),
        csv(&host_q16)
    );
    let same = guest_ans == host && guest_q16 == host_q16;
    println!(
        "\n{}",
        if same {
            "MATCH: bit for bit"
        } else {
            "MISMATCH"
        }
    );
    Ok(same)
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("nn-demo: {e}");
            ExitCode::FAILURE
        }
    }
}
