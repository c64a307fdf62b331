// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The seccomp sandbox: after start-up (model loaded, sockets bound), every
//! thread of the daemon may make only the system calls on [`ALLOWED`].
//!
//! The list was taken from `strace -f` of the daemon serving a guest through
//! the whole guest test suite (requests, hot-swaps over the admin socket,
//! disconnects and reconnects), plus what the Rust runtime and the rust-vmm
//! crates use on paths that suite may not reach (thread start and exit,
//! sleeping, signals). A call outside the list fails with `EPERM` in the
//! default mode, so a path the list missed shows up as a logged error, not a
//! dead daemon (QEMU aborts when its vhost-user backend dies); `kill` is the
//! strict mode for operators who prefer that.
//!
//! Beyond seccomp an operator should run the daemon as an unprivileged user
//! owning only its sockets and model directory, in its own mount namespace
//! with a read-only view of the file system and no network (see
//! `backend/contrib/vhost-user-nn.service` for the systemd settings).

use std::collections::BTreeMap;

use clap::ValueEnum;
use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};

/// What happens to a system call outside the allow list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// It fails with EPERM.
    Errno,
    /// The daemon is killed.
    Kill,
    /// It is allowed and logged by the kernel's audit log (for building the list).
    Log,
    /// No filter.
    Off,
}

/// System calls the daemon makes after start-up.
pub const ALLOWED: &[i64] = &[
    // I/O on sockets, eventfds, the model file, logging.
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
    libc::SYS_openat,
    libc::SYS_newfstatat,
    libc::SYS_fstat,
    libc::SYS_statx,
    libc::SYS_lseek,
    libc::SYS_fcntl,
    libc::SYS_ioctl,
    libc::SYS_unlink,
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
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_poll,
    libc::SYS_ppoll,
    // Memory: guest memory maps, allocator.
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_brk,
    // Threads (one per queue, per admin client) and their synchronisation.
    libc::SYS_clone,
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
    libc::SYS_tgkill,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_restart_syscall,
    // Time and randomness (std's HashMap seeds).
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_getrandom,
    libc::SYS_prlimit64,
];

/// System calls the supervisor makes after start-up: relaying messages,
/// a socket pair and a listening socket per worker, signals and pidfds.
/// No `execve`, `clone`, `openat`, `epoll`, `eventfd` or `memfd_create`:
/// workers are started by the spawner, which is not filtered.
pub const SUPERVISOR_ALLOWED: &[i64] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_pread64,
    libc::SYS_recvmsg,
    libc::SYS_sendmsg,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_accept4,
    libc::SYS_socket,
    libc::SYS_socketpair,
    libc::SYS_bind,
    libc::SYS_listen,
    libc::SYS_connect,
    libc::SYS_setsockopt,
    libc::SYS_getsockopt,
    libc::SYS_close,
    libc::SYS_unlink,
    libc::SYS_mkdir,
    libc::SYS_mkdirat,
    libc::SYS_rmdir,
    libc::SYS_fcntl,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_pidfd_send_signal,
    libc::SYS_mmap,
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

/// Compiles the filter for `mode`; `None` for [`Mode::Off`].
pub fn filter(mode: Mode) -> Result<Option<BpfProgram>, String> {
    filter_of(ALLOWED, mode)
}

/// Installs the supervisor's filter (on its one thread).
pub fn apply_supervisor(mode: Mode) -> Result<(), String> {
    install(filter_of(SUPERVISOR_ALLOWED, mode)?)
}

/// The filter allowing `allowed`, for `mode`.
fn filter_of(allowed: &[i64], mode: Mode) -> Result<Option<BpfProgram>, String> {
    let mismatch = match mode {
        Mode::Off => return Ok(None),
        Mode::Errno => SeccompAction::Errno(libc::EPERM as u32),
        Mode::Kill => SeccompAction::KillProcess,
        Mode::Log => SeccompAction::Log,
    };
    let rules: BTreeMap<i64, Vec<seccompiler::SeccompRule>> =
        allowed.iter().map(|&nr| (nr, Vec::new())).collect();
    let arch = TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|e| format!("seccomp: unsupported architecture: {e}"))?;
    let f = SeccompFilter::new(rules, mismatch, SeccompAction::Allow, arch)
        .map_err(|e| format!("seccomp filter: {e}"))?;
    BpfProgram::try_from(f)
        .map(Some)
        .map_err(|e| format!("seccomp filter: {e}"))
}

/// Installs the filter on every thread of the process.
pub fn apply(mode: Mode) -> Result<(), String> {
    install(filter(mode)?)
}

/// Installs `bpf` on every thread of the process (nothing for `None`).
fn install(bpf: Option<BpfProgram>) -> Result<(), String> {
    match bpf {
        Some(bpf) => seccompiler::apply_filter_all_threads(&bpf)
            .map_err(|e| format!("installing the seccomp filter: {e}")),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_compile_for_every_mode() {
        for mode in [Mode::Errno, Mode::Kill, Mode::Log] {
            let bpf = filter(mode).unwrap().unwrap();
            // One comparison and jump per allowed call, at least.
            assert!(
                bpf.len() > ALLOWED.len(),
                "{mode:?}: {} instructions",
                bpf.len()
            );
        }
        assert!(filter(Mode::Off).unwrap().is_none());
    }

    #[test]
    fn the_supervisors_list_is_smaller_and_spawns_nothing() {
        let mut v = SUPERVISOR_ALLOWED.to_vec();
        v.sort_unstable();
        v.dedup();
        assert_eq!(v.len(), SUPERVISOR_ALLOWED.len());
        assert!(SUPERVISOR_ALLOWED.len() < ALLOWED.len());
        for forbidden in [
            libc::SYS_execve,
            libc::SYS_execveat,
            libc::SYS_clone,
            libc::SYS_clone3,
            libc::SYS_fork,
            libc::SYS_openat,
            libc::SYS_epoll_create1,
            libc::SYS_eventfd2,
            libc::SYS_memfd_create,
            libc::SYS_mprotect,
            libc::SYS_ioctl,
            libc::SYS_ptrace,
        ] {
            assert!(!SUPERVISOR_ALLOWED.contains(&forbidden), "{forbidden}");
        }
    }

    /// A thread under the supervisor's filter cannot open a file or start a
    /// process (the filter is installed on a thread of its own; seccomp
    /// filters are per thread unless synchronised).
    #[test]
    fn under_the_supervisors_filter_open_and_exec_are_refused() {
        let bpf = filter_of(SUPERVISOR_ALLOWED, Mode::Errno).unwrap().unwrap();
        let (open, exec) = std::thread::spawn(move || {
            seccompiler::apply_filter(&bpf).unwrap();
            let open = std::fs::File::open("/etc/hostname").map_err(|e| e.raw_os_error());
            let exec = std::process::Command::new("/bin/true")
                .status()
                .map_err(|e| e.raw_os_error());
            (open.err(), exec.err())
        })
        .join()
        .unwrap();
        assert_eq!(open, Some(Some(libc::EPERM)), "openat refused");
        assert!(exec.is_some(), "a process could be started: {exec:?}");
    }

    #[test]
    fn allow_list_has_no_duplicates_and_no_process_spawning() {
        let mut v = ALLOWED.to_vec();
        v.sort_unstable();
        v.dedup();
        assert_eq!(v.len(), ALLOWED.len());
        for forbidden in [
            libc::SYS_execve,
            libc::SYS_socket,
            libc::SYS_connect,
            libc::SYS_ptrace,
        ] {
            assert!(!ALLOWED.contains(&forbidden));
        }
    }
}
