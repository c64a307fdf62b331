// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The sandbox: what a compromised daemon could still do.
//!
//! * **seccomp**: after start-up (model loaded, sockets bound), every thread
//!   of the worker may make only the system calls of [`allowed`] plus a few
//!   whose arguments are checked ([`Mode`] says what happens to the rest);
//!   the supervisor has a tighter list ([`supervisor_allowed`]).
//! * **Landlock** (`fs`): the worker may read files only under the model
//!   directories (`--allow-model-dir`, default the directory of `--model`),
//!   where the kernel has Landlock; elsewhere this is logged and skipped.
//! * **`--user`**: the supervisor, and so the spawner and every worker,
//!   drops to an unprivileged user and group once its sockets are bound.
//!
//! # The allow lists
//!
//! Taken from `strace -f` of the daemon serving a guest through the whole
//! guest test suite (requests, hot-swaps over the admin socket, disconnects
//! and reconnects), plus what the Rust runtime and the rust-vmm crates use
//! on paths that suite may not reach (thread start and exit, sleeping,
//! signals). The lists are per architecture (`cfg(target_arch)`): aarch64
//! has only the `*at` and `p*` forms of several calls (`unlinkat` for
//! `unlink` and `rmdir`, `mkdirat`, `ppoll`, `epoll_pwait`).
//!
//! Arguments are checked where a call is otherwise a way out:
//!
//! | call | allowed only |
//! |---|---|
//! | `openat` | read-only: `O_ACCMODE == O_RDONLY`, no `O_CREAT`, no `O_TRUNC` |
//! | `mmap`, `mprotect` | without `PROT_EXEC` (no new code) |
//! | `ioctl` | `FIONBIO`, `FIOCLEX` (std's sockets), `TCGETS` (isatty) |
//! | `clone` | with `CLONE_THREAD` (threads, not processes) |
//! | `clone3` | fails with `ENOSYS` (its flags are in memory, out of a filter's reach; glibc then uses `clone`) |
//! | `tgkill` | on this process (tgid = the pid when the filter was built) |
//! | `prlimit64` | on pid 0 or this process, reading only (no new limit) |
//! | `socket`, `socketpair` (supervisor) | `AF_UNIX` |
//!
//! `clone3` is answered by a second, tiny filter (a seccomp filter has one
//! action for a mismatch, and `ENOSYS` must not be the trap): the kernel
//! runs every filter and takes the strictest answer, and `ERRNO` wins over
//! the main filter's `ALLOW`.
//!
//! # What a refused call does
//!
//! The default, [`Mode::Trap`], has the kernel raise SIGSYS; a handler
//! installed before the filter writes `seccomp: system call N refused` to
//! stderr (with `write(2)` only: async-signal-safe) and makes the call
//! return `-EPERM` by setting the return register in the signal's context.
//! So a path the list missed is a logged error with the call's number, not
//! a dead daemon — which matters: QEMU aborts when its vhost-user backend
//! dies without the supervisor — and not a silent `EPERM` (what
//! [`Mode::Errno`] does: the kernel's audit log, if any, is the only
//! trace). [`Mode::Kill`] is the strict mode (the supervisor restarts a
//! killed worker and logs `killed by SIGSYS (seccomp)`); [`Mode::Log`]
//! allows and logs to the audit log, for building the lists.
//!
//! One kernel rule limits the trap: a call refused while the thread blocks
//! SIGSYS cannot run the handler, and the kernel kills the process instead
//! (as in kill mode). glibc blocks every signal only around its own `clone`
//! calls (`pthread_create`, allowed; `posix_spawn`/`fork`, which the daemon
//! does not make after start-up), so in practice this is the `kill`
//! behaviour for starting a process — and for a worker, a restart by the
//! supervisor.
//!
//! Beyond this an operator should run the daemon in its own mount namespace
//! with a read-only view of the file system and no network (see
//! `backend/contrib/vhost-user-nn.service` for the systemd settings).

mod fs;
mod sys;
mod user;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

pub use fs::{confine_reads, explain, may_read};
pub use user::{drop_privileges, UserSpec};

