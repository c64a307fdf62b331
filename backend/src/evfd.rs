// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The two eventfd operations the queue loop needs on descriptors that
//! vmm-sys-util owns but exposes only as raw fds: a non-consuming readiness
//! check (the shared exit event) and a signal (re-arming a kick). The only
//! `unsafe` of the data path.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// Whether the eventfd `fd` is readable now, without consuming it.
pub fn is_readable(fd: &impl AsRawFd) -> bool {
    // SAFETY: `fd` is borrowed from a live owner for the duration of the
    // call, so the raw descriptor stays open while it is used.
    let fd = unsafe { BorrowedFd::borrow_raw(fd.as_raw_fd()) };
    let mut pfd = [rustix::event::PollFd::new(
        &fd,
        rustix::event::PollFlags::IN,
    )];
    let now = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    matches!(rustix::event::poll(&mut pfd, Some(&now)), Ok(n) if n > 0)
}

/// Adds 1 to the eventfd `fd`'s counter (makes it readable).
pub fn signal(fd: &impl AsRawFd) -> io::Result<()> {
    // SAFETY: as in `is_readable`.
    let fd = unsafe { BorrowedFd::borrow_raw(fd.as_raw_fd()) };
    rustix::io::write(fd, &1u64.to_ne_bytes())
        .map(drop)
        .map_err(io::Error::from)
}
