// SPDX-License-Identifier: GPL-2.0

//! Buffers the device reads and writes: a device-readable part and a
//! device-writable part, each split into kmalloc'd chunks (in the linear
//! map, as a scatterlist entry needs) and described by a scatterlist of one
//! entry per chunk.
//!
//! Who may touch the bytes is tracked here, so that the accessors are safe:
//! the readable part is written through `&mut` before the buffers are shared;
//! while a virtqueue holds them ([`DeviceBufs::lend`] until
//! [`DeviceBufs::reclaim`], both called by [`super::virtio`] only) the
//! device may write the writable part and the driver reads none of it.

use super::glue;
use core::ptr;
use core::sync::atomic::{AtomicBool, Ordering};
use kernel::alloc::flags::__GFP_NOWARN;
use kernel::alloc::Flags;
use kernel::bindings;
use kernel::prelude::*;
use kernel::types::Opaque;

/// Largest chunk: 4 MiB, and never more than the largest kmalloc
/// (`KMALLOC_MAX_SIZE`) or a segment the platform can map
/// (`virtio_max_dma_size()`, see [`QueueLimits`]).
const MAX_CHUNK: usize = 4 << 20;

/// What the queue the buffers go to can carry.
#[derive(Clone, Copy)]
pub(crate) struct QueueLimits {
    /// Descriptors one chain may have: the ring size (with or without
    /// indirect descriptors, a chain may not be longer than the ring).
    pub(crate) descs: usize,
    /// Largest segment the platform can map (`virtio_max_dma_size()`:
    /// bounce buffers of SEV/TDX guests or an IOMMU bound it).
    pub(crate) max_seg: usize,
}

/// How the parts are split: every chunk `1 << shift` bytes long (the last
/// one of each part shorter).
#[derive(Clone, Copy)]
struct Chunking {
    shift: u32,
}

impl Chunking {
    /// The smallest power-of-two chunk size, from a page up, that splits
    /// parts of `readable` and `writable` bytes into at most `limits.descs`
    /// chunks, each within [`MAX_CHUNK`], the largest kmalloc and
    /// `limits.max_seg`; `E2BIG` if none does.
    fn new(readable: usize, writable: usize, limits: &QueueLimits) -> Result<Self> {
        // SAFETY: Reads a constant; no preconditions.
        let kmalloc_max = unsafe { glue::virtio_nn_kmalloc_max_size() };
        let max = MAX_CHUNK.min(kmalloc_max).min(limits.max_seg);
        if max == 0 {
            return Err(E2BIG);
        }
        // The largest power of two within `max`, and a page or less.
        let max_shift = usize::BITS - 1 - max.leading_zeros();
        let mut c = Self {
            shift: kernel::page::PAGE_SHIFT.min(max_shift as usize) as u32,
        };
        loop {
            let descs = c
                .count(readable)
                .zip(c.count(writable))
                .and_then(|(r, w)| r.checked_add(w));
            if descs.is_some_and(|d| d <= limits.descs) {
                return Ok(c);
            }
            if c.shift >= max_shift {
                return Err(E2BIG);
            }
            c.shift += 1;
        }
    }

    /// Chunk size in bytes.
    fn size(self) -> usize {
        1 << self.shift
    }

    /// Chunks of a part of `len` bytes (`None` on overflow).
    fn count(self, len: usize) -> Option<usize> {
        Some(len.checked_add(self.size() - 1)? >> self.shift)
    }

    /// Length of chunk `i` of a part of `len` bytes.
    fn len_of(self, len: usize, i: usize) -> usize {
        (len - (i << self.shift)).min(self.size())
    }
}

/// One chunk. The device writes the writable part's chunks while the driver
/// holds shared references to the buffers, so each byte is an [`Opaque`].
type Chunk = KVec<Opaque<u8>>;

