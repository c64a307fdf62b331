// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `vhost-user-nn`: serves the virtio-nn device to QEMU over a vhost-user
//! socket. See README.md for the QEMU command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use log::{error, info};
use nn_core::Model;
use vhost_user_backend::VhostUserDaemon;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

use vhost_user_nn::device::NnDevice;
use vhost_user_nn::vhu_nn::VhostUserNnBackend;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "vhost-user daemon of the virtio-nn neural-network accelerator"
)]
struct Args {
    /// Path of the vhost-user Unix socket QEMU connects to (created; an
    /// existing file there is replaced).
    #[arg(long)]
    socket_path: PathBuf,

    /// Model file (safetensors, Q16.16; see nn-core/src/model.rs).
    #[arg(long)]
    model: PathBuf,

    /// Number of request queues (QEMU's `num_vqs` must match).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=16))]
    queues: u32,
}

fn run(args: Args) -> Result<(), String> {
    let model = Model::load(&args.model).map_err(|e| format!("cannot load model: {e}"))?;
    info!(
        "serving model {:?} ({:?}, crc32c:{:08x}) as generation 1",
        model.name,
        model.mlp.dims(),
        model.checksum
    );
    let device = Arc::new(NnDevice::new(model, args.queues));
    loop {
        let backend = Arc::new(
            VhostUserNnBackend::new(device.clone(), args.queues as usize)
                .map_err(|e| e.to_string())?,
        );
        let mut daemon = VhostUserDaemon::new(
            "vhost-user-nn".to_string(),
            backend.clone(),
            GuestMemoryAtomic::new(GuestMemoryMmap::new()),
        )
        .map_err(|e| format!("cannot create the daemon: {e}"))?;
        info!("waiting for a frontend on {}", args.socket_path.display());
        match daemon.serve(&args.socket_path) {
            Ok(()) => info!("frontend disconnected; waiting for the next one"),
            Err(vhost_user_backend::Error::CreateVhostUserListener(e)) => {
                return Err(format!(
                    "cannot listen on {}: {e}",
                    args.socket_path.display()
                ));
            }
            Err(e) => error!("connection ended with an error: {e}; waiting for the next one"),
        }
    }
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            ExitCode::FAILURE
        }
    }
}