/// What happens to a system call outside the allow list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// It fails with EPERM and `seccomp: system call N refused` is written
    /// to stderr (SIGSYS handler).
    Trap,
    /// It fails with EPERM, silently.
    Errno,
    /// The process is killed (SIGSYS); a supervisor restarts its worker.
    Kill,
    /// It is allowed and logged by the kernel's audit log (for building the list).
    Log,
    /// No filter.
    Off,
}

/// The sandbox's command-line options (flattened into the daemon's).
#[derive(Args, Clone, Debug)]
pub struct Options {
    /// Seccomp sandbox: what happens to a system call the daemon does not
    /// need (installed after start-up, on every thread).
    #[arg(long, value_enum, default_value_t = Mode::Trap)]
    pub seccomp: Mode,

    /// A directory (and everything under it) the worker may read models
    /// from after start-up (admin `load`, `--watch`), enforced with Landlock
    /// where the kernel has it. Repeatable. Default: the directory of
    /// `--model`; with neither, reads are not confined.
    #[arg(long, value_name = "DIR")]
    pub allow_model_dir: Vec<PathBuf>,

    /// Run as this user (and its primary group, or GROUP) once the sockets
    /// are bound: NAME, UID, NAME:GROUP or UID:GID. The supervisor drops
    /// privileges before it starts any worker.
    #[arg(long, value_name = "USER[:GROUP]")]
    pub user: Option<UserSpec>,
}

impl Options {
    /// The directories the worker may read: `--allow-model-dir`, else the
    /// directory of `model`; absolute.
    pub fn model_dirs(&self, model: Option<&Path>) -> Result<Vec<PathBuf>, String> {
        let dirs: Vec<PathBuf> = if self.allow_model_dir.is_empty() {
            model
                .map(|m| m.parent().unwrap_or(Path::new("")).to_path_buf())
                .map(|d| {
                    if d.as_os_str().is_empty() {
                        PathBuf::from(".")
                    } else {
                        d
                    }
                })
                .into_iter()
                .collect()
        } else {
            self.allow_model_dir.clone()
        };
        dirs.iter()
            .map(|d| {
                std::path::absolute(d)
                    .map_err(|e| format!("--allow-model-dir {}: {e}", d.display()))
            })
            .collect()
    }

    /// The options a worker gets from its supervisor: the seccomp mode and
    /// the model directories, made explicit (the served model's path
    /// changes with every `load`; the allowed directories do not).
    pub fn worker_args(&self, model: Option<&Path>) -> Result<Vec<OsString>, String> {
        let mut args: Vec<OsString> = vec![
            "--seccomp".into(),
            format!("{:?}", self.seccomp).to_lowercase().into(),
        ];
        for d in self.model_dirs(model)? {
            // Refused here, at start, rather than by every worker.
            if !d.is_dir() {
                return Err(format!(
                    "--allow-model-dir {}: not a directory (or not reachable)",
                    d.display()
                ));
            }
            args.push("--allow-model-dir".into());
            args.push(d.into());
        }
        Ok(args)
    }
}

/// System calls the worker makes after start-up, with any arguments, on
/// every architecture. The ones whose arguments are checked are in
/// [`worker_rules`].
const WORKER_COMMON: &[i64] = &[
    // I/O on sockets (vhost-user, admin, `--http`: accept4, read, write,
    // setsockopt for its timeouts), eventfds, the model file, logging.
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_pread64,
    libc::SYS_recvmsg,
    libc::SYS_sendmsg,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_accept4,
    libc::SYS_shutdown,
    libc::SYS_setsockopt,
    libc::SYS_getsockopt,
    libc::SYS_close,
    libc::SYS_newfstatat,
    libc::SYS_fstat,
    libc::SYS_statx,
    libc::SYS_lseek,
    libc::SYS_fcntl,
    libc::SYS_unlinkat,
    libc::SYS_eventfd2,
    // A swapped-in model handed to the supervisor (a sealed memfd).
    libc::SYS_memfd_create,
    libc::SYS_pipe2,
    libc::SYS_dup,
    libc::SYS_dup3,
    // Event loops.
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_pwait,
    libc::SYS_ppoll,
    // Memory: guest memory maps, allocator (mmap, mprotect: checked).
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_brk,
    // Threads (one per queue, per admin client, per HTTP client) and their
    // synchronisation
    // (clone: checked; clone3: ENOSYS from the second filter).
    libc::SYS_clone3,
    libc::SYS_futex,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_sched_getaffinity,
    libc::SYS_sched_yield,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_prctl,
    libc::SYS_sigaltstack,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigreturn,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_restart_syscall,
    // Time and randomness (std's HashMap seeds).
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_getrandom,
];

