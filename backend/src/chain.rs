// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! One descriptor chain, walked once: its device-readable and
//! device-writable segments, with reads and writes at byte offsets across
//! segments.
//!
//! Invariants kept for the untrusted guest:
//! - a chain is walked at most `max_descs + 1` descriptors far (direct and
//!   indirect together), so a 65535-entry indirect table costs no more than a
//!   queue-sized chain; more than `max_descs` (the queue size, as the virtio
//!   spec bounds a chain) is refused;
//! - only the chain the guest built is used: virtio-queue ends a chain
//!   silently on a loop, a `next` out of range, a bad indirect table or over
//!   4 GiB, leaving its last descriptor with NEXT set; such a chain is
//!   refused, never answered into a layout that is not the guest's;
//! - every segment is checked against guest memory once, here.

use std::ops::Deref;

use thiserror::Error as ThisError;
use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestAddress, GuestMemory, Permissions};

/// Why a chain cannot be answered at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ThisError)]
pub enum ChainError {
    /// More descriptors than the queue size.
    #[error("descriptor chain longer than {0} descriptors")]
    TooLong(usize),
    /// The chain was cut short by virtio-queue.
    #[error("malformed descriptor chain (loop, bad next or bad indirect table)")]
    CutShort,
    /// A device-writable descriptor lies outside guest memory.
    #[error("writable descriptor outside guest memory")]
    WritableOutside,
}

/// One contiguous piece of guest memory.
#[derive(Clone, Copy, Debug)]
struct Segment {
    addr: GuestAddress,
    len: usize,
}

/// The segments of one chain; kept per worker and reused, so walking a chain
/// does not allocate once the vectors have grown to the queue size.
#[derive(Debug, Default)]
pub struct Segments {
    readable: Vec<Segment>,
    writable: Vec<Segment>,
    readable_len: usize,
    writable_len: usize,
    /// A readable segment lies (partly) outside guest memory.
    unreadable: bool,
}

impl Segments {
    /// Walks `chain` once and keeps its segments (replacing the previous
    /// chain's).
    pub fn parse<M>(
        &mut self,
        chain: DescriptorChain<M>,
        mem: &impl GuestMemory,
        max_descs: usize,
    ) -> Result<(), ChainError>
    where
        M: Deref,
        M::Target: GuestMemory,
    {
        self.readable.clear();
        self.writable.clear();
        self.readable_len = 0;
        self.writable_len = 0;
        self.unreadable = false;
        let mut count = 0usize;
        let mut last_has_next = false;
        for d in chain.take(max_descs.saturating_add(1)) {
            count += 1;
            if count > max_descs {
                return Err(ChainError::TooLong(max_descs));
            }
            last_has_next = d.has_next();
            let seg = Segment {
                addr: d.addr(),
                len: d.len() as usize,
            };
            let access = if d.is_write_only() {
                Permissions::Write
            } else {
                Permissions::Read
            };
            let inside = mem.check_range(seg.addr, seg.len, access);
            if d.is_write_only() {
                if !inside {
                    return Err(ChainError::WritableOutside);
                }
                self.writable_len += seg.len;
                self.writable.push(seg);
            } else {
                self.unreadable |= !inside;
                self.readable_len += seg.len;
                self.readable.push(seg);
            }
        }
        if last_has_next {
            return Err(ChainError::CutShort);
        }
        Ok(())
    }

    /// Bytes in the device-readable part.
    pub fn readable_len(&self) -> usize {
        self.readable_len
    }

    /// Bytes in the device-writable part.
    pub fn writable_len(&self) -> usize {
        self.writable_len
    }

    /// Whether a readable segment lies outside guest memory.
    pub fn unreadable(&self) -> bool {
        self.unreadable
    }

    /// Fills `buf` from the readable part at byte `offset`.
    pub fn read_at(
        &self,
        mem: &impl GuestMemory,
        offset: usize,
        buf: &mut [u8],
    ) -> Result<(), vm_memory::GuestMemoryError> {
        let mut done = 0;
        for (addr, len) in pieces(&self.readable, offset, buf.len()) {
            mem.read_slice(&mut buf[done..done + len], addr)?;
            done += len;
        }
        short(done, buf.len())
    }

    /// Writes `buf` into the writable part at byte `offset`.
    pub fn write_at(
        &self,
        mem: &impl GuestMemory,
        offset: usize,
        buf: &[u8],
    ) -> Result<(), vm_memory::GuestMemoryError> {
        let mut done = 0;
        for (addr, len) in pieces(&self.writable, offset, buf.len()) {
            mem.write_slice(&buf[done..done + len], addr)?;
            done += len;
        }
        short(done, buf.len())
    }
}

fn short(done: usize, want: usize) -> Result<(), vm_memory::GuestMemoryError> {
    if done == want {
        Ok(())
    } else {
        Err(vm_memory::GuestMemoryError::PartialBuffer {
            expected: want,
            completed: done,
        })
    }
}

/// The (address, length) pieces of `segs` covering `len` bytes from byte
/// `offset` of their concatenation (fewer bytes if they end first).
fn pieces(
    segs: &[Segment],
    mut offset: usize,
    mut len: usize,
) -> impl Iterator<Item = (GuestAddress, usize)> + '_ {
    segs.iter().filter_map(move |s| {
        if len == 0 {
            return None;
        }
        if offset >= s.len {
            offset -= s.len;
            return None;
        }
        let n = (s.len - offset).min(len);
        // Wrapping: a segment outside guest memory is refused by the
        // access itself.
        let addr = GuestAddress(s.addr.0.wrapping_add(offset as u64));
        offset = 0;
        len -= n;
        Some((addr, n))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_cover_offsets_across_segments() {
        let segs = [
            Segment {
                addr: GuestAddress(100),
                len: 5,
            },
            Segment {
                addr: GuestAddress(200),
                len: 0,
            },
            Segment {
                addr: GuestAddress(300),
                len: 10,
            },
        ];
        let got: Vec<_> = pieces(&segs, 3, 6).map(|(a, n)| (a.0, n)).collect();
        assert_eq!(got, vec![(103, 2), (300, 4)]);
        let got: Vec<_> = pieces(&segs, 7, 100).map(|(a, n)| (a.0, n)).collect();
        assert_eq!(got, vec![(302, 8)]);
        assert_eq!(pieces(&segs, 15, 1).count(), 0);
    }
}
