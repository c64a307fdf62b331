// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Every `unsafe` of the sandbox, thin wrappers around libc: the SIGSYS
//! handler of [`Mode::Trap`](super::Mode::Trap), the user and group
//! look-ups of `--user`, and the privilege drop.

use std::ffi::{CStr, CString};
use std::io;

/// `si_code` of a SIGSYS raised by a seccomp `SECCOMP_RET_TRAP`.
const SYS_SECCOMP: libc::c_int = 1;

/// The start of a `siginfo_t` as the kernel fills it for SIGSYS (the
/// `_sigsys` member of its union, on 64-bit Linux): the libc crate names
/// no accessor for `si_syscall`.
#[repr(C)]
struct SigsysInfo {
    _signo: libc::c_int,
    _errno: libc::c_int,
    si_code: libc::c_int,
    _pad: libc::c_int,
    _call_addr: *mut libc::c_void,
    syscall: libc::c_int,
    _arch: libc::c_uint,
}

// The kernel's `siginfo_t` is 128 bytes; the prefix read here fits.
const _: () = assert!(std::mem::size_of::<SigsysInfo>() <= std::mem::size_of::<libc::siginfo_t>());

/// Makes the interrupted system call return `value` (a negated errno).
#[cfg(target_arch = "x86_64")]
fn set_return(uc: &mut libc::ucontext_t, value: i64) {
    uc.uc_mcontext.gregs[libc::REG_RAX as usize] = value;
}

/// Makes the interrupted system call return `value` (a negated errno).
#[cfg(target_arch = "aarch64")]
fn set_return(uc: &mut libc::ucontext_t, value: i64) {
    uc.uc_mcontext.regs[0] = value as u64;
}

/// Elsewhere the handler is never installed ([`TRAP_SUPPORTED`]).
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn set_return(_uc: &mut libc::ucontext_t, _value: i64) {}

/// Whether [`install_sigsys_handler`] can make a trapped call fail.
pub const TRAP_SUPPORTED: bool = cfg!(any(target_arch = "x86_64", target_arch = "aarch64"));

/// `seccomp: system call N refused\n` into `buf`; the length used.
fn refused_line(nr: libc::c_int, buf: &mut [u8; 64]) -> usize {
    const HEAD: &[u8] = b"seccomp: system call ";
    const TAIL: &[u8] = b" refused\n";
    let mut n = 0;
    for &b in HEAD {
        buf[n] = b;
        n += 1;
    }
    if nr < 0 {
        buf[n] = b'-';
        n += 1;
    }
    let mut digits = [0u8; 10];
    let mut v = nr.unsigned_abs();
    let mut d = 0;
    loop {
        digits[d] = b'0' + (v % 10) as u8;
        d += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    while d > 0 {
        d -= 1;
        buf[n] = digits[d];
        n += 1;
    }
    for &b in TAIL {
        buf[n] = b;
        n += 1;
    }
    n
}

/// The SIGSYS handler: one line on stderr, and the call returns `-EPERM`.
/// Async-signal-safe: no allocation, no lock, only `write(2)`; errno is
/// kept.
extern "C" fn on_sigsys(_sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    if info.is_null() || ctx.is_null() {
        return;
    }
    // SAFETY: `info` points to the siginfo_t the kernel gave this handler
    // (installed with SA_SIGINFO); SigsysInfo is a prefix of it (checked
    // size) and read unaligned, so its alignment does not matter.
    let si = unsafe { std::ptr::read_unaligned(info.cast_const().cast::<SigsysInfo>()) };
    if si.si_code != SYS_SECCOMP {
        // Sent by someone (kill -SYS): no call to make fail.
        return;
    }
    // SAFETY: __errno_location returns this thread's errno slot, valid for
    // the thread's life.
    let errno = unsafe { *libc::__errno_location() };
    let mut buf = [0u8; 64];
    let len = refused_line(si.syscall, &mut buf);
    // SAFETY: write(2) is async-signal-safe; `buf` holds `len` bytes. A
    // failed or short write loses the line, nothing else.
    let _ = unsafe { libc::write(libc::STDERR_FILENO, buf.as_ptr().cast(), len) };
    // SAFETY: for an SA_SIGINFO handler the third argument is the
    // ucontext_t of the interrupted thread, which the kernel restores from
    // on return: writing its return register is how the trapped call gets
    // its result. Nothing else refers to it during the handler.
    let uc = unsafe { &mut *ctx.cast::<libc::ucontext_t>() };
    set_return(uc, -i64::from(libc::EPERM));
    // SAFETY: as above; restores the errno the interrupted code saw.
    unsafe { *libc::__errno_location() = errno };
}

/// Installs the SIGSYS handler for every thread (a process-wide
/// disposition), before the filter that traps.
pub fn install_sigsys_handler() -> io::Result<()> {
    if !TRAP_SUPPORTED {
        return Err(io::Error::other(
            "--seccomp trap is not supported on this architecture",
        ));
    }
    // SAFETY: sigaction is plain data; all-zero is a valid empty value.
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    let handler: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) = on_sigsys;
    sa.sa_sigaction = handler as libc::sighandler_t;
    // SA_NODEFER: SIGSYS stays unblocked in the handler (a trap while it
    // is blocked kills the process; the handler makes no trapped call).
    sa.sa_flags = libc::SA_SIGINFO | libc::SA_NODEFER;
    // SAFETY: `sa.sa_mask` is a valid sigset_t to initialise.
    unsafe { libc::sigemptyset(&raw mut sa.sa_mask) };
    // SAFETY: `sa` is a fully initialised sigaction with a handler of the
    // SA_SIGINFO signature; the old action is not wanted.
    if unsafe { libc::sigaction(libc::SIGSYS, &raw const sa, std::ptr::null_mut()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // Threads started earlier inherit no mask change; this one makes sure
    // SIGSYS is not blocked here.
    // SAFETY: `set` is initialised by sigemptyset before use.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&raw mut set);
        libc::sigaddset(&raw mut set, libc::SIGSYS);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &raw const set, std::ptr::null_mut());
    }
    Ok(())
}