/// Allocates a zeroed chunk of `len` bytes, without a warning if that
/// fails.
fn alloc_chunk(len: usize, gfp: Flags) -> Result<Chunk> {
    let buf = KVec::from_elem(0u8, len, gfp | __GFP_NOWARN)?;
    let (ptr, len, cap) = buf.into_raw_parts();
    // SAFETY: `ptr`, `len` and `cap` come from `into_raw_parts` of a `KVec`
    // of the same allocator, and `Opaque<u8>` has the layout of `u8`
    // (`repr(transparent)` over `UnsafeCell<MaybeUninit<u8>>`); the `len`
    // bytes are initialised.
    Ok(unsafe { KVec::<Opaque<u8>>::from_raw_parts(ptr.cast(), len, cap) })
}

/// A device-readable part and a device-writable part in chunks, with their
/// scatterlists.
pub(crate) struct DeviceBufs {
    /// The readable part's chunks (`readable_chunks`), then the writable
    /// part's.
    chunks: KVec<Chunk>,
    /// One scatterlist entry per chunk, in the same order: the readable
    /// part's entries (a list ended after its last entry, if any), then
    /// the writable part's (another). Written only in `new`; then only a
    /// virtqueue reads them.
    sg: KVec<Opaque<bindings::scatterlist>>,
    readable_chunks: usize,
    readable_len: usize,
    writable_len: usize,
    chunking: Chunking,
    /// Set while a virtqueue holds the buffers (the device may write the
    /// writable part).
    lent: AtomicBool,
}

// SAFETY: The chunks are plain memory; the writable part's bytes are only
// read while no virtqueue holds the buffers (`lent`, checked by every
// reader), the readable part is only written through `&mut`, and the
// scatterlist entries are written only in `new`, before the buffers are
// shared.
unsafe impl Send for DeviceBufs {}
// SAFETY: See `Send`.
unsafe impl Sync for DeviceBufs {}

impl DeviceBufs {
    /// Zeroed parts of `readable_len` (may be 0) and `writable_len` (at
    /// least 1) bytes for a queue of `limits`, allocated with `gfp` (plus
    /// `__GFP_NOWARN`). `E2BIG` if they cannot be split into as few
    /// descriptors as the ring holds, `ENOMEM` if a chunk cannot be
    /// allocated.
    pub(crate) fn new(
        readable_len: usize,
        writable_len: usize,
        limits: &QueueLimits,
        gfp: Flags,
    ) -> Result<Self> {
        if writable_len == 0 {
            return Err(EINVAL);
        }
        let chunking = Chunking::new(readable_len, writable_len, limits)?;
        // Both counts are within `limits.descs` (`Chunking::new`).
        let readable_chunks = chunking.count(readable_len).ok_or(E2BIG)?;
        let writable_chunks = chunking.count(writable_len).ok_or(E2BIG)?;
        let total = readable_chunks + writable_chunks;
        let mut chunks = KVec::with_capacity(total, gfp)?;
        for i in 0..readable_chunks {
            chunks.push(alloc_chunk(chunking.len_of(readable_len, i), gfp)?, gfp)?;
        }
        for i in 0..writable_chunks {
            chunks.push(alloc_chunk(chunking.len_of(writable_len, i), gfp)?, gfp)?;
        }
        let mut sg = KVec::with_capacity(total, gfp)?;
        for _ in 0..total {
            sg.push(Opaque::<bindings::scatterlist>::uninit(), gfp)?;
        }
        let sg_base = Opaque::raw_get(sg.as_ptr());
        for (start, n) in [(0, readable_chunks), (readable_chunks, writable_chunks)] {
            if n > 0 {
                // SAFETY: Entries `start..start + n` are within `sg`, which
                // is not shared yet.
                unsafe { bindings::sg_init_table(sg_base.add(start), n as u32) };
            }
        }
        for (i, chunk) in chunks.iter().enumerate() {
            // SAFETY: Entry `i` is within `sg` and initialised above; the
            // chunk is kmalloc'd (in the linear map), within the segment
            // limit, and lives as long as `self`, so as long as any queue
            // holds the buffers.
            unsafe {
                glue::virtio_nn_sg_set_buf(
                    sg_base.add(i),
                    chunk.as_ptr().cast(),
                    chunk.len() as u32,
                )
            };
        }
        Ok(Self {
            chunks,
            sg,
            readable_chunks,
            readable_len,
            writable_len,
            chunking,
            lent: AtomicBool::new(false),
        })
    }