/// The worker's calls that only this architecture has (glibc uses them
/// where they exist).
#[cfg(target_arch = "x86_64")]
const WORKER_ARCH: &[i64] = &[libc::SYS_unlink, libc::SYS_epoll_wait, libc::SYS_poll];
/// The worker's calls that only this architecture has (none: aarch64 has
/// only the generic `*at` and `p*` forms, which are common).
#[cfg(not(target_arch = "x86_64"))]
const WORKER_ARCH: &[i64] = &[];

/// System calls the supervisor makes after start-up with any arguments:
/// relaying messages, a socket pair and a listening socket per worker,
/// signals and pidfds. No `execve`, `clone`, `openat`, `epoll`, `eventfd`,
/// `memfd_create`, `mprotect` or `ioctl`: workers are started by the
/// spawner, which is not filtered.
const SUPERVISOR_COMMON: &[i64] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_pread64,
    libc::SYS_recvmsg,
    libc::SYS_sendmsg,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_accept4,
    libc::SYS_bind,
    libc::SYS_listen,
    libc::SYS_connect,
    libc::SYS_setsockopt,
    libc::SYS_getsockopt,
    libc::SYS_close,
    libc::SYS_mkdirat,
    libc::SYS_fcntl,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_ppoll,
    libc::SYS_pidfd_send_signal,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_brk,
    libc::SYS_futex,
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_sigaltstack,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigreturn,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_restart_syscall,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_getrandom,
];

/// The supervisor's calls that only this architecture has.
#[cfg(target_arch = "x86_64")]
const SUPERVISOR_ARCH: &[i64] = &[
    libc::SYS_unlink,
    libc::SYS_mkdir,
    libc::SYS_rmdir,
    libc::SYS_poll,
];
/// The supervisor's calls that only this architecture has (aarch64:
/// `unlink` and `rmdir` are `unlinkat`).
#[cfg(not(target_arch = "x86_64"))]
const SUPERVISOR_ARCH: &[i64] = &[libc::SYS_unlinkat];

/// The worker's calls allowed with any arguments, on this architecture.
pub fn allowed() -> Vec<i64> {
    [WORKER_COMMON, WORKER_ARCH].concat()
}

/// The supervisor's calls allowed with any arguments, on this architecture.
pub fn supervisor_allowed() -> Vec<i64> {
    [SUPERVISOR_COMMON, SUPERVISOR_ARCH].concat()
}

/// The ioctl requests the worker may make.
pub const WORKER_IOCTLS: &[libc::Ioctl] = &[libc::FIONBIO, libc::FIOCLEX, libc::TCGETS];

type Rules = Vec<(i64, Vec<SeccompRule>)>;

/// Argument `arg` (its low 32 bits) compared with `value` by `op`.
fn arg32(arg: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition, String> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value).map_err(|e| e.to_string())
}

/// Argument `arg` (all 64 bits) compared with `value` by `op`.
fn arg64(arg: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition, String> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Qword, op, value).map_err(|e| e.to_string())
}

/// A rule: all of `conditions`.
fn all(conditions: Vec<SeccompCondition>) -> Result<SeccompRule, String> {
    SeccompRule::new(conditions).map_err(|e| e.to_string())
}

/// `mmap` and `mprotect` without PROT_EXEC (argument 2 of both).
fn no_exec() -> Result<Vec<SeccompRule>, String> {
    let exec = libc::PROT_EXEC as u64;
    Ok(vec![all(vec![arg32(2, SeccompCmpOp::MaskedEq(exec), 0)?])?])
}

