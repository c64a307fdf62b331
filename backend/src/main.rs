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
use vhost_user_nn::control;
use vhost_user_nn::device::NnDevice;
use vhost_user_nn::http;
use vhost_user_nn::sandbox;
use vhost_user_nn::stats::Stats;
use vhost_user_nn::supervisor;
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
    #[arg(long, required_unless_present_any = ["fd", "print_capabilities", "spawner_fd"])]
    socket_path: Option<PathBuf>,

    /// Serve an already listening Unix socket inherited as this file
    /// descriptor (socket activation, e.g. systemd's `ListenStream=`; with
    /// systemd, `--fd 3`).
    #[arg(long, conflicts_with = "socket_path")]
    fd: Option<RawFd>,

    /// Print the vhost-user capabilities as JSON and exit.
    #[arg(long, exclusive = true)]
    print_capabilities: bool,

    /// The supervisor's spawner: starts workers on request over this
    /// descriptor (see backend/src/supervisor/spawner.rs).
    #[arg(long, hide = true, exclusive = true)]
    spawner_fd: Option<RawFd>,

    /// Model file (safetensors, Q16.16; see nn-core/src/model.rs). Without
    /// one the device reports "no model" and refuses requests until an admin
    /// `load`.
    #[arg(long)]
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

    #[command(flatten)]
    sandbox: sandbox::Options,

    /// After serving a queue, poll it this many microseconds for the next
    /// request before sleeping on its kick (0: off; at most 100000). Cuts
    /// the round trip of a request that follows closely, at the cost of one
    /// busy core per polling queue while it polls (see README.md).
    #[arg(long, default_value_t = 0, value_name = "US",
          value_parser = clap::value_parser!(u64).range(0..=100_000))]
    poll_us: u64,

    /// Enables test-only admin commands (`test-delay`: a slow device on
    /// purpose). Never in production.
    #[arg(long, hide = true)]
    test_mode: bool,

    /// Permissions of the admin socket, in octal.
    #[arg(long, default_value = "600", value_parser = parse_mode)]
    admin_socket_mode: u32,

    #[command(flatten)]
    admin_access: admin::AccessArgs,

    /// Run as one process: no supervisor, so a crash or an upgrade closes
    /// QEMU's connection (for debugging).
    #[arg(long)]
    no_supervisor: bool,

    /// A worker that dies within a second of its start is crash-looping:
    /// the next one starts after this many milliseconds, doubling up to
    /// 5 s (0: restart at once, always).
    #[arg(long, default_value_t = 50, value_name = "MS")]
    restart_backoff_ms: u64,

    /// Worker of a supervisor: the control channel's descriptor.
    #[arg(long, hide = true, requires = "fd")]
    control_fd: Option<RawFd>,

    /// Worker: the model's bytes (a sealed memfd), instead of reading `--model`.
    #[arg(long, hide = true, requires = "control_fd")]
    model_fd: Option<RawFd>,

    /// Worker: the generation the model is served under.
    #[arg(long, hide = true, requires = "control_fd")]
    generation: Option<u32>,

    /// Worker: the admin socket, listening.
    #[arg(
        long,
        hide = true,
        requires = "control_fd",
        conflicts_with = "admin_socket"
    )]
    admin_fd: Option<RawFd>,

    /// Serve the read-only HTTP endpoint (metrics, health probes, model
    /// metadata; see README.md) on this loopback TCP address (e.g.
    /// 127.0.0.1:9090) or Unix socket path (one with a '/'). Off by default.
    #[arg(long, value_name = "ADDR", value_parser = parse_http_addr)]
    http: Option<http::Addr>,

    /// Let `--http` listen on a non-loopback address. The endpoint is
    /// read-only and has no access control of its own.
    #[arg(long, requires = "http")]
    http_allow_remote: bool,

    /// Worker: the HTTP endpoint's socket, listening.
    #[arg(long, hide = true, requires = "control_fd", conflicts_with = "http")]
    http_fd: Option<RawFd>,

    /// Worker: announce the current generation on the event queue.
    #[arg(long, hide = true, requires = "control_fd")]
    announce: bool,
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
    /// Replace the worker process without QEMU noticing (live upgrade);
    /// waits until the new worker serves.
    Upgrade {
        /// The new worker's executable (default: the daemon's own path,
        /// so installing a new binary there and upgrading runs it).
        #[arg(long)]
        binary: Option<PathBuf>,
    },
}