    /// Descriptors the buffers take on a ring without indirect descriptors:
    /// one per chunk.
    pub(crate) fn descriptors(&self) -> usize {
        self.chunks.len()
    }

    /// Length of the writable part.
    pub(crate) fn writable_len(&self) -> usize {
        self.writable_len
    }

    /// Copies `src` into the readable part from byte `offset` on; `EINVAL`
    /// if it does not fit.
    pub(crate) fn write_readable(&mut self, offset: usize, src: &[u8]) -> Result {
        let end = offset.checked_add(src.len()).ok_or(EINVAL)?;
        if end > self.readable_len {
            return Err(EINVAL);
        }
        let chunks = &self.chunks[..self.readable_chunks];
        self.chunking
            .copy(chunks, offset, src.len(), |chunk, at, done, n| {
                // SAFETY: `at + n <= chunk.len()` and `done + n <= src.len()`
                // (`Chunking::copy`); `&mut self` excludes every other access.
                unsafe {
                    ptr::copy_nonoverlapping(
                        src[done..].as_ptr(),
                        Opaque::raw_get(chunk.as_ptr()).add(at),
                        n,
                    )
                }
            });
        Ok(())
    }

    /// Copies the writable part's bytes `offset..offset + dst.len()` into
    /// `dst`. `EBUSY` while a virtqueue holds the buffers; `EINVAL` beyond
    /// the part.
    pub(crate) fn read_writable(&self, offset: usize, dst: &mut [u8]) -> Result {
        if self.lent.load(Ordering::Acquire) {
            return Err(EBUSY);
        }
        let end = offset.checked_add(dst.len()).ok_or(EINVAL)?;
        if end > self.writable_len {
            return Err(EINVAL);
        }
        let chunks = &self.chunks[self.readable_chunks..];
        let len = dst.len();
        self.chunking
            .copy(chunks, offset, len, |chunk, at, done, n| {
                // SAFETY: `at + n <= chunk.len()` and `done + n <= dst.len()`
                // (`Chunking::copy`); the bytes are initialised (zeroed, then
                // maybe written by the device) and nothing writes them: no
                // virtqueue holds the buffers (`lent` is clear).
                unsafe {
                    ptr::copy_nonoverlapping(
                        Opaque::raw_get(chunk.as_ptr()).add(at).cast_const(),
                        dst[done..].as_mut_ptr(),
                        n,
                    )
                }
            });
        Ok(())
    }

    /// The scatterlists for `virtqueue_add_sgs`: the readable one (if the
    /// part is not empty), then the writable one, and the counts of each
    /// kind (out, in); marks the
    /// buffers lent. For [`super::virtio`] only, which calls
    /// [`Self::reclaim`] once the queue gives them back.
    pub(super) fn lend(&self) -> ([*mut bindings::scatterlist; 2], u32, u32) {
        self.lent.store(true, Ordering::Release);
        let base = Opaque::raw_get(self.sg.as_ptr());
        // `readable_chunks < sg.len()`: the writable part has a chunk.
        let writable = base.wrapping_add(self.readable_chunks);
        if self.readable_chunks > 0 {
            ([base, writable], 1, 1)
        } else {
            ([writable, ptr::null_mut()], 0, 1)
        }
    }

    /// The queue gave the buffers back: the device no longer accesses them.
    pub(super) fn reclaim(&self) {
        self.lent.store(false, Ordering::Release);
    }
}

impl Chunking {
    /// Calls `f(chunk, at, done, n)` for each piece of bytes
    /// `offset..offset + len` of the part made of `chunks`: `n` bytes at
    /// `at` in `chunk`, the `done`th byte of the range first. The caller
    /// checked that the range is within the part.
    fn copy(
        self,
        chunks: &[Chunk],
        mut offset: usize,
        len: usize,
        mut f: impl FnMut(&Chunk, usize, usize, usize),
    ) {
        let mut done = 0;
        while done < len {
            let Some(chunk) = chunks.get(offset >> self.shift) else {
                return;
            };
            let at = offset & (self.size() - 1);
            let n = (len - done).min(chunk.len().saturating_sub(at));
            if n == 0 {
                return;
            }
            f(chunk, at, done, n);
            offset += n;
            done += n;
        }
    }
}