/// The worker's calls whose arguments are checked; `pid` is the process's.
fn worker_rules(pid: u32) -> Result<Rules, String> {
    let pid = u64::from(pid);
    // openat(dirfd, path, flags, mode): read-only, creating and truncating
    // nothing.
    let write_bits = (libc::O_ACCMODE | libc::O_CREAT | libc::O_TRUNC) as u64;
    let openat = vec![all(vec![arg32(
        2,
        SeccompCmpOp::MaskedEq(write_bits),
        libc::O_RDONLY as u64,
    )?])?];
    // ioctl(fd, request, ...): the request is an unsigned int to the kernel.
    let ioctl = WORKER_IOCTLS
        .iter()
        .map(|&req| all(vec![arg32(1, SeccompCmpOp::Eq, req)?]))
        .collect::<Result<Vec<_>, _>>()?;
    // clone(flags, ...): a thread of this process.
    let thread = libc::CLONE_THREAD as u64;
    let clone = vec![all(vec![arg32(
        0,
        SeccompCmpOp::MaskedEq(thread),
        thread,
    )?])?];
    // tgkill(tgid, tid, sig): this process's threads.
    let tgkill = vec![all(vec![arg32(0, SeccompCmpOp::Eq, pid)?])?];
    // prlimit64(pid, resource, new, old): this process, reading only.
    let prlimit = [0, pid]
        .into_iter()
        .map(|p| {
            all(vec![
                arg32(0, SeccompCmpOp::Eq, p)?,
                arg64(2, SeccompCmpOp::Eq, 0)?,
            ])
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(vec![
        (libc::SYS_openat, openat),
        (libc::SYS_mmap, no_exec()?),
        (libc::SYS_mprotect, no_exec()?),
        (libc::SYS_ioctl, ioctl),
        (libc::SYS_clone, clone),
        (libc::SYS_tgkill, tgkill),
        (libc::SYS_prlimit64, prlimit),
    ])
}

/// The supervisor's calls whose arguments are checked.
fn supervisor_rules() -> Result<Rules, String> {
    let unix = || -> Result<Vec<SeccompRule>, String> {
        Ok(vec![all(vec![arg32(
            0,
            SeccompCmpOp::Eq,
            libc::AF_UNIX as u64,
        )?])?])
    };
    Ok(vec![
        (libc::SYS_socket, unix()?),
        (libc::SYS_socketpair, unix()?),
        (libc::SYS_mmap, no_exec()?),
    ])
}

/// What a filter in `mode` does with a call it does not allow; `None` for
/// [`Mode::Off`].
fn mismatch(mode: Mode) -> Option<SeccompAction> {
    match mode {
        Mode::Off => None,
        Mode::Trap => Some(SeccompAction::Trap),
        Mode::Errno => Some(SeccompAction::Errno(libc::EPERM as u32)),
        Mode::Kill => Some(SeccompAction::KillProcess),
        Mode::Log => Some(SeccompAction::Log),
    }
}

fn compile(
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    mismatch: SeccompAction,
    matched: SeccompAction,
) -> Result<BpfProgram, String> {
    let arch = TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|e| format!("seccomp: unsupported architecture: {e}"))?;
    let f = SeccompFilter::new(rules, mismatch, matched, arch)
        .map_err(|e| format!("seccomp filter: {e}"))?;
    BpfProgram::try_from(f).map_err(|e| format!("seccomp filter: {e}"))
}

/// The filter allowing `plain` with any arguments and `checked` with theirs.
fn filter_of(plain: &[i64], checked: Rules, mode: Mode) -> Result<Option<BpfProgram>, String> {
    let Some(mismatch) = mismatch(mode) else {
        return Ok(None);
    };
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        plain.iter().map(|&nr| (nr, Vec::new())).collect();
    for (nr, r) in checked {
        if rules.insert(nr, r).is_some() {
            return Err(format!("seccomp: system call {nr} is listed twice"));
        }
    }
    compile(rules, mismatch, SeccompAction::Allow).map(Some)
}

/// The worker's filter for `mode` (`None` for [`Mode::Off`]), for the
/// process `pid` (`tgkill` and `prlimit64` may name only it).
pub fn filter(mode: Mode, pid: u32) -> Result<Option<BpfProgram>, String> {
    filter_of(&allowed(), worker_rules(pid)?, mode)
}

/// The supervisor's filter for `mode`.
pub fn supervisor_filter(mode: Mode) -> Result<Option<BpfProgram>, String> {
    filter_of(&supervisor_allowed(), supervisor_rules()?, mode)
}

/// The second filter: `clone3` fails with `ENOSYS`, everything else is left
/// to the main filter.
pub fn clone3_filter() -> Result<BpfProgram, String> {
    let rules = BTreeMap::from([(libc::SYS_clone3, Vec::new())]);
    compile(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
    )
}

/// Installs the worker's filters on every thread of the process.
pub fn apply(mode: Mode) -> Result<(), String> {
    let Some(main) = filter(mode, std::process::id())? else {
        return Ok(());
    };
    prepare(mode)?;
    install(&clone3_filter()?)?;
    install(&main)
}

/// Installs the supervisor's filter (on every thread; it has one).
pub fn apply_supervisor(mode: Mode) -> Result<(), String> {
    let Some(main) = supervisor_filter(mode)? else {
        return Ok(());
    };
    prepare(mode)?;
    install(&main)
}

/// What must be in place before a filter in `mode`: the SIGSYS handler.
fn prepare(mode: Mode) -> Result<(), String> {
    if mode == Mode::Trap {
        sys::install_sigsys_handler().map_err(|e| format!("seccomp: SIGSYS handler: {e}"))?;
    }
    Ok(())
}

/// Installs `bpf` on every thread of the process.
fn install(bpf: &BpfProgram) -> Result<(), String> {
    seccompiler::apply_filter_all_threads(bpf)
        .map_err(|e| format!("installing the seccomp filter: {e}"))
}

/// Installs the worker's filters, for `mode`, on the calling thread only:
/// for tests that put one thread (or a child process) under the daemon's
/// real filter without sealing the whole test process.
#[doc(hidden)]
pub fn apply_to_this_thread(mode: Mode) -> Result<(), String> {
    let Some(main) = filter(mode, std::process::id())? else {
        return Ok(());
    };
    prepare(mode)?;
    for bpf in [clone3_filter()?, main] {
        seccompiler::apply_filter(&bpf).map_err(|e| format!("seccomp: {e}"))?;
    }
    Ok(())
}

/// Like [`apply_to_this_thread`], with the supervisor's filter.
#[doc(hidden)]
pub fn apply_supervisor_to_this_thread(mode: Mode) -> Result<(), String> {
    let Some(main) = supervisor_filter(mode)? else {
        return Ok(());
    };
    prepare(mode)?;
    seccompiler::apply_filter(&main).map_err(|e| format!("seccomp: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_compile_for_every_mode() {
        for mode in [Mode::Trap, Mode::Errno, Mode::Kill, Mode::Log] {
            let bpf = filter(mode, 1234).unwrap().unwrap();
            // One comparison and jump per allowed call, at least.
            assert!(
                bpf.len() > allowed().len(),
                "{mode:?}: {} instructions",
                bpf.len()
            );
            supervisor_filter(mode).unwrap().unwrap();
        }
        assert!(filter(Mode::Off, 1).unwrap().is_none());
        assert!(supervisor_filter(Mode::Off).unwrap().is_none());
        clone3_filter().unwrap();
    }

    /// The calls with checked arguments are not also allowed outright.
    #[test]
    fn checked_calls_are_not_in_the_plain_lists() {
        for (nr, _) in worker_rules(1).unwrap() {
            assert!(!allowed().contains(&nr), "{nr}");
        }
        for (nr, _) in supervisor_rules().unwrap() {
            assert!(!supervisor_allowed().contains(&nr), "{nr}");
        }
    }

    #[test]
    fn the_supervisors_list_is_smaller_and_spawns_nothing() {
        let all = supervisor_allowed();
        let mut v = all.clone();
        v.sort_unstable();
        v.dedup();
        assert_eq!(v.len(), all.len());
        assert!(all.len() < allowed().len());
        let checked: Vec<i64> = supervisor_rules().unwrap().iter().map(|r| r.0).collect();
        for forbidden in [
            libc::SYS_execve,
            libc::SYS_execveat,
            libc::SYS_clone,
            libc::SYS_clone3,
            libc::SYS_openat,
            libc::SYS_epoll_create1,
            libc::SYS_eventfd2,
            libc::SYS_memfd_create,
            libc::SYS_mprotect,
            libc::SYS_ioctl,
            libc::SYS_ptrace,
        ] {
            assert!(!all.contains(&forbidden), "{forbidden}");
            assert!(!checked.contains(&forbidden), "{forbidden}");
        }
        #[cfg(target_arch = "x86_64")]
        assert!(!all.contains(&libc::SYS_fork));
    }

    /// A thread under the supervisor's filter cannot open a file, start a
    /// process, open a network socket or map executable memory (the filter
    /// is installed on a thread of its own; seccomp filters are per thread
    /// unless synchronised).
    #[test]
    fn under_the_supervisors_filter_open_exec_inet_and_exec_maps_are_refused() {
        let (open, exec, inet, unix, map_exec) = std::thread::spawn(move || {
            // Errno, not trap: std's Command uses posix_spawn, which blocks
            // every signal around its clone; a call trapped while SIGSYS is
            // blocked kills the process (the kernel's rule, see the module
            // documentation), here the test binary. The trap is tested in
            // tests/sandbox.rs, in a child process.
            apply_supervisor_to_this_thread(Mode::Errno).unwrap();
            let open = std::fs::File::open("/etc/hostname").map_err(|e| e.raw_os_error());
            let exec = std::process::Command::new("/bin/true")
                .status()
                .map_err(|e| e.raw_os_error());
            let inet = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.raw_os_error());
            let unix = std::os::unix::net::UnixStream::pair().map(drop);
            // SAFETY: an anonymous mapping nobody else knows; unmapped below
            // if it was made.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    4096,
                    libc::PROT_READ | libc::PROT_EXEC,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            let map_exec = if p == libc::MAP_FAILED {
                std::io::Error::last_os_error().raw_os_error()
            } else {
                // SAFETY: the mapping just made, 4096 bytes.
                unsafe { libc::munmap(p, 4096) };
                None
            };
            (open.err(), exec.err(), inet.err(), unix, map_exec)
        })
        .join()
        .unwrap();
        assert_eq!(open, Some(Some(libc::EPERM)), "openat refused");
        assert!(exec.is_some(), "a process could be started: {exec:?}");
        assert_eq!(inet, Some(Some(libc::EPERM)), "AF_INET socket refused");
        assert!(unix.is_ok(), "AF_UNIX socket pair: {unix:?}");
        assert_eq!(map_exec, Some(libc::EPERM), "PROT_EXEC mapping refused");
    }

    #[test]
    fn allow_list_has_no_duplicates_and_no_process_spawning() {
        let all = allowed();
        let mut v = all.clone();
        v.sort_unstable();
        v.dedup();
        assert_eq!(v.len(), all.len());
        for forbidden in [
            libc::SYS_execve,
            libc::SYS_execveat,
            libc::SYS_socket,
            libc::SYS_connect,
            libc::SYS_ptrace,
            libc::SYS_clone,
            libc::SYS_openat,
            libc::SYS_mmap,
            libc::SYS_mprotect,
            libc::SYS_ioctl,
            libc::SYS_tgkill,
            libc::SYS_tkill,
            libc::SYS_kill,
            libc::SYS_prlimit64,
        ] {
            assert!(!all.contains(&forbidden), "{forbidden}");
        }
    }

    #[test]
    fn model_dirs_default_to_the_models_directory() {
        let o = Options {
            seccomp: Mode::Trap,
            allow_model_dir: Vec::new(),
            user: None,
        };
        assert_eq!(
            o.model_dirs(Some(Path::new("/srv/m/a.safetensors")))
                .unwrap(),
            [PathBuf::from("/srv/m")]
        );
        assert_eq!(
            o.model_dirs(Some(Path::new("a.safetensors"))).unwrap(),
            [std::env::current_dir().unwrap()]
        );
        assert!(o.model_dirs(None).unwrap().is_empty());
        let o = Options {
            allow_model_dir: vec!["/".into(), "/tmp".into()],
            ..o
        };
        assert_eq!(
            o.worker_args(Some(Path::new("/srv/m/a.safetensors")))
                .unwrap(),
            [
                "--seccomp",
                "trap",
                "--allow-model-dir",
                "/",
                "--allow-model-dir",
                "/tmp"
            ]
            .map(OsString::from)
        );
        let o = Options {
            allow_model_dir: vec!["/no/such/dir".into()],
            ..o
        };
        assert!(o.worker_args(None).unwrap_err().contains("/no/such/dir"));
    }
}
