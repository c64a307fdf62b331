// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `vhost-user-nn`: serves the virtio-nn device to QEMU over a vhost-user
//! socket; `vhost-user-nn ctl ...` talks to a running daemon's admin socket.
//! See README.md for the QEMU command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use log::{error, info};
use nn_core::Model;
use serde_json::json;
use vhost_user_backend::VhostUserDaemon;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

use vhost_user_nn::admin::{self, Admin};
use vhost_user_nn::device::NnDevice;
use vhost_user_nn::stats::Stats;
use vhost_user_nn::vhu_nn::VhostUserNnBackend;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "vhost-user daemon of the virtio-nn neural-network accelerator",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Args, Debug)]
struct ServeArgs {
    /// Path of the vhost-user Unix socket QEMU connects to (created; an
    /// existing file there is replaced).
    #[arg(long, required = true)]
    socket_path: Option<PathBuf>,

    /// Model file (safetensors, Q16.16; see nn-core/src/model.rs).
    #[arg(long, required = true)]
    model: Option<PathBuf>,

    /// Number of request queues (QEMU's `num_vqs` must match).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=16))]
    queues: u32,

    /// Admin socket (line-delimited JSON: status, health, stats, metrics, load).
    #[arg(long)]
    admin_socket: Option<PathBuf>,

    /// Permissions of the admin socket, in octal.
    #[arg(long, default_value = "600", value_parser = parse_mode)]
    admin_socket_mode: u32,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Send one command to a running daemon's admin socket and print the reply.
    Ctl {
        /// The daemon's admin socket.
        #[arg(long)]
        admin_socket: PathBuf,
        #[command(subcommand)]
        command: CtlCmd,
    },
}

#[derive(Subcommand, Debug)]
enum CtlCmd {
    /// Model, generation, queues, uptime.
    Status,
    /// Whether the device is healthy.
    Health,
    /// Per-queue request and sample counts.
    Stats,
    /// Prometheus text exposition.
    Metrics,
    /// Validate a model file and swap it in (hot-swap).
    Load {
        /// The model file.
        path: PathBuf,
    },
}

fn parse_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s, 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("`{s}` is not an octal mode such as 600"))
}

fn serve(args: ServeArgs) -> Result<(), String> {
    // clap enforces both when no subcommand is given.
    let (Some(socket_path), Some(model_path)) = (args.socket_path, args.model) else {
        return Err("--socket-path and --model are required".into());
    };
    let model = Model::load(&model_path).map_err(|e| format!("cannot load model: {e}"))?;
    info!(
        "serving model {:?} ({:?}, crc32c:{:08x}) as generation 1",
        model.name,
        model.mlp.dims(),
        model.checksum
    );
    let device = Arc::new(NnDevice::new(model, model_path, args.queues));
    let stats = Arc::new(Stats::new(args.queues));
    if let Some(path) = &args.admin_socket {
        let admin = Arc::new(Admin::new(device.clone(), stats.clone()));
        admin::spawn(admin, path, args.admin_socket_mode)
            .map_err(|e| format!("cannot serve the admin socket {}: {e}", path.display()))?;
    }
    loop {
        let backend = Arc::new(
            VhostUserNnBackend::new(device.clone(), stats.clone(), args.queues as usize)
                .map_err(|e| e.to_string())?,
        );
        let mut daemon = VhostUserDaemon::new(
            "vhost-user-nn".to_string(),
            backend.clone(),
            GuestMemoryAtomic::new(GuestMemoryMmap::new()),
        )
        .map_err(|e| format!("cannot create the daemon: {e}"))?;
        info!("waiting for a frontend on {}", socket_path.display());
        match daemon.serve(&socket_path) {
            Ok(()) => info!("frontend disconnected; waiting for the next one"),
            Err(vhost_user_backend::Error::CreateVhostUserListener(e)) => {
                return Err(format!("cannot listen on {}: {e}", socket_path.display()));
            }
            Err(e) => error!("connection ended with an error: {e}; waiting for the next one"),
        }
    }
}

fn ctl(admin_socket: PathBuf, command: CtlCmd) -> Result<(), String> {
    let req = match &command {
        CtlCmd::Status => json!({"cmd": "status"}),
        CtlCmd::Health => json!({"cmd": "health"}),
        CtlCmd::Stats => json!({"cmd": "stats"}),
        CtlCmd::Metrics => json!({"cmd": "metrics"}),
        CtlCmd::Load { path } => {
            // The daemon resolves relative paths against its own directory.
            let abs = std::path::absolute(path).map_err(|e| e.to_string())?;
            json!({"cmd": "load", "path": abs})
        }
    };
    let reply = admin::request(&admin_socket, &req.to_string())
        .map_err(|e| format!("{}: {e}", admin_socket.display()))?;
    if reply["ok"] != true {
        return Err(reply["error"].as_str().unwrap_or("error").to_string());
    }
    match (command, reply["text"].as_str()) {
        (CtlCmd::Metrics, Some(text)) => print!("{text}"),
        _ => println!(
            "{}",
            serde_json::to_string_pretty(&reply).unwrap_or_default()
        ),
    }
    Ok(())
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let result = match cli.cmd {
        Some(Cmd::Ctl {
            admin_socket,
            command,
        }) => ctl(admin_socket, command),
        None => serve(cli.serve),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            ExitCode::FAILURE
        }
    }
}