/// A user's uid and primary gid, from the user database (NSS).
pub fn user_by_name(name: &str) -> io::Result<Option<(u32, u32)>> {
    let name = CString::new(name).map_err(|_| io::Error::other("NUL in a user name"))?;
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: passwd is plain data; all-zero is a valid value to fill.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call: `name` a C string, `pw`
    // and `found` writable, `buf` writable for its length; the strings the
    // entry points to live in `buf`, which is not read here.
    let rc = unsafe {
        libc::getpwnam_r(
            name.as_ptr(),
            &raw mut pw,
            buf.as_mut_ptr(),
            buf.len(),
            &raw mut found,
        )
    };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok((!found.is_null()).then_some((pw.pw_uid, pw.pw_gid)))
}

/// A group's gid, from the group database (NSS).
pub fn group_by_name(name: &str) -> io::Result<Option<u32>> {
    let name = CString::new(name).map_err(|_| io::Error::other("NUL in a group name"))?;
    let mut buf = vec![0 as libc::c_char; 64 * 1024];
    // SAFETY: group is plain data; all-zero is a valid value to fill.
    let mut gr: libc::group = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::group = std::ptr::null_mut();
    // SAFETY: as in user_by_name: valid C string, writable entry, buffer
    // and result pointer.
    let rc = unsafe {
        libc::getgrnam_r(
            name.as_ptr(),
            &raw mut gr,
            buf.as_mut_ptr(),
            buf.len(),
            &raw mut found,
        )
    };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok((!found.is_null()).then_some(gr.gr_gid))
}

/// The user `uid`'s name, if the user database has one.
pub fn user_name(uid: u32) -> Option<String> {
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: passwd is plain data; all-zero is a valid value to fill.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: as in user_by_name.
    let rc = unsafe {
        libc::getpwuid_r(
            uid,
            &raw mut pw,
            buf.as_mut_ptr(),
            buf.len(),
            &raw mut found,
        )
    };
    if rc != 0 || found.is_null() || pw.pw_name.is_null() {
        return None;
    }
    // SAFETY: on success pw_name points to a NUL-terminated string in `buf`,
    // which is alive here.
    let name = unsafe { CStr::from_ptr(pw.pw_name) };
    Some(name.to_string_lossy().into_owned())
}

/// `setgroups([gid])`, `setgid(gid)`, `setuid(uid)`, in that order (glibc applies
/// each to every thread of the process).
pub fn set_ids(uid: u32, gid: u32) -> io::Result<()> {
    let groups = [gid];
    // SAFETY: `groups` holds one gid_t, the count given.
    if unsafe { libc::setgroups(1, groups.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: setgid takes a plain integer.
    if unsafe { libc::setgid(gid) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: setuid takes a plain integer.
    if unsafe { libc::setuid(uid) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The supplementary groups of the process.
pub fn groups() -> io::Result<Vec<u32>> {
    let mut groups = vec![0 as libc::gid_t; 256];
    // SAFETY: `groups` is writable for the count given.
    let n = unsafe { libc::getgroups(groups.len() as libc::c_int, groups.as_mut_ptr()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    groups.truncate(n as usize);
    Ok(groups)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refused_line() {
        let mut buf = [0u8; 64];
        for (nr, want) in [
            (257, "seccomp: system call 257 refused\n"),
            (0, "seccomp: system call 0 refused\n"),
            (-1, "seccomp: system call -1 refused\n"),
            (i32::MIN, "seccomp: system call -2147483648 refused\n"),
        ] {
            let n = refused_line(nr, &mut buf);
            assert_eq!(std::str::from_utf8(&buf[..n]).unwrap(), want);
        }
    }
}
