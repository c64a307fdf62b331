// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `vhost-user-nn`: serves the virtio-nn device to QEMU over a vhost-user
//! socket; `vhost-user-nn ctl ...` talks to a running daemon's admin socket.
//! See README.md for the QEMU command line.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use log::{error, info};
use nn_core::kernels::Kernel;
use nn_core::Model;
use serde_json::json;
use vhost::vhost_user::Listener;
use vhost_user_backend::VhostUserDaemon;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

use vhost_user_nn::admin::{self, Admin};
use vhost_user_nn::device::NnDevice;
use vhost_user_nn::sandbox::{self, Mode};
use vhost_user_nn::stats::Stats;
use vhost_user_nn::vhu_nn::VhostUserNnBackend;
use vhost_user_nn::watch;

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
    #[arg(long, required_unless_present_any = ["fd", "print_capabilities"])]
    socket_path: Option<PathBuf>,

    /// Serve an already listening Unix socket inherited as this file
    /// descriptor (socket activation, e.g. systemd's `ListenStream=`; with
    /// systemd, `--fd 3`).
    #[arg(long, conflicts_with = "socket_path")]
    fd: Option<RawFd>,

    /// Print the vhost-user capabilities as JSON and exit.
    #[arg(long, exclusive = true)]
    print_capabilities: bool,

    /// Model file (safetensors, Q16.16; see nn-core/src/model.rs).
    #[arg(long, required_unless_present = "print_capabilities")]
    model: Option<PathBuf>,

    /// Number of request queues (QEMU's `num_vqs` must match).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=16))]
    queues: u32,

    /// Admin socket (line-delimited JSON: status, health, stats, metrics, load).
    #[arg(long)]
    admin_socket: Option<PathBuf>,

    /// Reload the model when its file changes (polled every this many
    /// milliseconds; 0 = off), with the same validation as the admin `load`.
    #[arg(long, default_value_t = 0, value_name = "MS")]
    watch: u64,

    /// nn-core kernel: auto (the fastest this CPU has), scalar (the reference),
    /// avx2, avx512 or neon. All give the same bits.
    #[arg(long, env = "NN_CORE_KERNEL", default_value = "auto")]
    kernel: Kernel,

    /// Seccomp sandbox: what happens to a system call the daemon does not
    /// need (installed after start-up, on every thread).
    #[arg(long, value_enum, default_value_t = Mode::Errno)]
    seccomp: Mode,

    /// Enables test-only admin commands (`test-delay`: a slow device on
    /// purpose). Never in production.
    #[arg(long, hide = true)]
    test_mode: bool,

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

/// The listening vhost-user socket, from `--socket-path` or `--fd`.
fn listener(args: &ServeArgs) -> Result<Listener, String> {
    match (&args.socket_path, args.fd) {
        (Some(path), _) => Listener::new(path, true)
            .map_err(|e| format!("cannot listen on {}: {e}", path.display())),
        (None, Some(fd)) => {
            if fd < 3 {
                return Err(format!("--fd {fd} is a standard stream, not a socket"));
            }
            // SAFETY: fstat only writes into the stat buffer it is given; an
            // invalid descriptor makes it fail with EBADF, nothing else.
            let is_socket = unsafe {
                let mut st: libc::stat = std::mem::zeroed();
                libc::fstat(fd, &raw mut st) == 0 && (st.st_mode & libc::S_IFMT) == libc::S_IFSOCK
            };
            if !is_socket {
                return Err(format!("--fd {fd} is not an open socket"));
            }
            // SAFETY: the descriptor is open (checked above) and the operator
            // hands it to the daemon to own (socket activation); nothing else
            // in the process uses it. That it listens is checked right below.
            let listener = UnixListener::from(unsafe { OwnedFd::from_raw_fd(fd) });
            listener
                .local_addr()
                .map_err(|e| format!("--fd {fd} is not a listening Unix socket: {e}"))?;
            Ok(Listener::from(listener))
        }
        (None, None) => Err("--socket-path or --fd is required".into()),
    }
}

/// Removes the sockets and exits on SIGTERM or SIGINT.
fn exit_on_signals(paths: Vec<PathBuf>) -> Result<(), String> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])
        .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Some(sig) = signals.forever().next() {
                info!("signal {sig}: shutting down");
                for p in &paths {
                    let _ = std::fs::remove_file(p);
                }
                std::process::exit(0);
            }
        })
        .map_err(|e| format!("cannot start the signal thread: {e}"))?;
    Ok(())
}

fn serve(args: ServeArgs) -> Result<(), String> {
    let Some(model_path) = args.model.clone() else {
        return Err("--model is required".into());
    };
    let kernel = args
        .kernel
        .resolve()
        .map_err(|e| format!("--kernel / NN_CORE_KERNEL: {e}"))?;
    let model = Model::load(&model_path).map_err(|e| format!("cannot load model: {e}"))?;
    let model = admin::with_kernel(model, kernel).map_err(|e| e.to_string())?;
    info!(
        "serving model {:?} ({:?}, crc32c:{:08x}) as generation 1 on the {kernel} kernel",
        model.name,
        model.mlp.dims(),
        model.checksum
    );
    let model_path_for_watch = model_path.clone();
    let device = Arc::new(
        NnDevice::new(model, model_path, args.queues)
            .map_err(|e| format!("cannot create the device: {e}"))?,
    );
    let stats = Arc::new(Stats::new(args.queues));
    let mut listener = listener(&args)?;
    let admin =
        Arc::new(Admin::new(device.clone(), stats.clone(), kernel).with_test_mode(args.test_mode));
    if let Some(path) = &args.admin_socket {
        admin::spawn(admin.clone(), path, args.admin_socket_mode)
            .map_err(|e| format!("cannot serve the admin socket {}: {e}", path.display()))?;
    }
    if args.watch > 0 {
        watch::spawn(
            admin,
            model_path_for_watch,
            Duration::from_millis(args.watch),
        )
        .map_err(|e| format!("cannot watch the model file: {e}"))?;
    }
    let owned: Vec<PathBuf> = [&args.socket_path, &args.admin_socket]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
    exit_on_signals(owned)?;
    sandbox::apply(args.seccomp)?;
    info!("seccomp: {:?}", args.seccomp);
    let where_ = args.socket_path.as_deref().map_or_else(
        || format!("fd {}", args.fd.unwrap_or(-1)),
        |p: &Path| p.display().to_string(),
    );
    // One connection at a time; after a disconnect, the next QEMU (or the
    // same one reconnecting) gets a fresh backend on the same device state.
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
        backend
            .register_change_listener(&daemon)
            .map_err(|e| format!("cannot watch for model changes: {e}"))?;
        info!("waiting for a frontend on {where_}");
        if let Err(e) = daemon.start(&mut listener) {
            error!("accepting a frontend: {e}");
            std::thread::sleep(std::time::Duration::from_millis(100));
            continue;
        }
        match daemon.wait() {
            Ok(()) => info!("frontend disconnected"),
            Err(e) => error!("connection ended with an error: {e}"),
        }
        backend.notify_exit();
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
        None if cli.serve.print_capabilities => {
            println!("{}", VhostUserNnBackend::capabilities());
            Ok(())
        }
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