fn parse_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s, 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("`{s}` is not an octal mode such as 600"))
}

/// Takes ownership of descriptor `fd`, inherited from the parent process.
fn inherited(fd: RawFd, what: &str) -> Result<OwnedFd, String> {
    if fd < 3 {
        return Err(format!("{what} {fd} is a standard stream"));
    }
    // SAFETY: F_GETFD only reads the descriptor's flags; an invalid
    // descriptor makes it fail with EBADF, nothing else.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(format!("{what} {fd} is not open"));
    }
    // SAFETY: the descriptor is open (checked above) and was handed to this
    // process to own; nothing else in the process uses it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // Not inherited further (a worker gets exactly what it is given).
    rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::CLOEXEC)
        .map_err(|e| format!("{what}: {e}"))?;
    Ok(fd)
}

/// The listening vhost-user socket, from `--socket-path` or `--fd`.
fn listener(args: &ServeArgs) -> Result<Listener, String> {
    unix_listener(args).map(Listener::from)
}

/// The listening vhost-user socket as a [`UnixListener`]. A stale socket
/// file at `--socket-path` is replaced; anything else there is refused.
fn unix_listener(args: &ServeArgs) -> Result<UnixListener, String> {
    match (&args.socket_path, args.fd) {
        (Some(path), _) => {
            use std::os::unix::fs::FileTypeExt;
            let cannot = |e: std::io::Error| format!("cannot listen on {}: {e}", path.display());
            match std::fs::symlink_metadata(path) {
                Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path).map_err(cannot)?,
                Ok(_) => return Err(format!("{} exists and is not a socket", path.display())),
                Err(_) => {}
            }
            UnixListener::bind(path).map_err(cannot)
        }
        (None, Some(fd)) => {
            let fd = inherited(fd, "--fd")?;
            let listener = UnixListener::from(fd);
            listener
                .local_addr()
                .map_err(|_| "--fd is not a listening Unix socket".to_string())?;
            // SO_ACCEPTCONN: a bound socket that does not listen is refused
            // here rather than failing at the first accept.
            match rustix::net::sockopt::socket_acceptconn(&listener) {
                Ok(true) => Ok(listener),
                _ => Err("--fd is not a listening Unix socket".into()),
            }
        }
        (None, None) => Err("--socket-path or --fd is required".into()),
    }
}

/// The `--http` Unix socket path, if any.
fn http_path(args: &ServeArgs) -> Option<PathBuf> {
    match &args.http {
        Some(http::Addr::Unix(p)) => Some(p.clone()),
        _ => None,
    }
}

/// The directories of the sockets a single process creates and removes.
fn owned_socket_dirs(args: &ServeArgs) -> Vec<PathBuf> {
    [&args.socket_path, &args.admin_socket]
        .into_iter()
        .flatten()
        .cloned()
        .chain(http_path(args))
        .filter_map(|p| {
            std::path::absolute(&p)
                .ok()?
                .parent()
                .map(Path::to_path_buf)
        })
        .collect()
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

/// A worker or spawner must not outlive the supervisor (it would hold
/// nothing QEMU can reach): it is killed when its parent (the spawner, or
/// the supervisor) dies.
fn die_with_parent() -> Result<(), String> {
    use rustix::process::{getppid, set_parent_process_death_signal, Signal};
    set_parent_process_death_signal(Some(Signal::KILL))
        .map_err(|e| format!("PR_SET_PDEATHSIG: {e}"))?;
    let parent = std::env::var(control::ENV_PARENT)
        .ok()
        .and_then(|p| p.parse::<u32>().ok());
    let actual = getppid().map(|p| p.as_raw_nonzero().get() as u32);
    if parent.is_some() && parent != actual {
        return Err("the supervisor exited before this process started".into());
    }
    Ok(())
}

/// Runs the supervisor, which runs this binary again as its worker with
/// the same serving options.
fn parse_http_addr(s: &str) -> Result<http::Addr, String> {
    http::Addr::parse(s).map_err(|e| e.to_string())
}

/// Mode of a `--http` Unix socket: any local user may probe and scrape.
const HTTP_SOCKET_MODE: u32 = 0o666;

/// Binds `--http`, if given.
fn http_listener(args: &ServeArgs) -> Result<Option<http::Listener>, String> {
    args.http
        .as_ref()
        .map(|a| http::bind(a, args.http_allow_remote, HTTP_SOCKET_MODE))
        .transpose()
        .map_err(|e| e.to_string())
}

fn supervise(args: ServeArgs) -> Result<(), String> {
    let model_path = args.model.clone();
    // Refuse a kernel this CPU lacks here, not in a crash-looping worker.
    args.kernel
        .resolve()
        .map_err(|e| format!("--kernel / NN_CORE_KERNEL: {e}"))?;
    // Before the vhost-user socket appears: a bad --http leaves no socket.
    let http = http_listener(&args)?;
    let listener = unix_listener(&args)?;
    let admin = match &args.admin_socket {
        Some(path) => Some(
            admin::bind(path, args.admin_socket_mode)
                .map_err(|e| format!("cannot serve the admin socket {}: {e}", path.display()))?,
        ),
        None => None,
    };
    let mut worker_args: Vec<std::ffi::OsString> = vec![
        "--queues".into(),
        args.queues.to_string().into(),
        "--kernel".into(),
        args.kernel.to_string().into(),
        "--watch".into(),
        args.watch.to_string().into(),
        "--poll-us".into(),
        args.poll_us.to_string().into(),
    ];
    worker_args.extend(args.sandbox.worker_args(args.model.as_deref())?);
    if args.test_mode {
        worker_args.push("--test-mode".into());
    }
    worker_args.extend(args.admin_access.to_args());
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    supervisor::run(supervisor::Config {
        listener,
        owned_paths: [&args.socket_path, &args.admin_socket]
            .into_iter()
            .flatten()
            .cloned()
            .chain(http_path(&args))
            .collect(),
        admin,
        http: http.map(|l| match l {
            http::Listener::Tcp(l) => OwnedFd::from(l),
            http::Listener::Unix(l) => OwnedFd::from(l),
        }),
        model_path,
        worker_args,
        exe,
        min_backoff: Duration::from_millis(args.restart_backoff_ms),
        seccomp: args.sandbox.seccomp,
        user: args.sandbox.user.clone(),
    })
}

/// The model to serve and its generation: from the supervisor's memfd in a
/// worker, else from `--model`.
fn initial_model(args: &ServeArgs, model_path: &Path) -> Result<(Model, u32), String> {
    let Some(fd) = args.model_fd else {
        let model = Model::load(model_path).map_err(|e| format!("cannot load model: {e}"))?;
        return Ok((model, 1));
    };
    let fd = inherited(fd, "--model-fd")?;
    let bytes = control::read_memfd(&fd, nn_core::model::MAX_FILE_SIZE)
        .map_err(|e| format!("--model-fd: {e}"))?;
    let model = Model::from_bytes(&bytes)
        .map_err(|e| format!("cannot load model {}: {e}", model_path.display()))?;
    Ok((model, args.generation.unwrap_or(1)))
}

fn serve(args: ServeArgs) -> Result<(), String> {
    if !args.no_supervisor && args.control_fd.is_none() {
        return supervise(args);
    }
    if args.control_fd.is_some() {
        die_with_parent()?;
    }
    let kernel = args
        .kernel
        .resolve()
        .map_err(|e| format!("--kernel / NN_CORE_KERNEL: {e}"))?;
    if args.watch > 0 && args.model.is_none() {
        return Err("--watch needs --model (the file to watch)".into());
    }
    let (device, generation) = match &args.model {
        Some(model_path) => {
            let (model, generation) = initial_model(&args, model_path)?;
            let model = admin::with_kernel(model, kernel).map_err(|e| e.to_string())?;
            info!(
                "serving model {:?} ({:?}, crc32c:{:08x}) as generation {generation} on the \
                 {kernel} kernel",
                model.name,
                model.mlp.dims(),
                model.checksum
            );
            let device =
                NnDevice::at_generation(model, model_path.clone(), args.queues, generation);
            (device, generation)
        }
        None => {
            info!("no model: requests are refused until an admin load");
            (NnDevice::without_model(args.queues), 0)
        }
    };
    let device = Arc::new(device.map_err(|e| format!("cannot create the device: {e}"))?);
    // Bound before Landlock, which lets this process make only socket files
    // (admin::bind makes a private directory and a hard link).
    let admin_listener = match &args.admin_socket {
        Some(path) => Some(
            admin::bind(path, args.admin_socket_mode)
                .map_err(|e| format!("cannot serve the admin socket {}: {e}", path.display()))?,
        ),
        None => None,
    };
    let http_listener = match args.http_fd {
        Some(fd) => {
            Some(http::Listener::from_fd(inherited(fd, "--http-fd")?).map_err(|e| e.to_string())?)
        }
        None => http_listener(&args)?,
    };
    // Before any thread starts (Landlock confines this thread and its new ones).
    sandbox::confine_reads(
        &args.sandbox.model_dirs(args.model.as_deref())?,
        &owned_socket_dirs(&args),
    )?;
    let mut stats = Stats::new(args.queues);
    if let Some(info) = control::Info::from_env().filter(|_| args.control_fd.is_some()) {
        stats = stats.with_supervisor(&info);
    }
    stats.set_generation(generation);
    stats.set_model(device.current().model.as_ref(), None);
    let stats = Arc::new(stats);
    let mut listener = listener(&args)?;
    let control = match args.control_fd {
        Some(fd) => Some(Arc::new(
            control::Client::new(inherited(fd, "--control-fd")?)
                .map_err(|e| format!("--control-fd: {e}"))?,
        )),
        None => None,
    };
    // Ready before anything can send the supervisor another message (the
    // admin thread's model hand-overs): the supervisor connects now, and its
    // messages wait in the socket until the daemon below takes them.
    if let Some(c) = &control {
        c.ready()
            .map_err(|e| format!("cannot reach the supervisor: {e}"))?;
    }
    let mut access = args.admin_access.access();
    if let Some(user) = &args.sandbox.user {
        // The daemon's own uid, once it runs as --user (below).
        access = access.allow_uids([user.resolve()?.0]);
    }
    let mut admin = Admin::new(device.clone(), stats.clone(), kernel)
        .with_test_mode(args.test_mode)
        .with_access(access);
    if let Some(c) = &control {
        let (c1, c2) = (c.clone(), c.clone());
        admin = admin
            .with_persist(Box::new(move |model, generation, source| {
                c1.persist(&model.to_bytes(), generation, source)
            }))
            .with_upgrade(Box::new(move |binary| {
                c2.call(&control::ToSupervisor::Upgrade { binary }, &[])
            }));
    }
    let admin = Arc::new(admin);
    if let Some(l) = http_listener {
        http::spawn(l, Arc::new(http::State::new(device.clone(), stats.clone())))
            .map_err(|e| e.to_string())?;
    }
    if let Some(l) = admin_listener {
        admin::spawn_on(admin.clone(), l).map_err(|e| format!("admin socket: {e}"))?;
    }
    if let Some(fd) = args.admin_fd {
        let l = std::os::unix::net::UnixListener::from(inherited(fd, "--admin-fd")?);
        admin::spawn_on(admin.clone(), l).map_err(|e| format!("admin socket: {e}"))?;
    }
    if args.watch > 0 {
        watch::spawn(
            admin,
            args.model.clone().unwrap_or_default(),
            Duration::from_millis(args.watch),
        )
        .map_err(|e| format!("cannot watch the model file: {e}"))?;
    }
    let owned: Vec<PathBuf> = [&args.socket_path, &args.admin_socket]
        .into_iter()
        .flatten()
        .cloned()
        .chain(http_path(&args))
        .collect();
    exit_on_signals(owned)?;
    if let Some(user) = &args.sandbox.user {
        sandbox::drop_privileges(user)?;
    }
    sandbox::apply(args.sandbox.seccomp)?;
    info!("seccomp: {:?}", args.sandbox.seccomp);
    let where_ = args.socket_path.as_deref().map_or_else(
        || format!("fd {}", args.fd.unwrap_or(-1)),
        |p: &Path| p.display().to_string(),
    );
    let mut announce = args.announce;
    // One connection at a time; after a disconnect, the next QEMU (or the
    // same one reconnecting) gets a fresh backend on the same device state.
    loop {
        let backend = Arc::new(
            VhostUserNnBackend::new(device.clone(), stats.clone(), args.queues as usize)
                .map_err(|e| e.to_string())?
                .with_poll(Duration::from_micros(args.poll_us)),
        );
        if std::mem::take(&mut announce) {
            backend.announce_current();
        }
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
        CtlCmd::Upgrade { binary } => {
            let binary = binary
                .as_ref()
                .map(std::path::absolute)
                .transpose()
                .map_err(|e| e.to_string())?;
            json!({"cmd": "upgrade", "binary": binary})
        }
        CtlCmd::Load { path } => {
            // The daemon resolves relative paths against its own directory.
            let abs = std::path::absolute(path).map_err(|e| e.to_string())?;
            json!({"cmd": "load", "path": abs})
        }
    };
    let sock = |e: std::io::Error| format!("{}: {e}", admin_socket.display());
    if let CtlCmd::Upgrade { .. } = command {
        let status = admin::request(&admin_socket, &json!({"cmd": "status"}).to_string());
        let old_pid = status.map_err(sock)?["pid"].as_u64();
        // The old worker answers only a refusal: when the upgrade works, it
        // is stopped before it can, and its connection closes.
        if let Ok(reply) = admin::request(&admin_socket, &req.to_string()) {
            if reply["ok"] != true {
                return Err(reply["error"].as_str().unwrap_or("error").to_string());
            }
        }
        return wait_for_upgrade(&admin_socket, old_pid);
    }
    let reply = admin::request(&admin_socket, &req.to_string()).map_err(sock)?;
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

/// Waits until the admin socket is served by a worker other than `old_pid`
/// and prints its status.
fn wait_for_upgrade(admin_socket: &Path, old_pid: Option<u64>) -> Result<(), String> {
    let status = json!({"cmd": "status"}).to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(reply) = admin::request(admin_socket, &status) {
            if reply["ok"] == true && reply["pid"].as_u64() != old_pid {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&reply).unwrap_or_default()
                );
                return Ok(());
            }
        }
        if std::time::Instant::now() > deadline {
            return Err("no new worker within 60 s; see the daemon's log".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
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
        None => match cli.serve.spawner_fd {
            Some(fd) => die_with_parent()
                .and_then(|()| supervisor::spawner::serve(inherited(fd, "--spawner-fd")?)),
            None => serve(cli.serve),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            ExitCode::FAILURE
        }
    }
}
