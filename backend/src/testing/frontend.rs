// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A vhost-user *frontend* for tests: plays QEMU and the guest driver at
//! once, so the real `vhost-user-nn` daemon can be driven over its socket
//! without a VM.
//!
//! * Guest memory is one memfd, mapped here and handed to the daemon with
//!   `SET_MEM_TABLE` (as QEMU does with `memory-backend-memfd,share=on`).
//! * Each queue is a real split virtqueue (descriptor table, avail ring, used
//!   ring) in that memory, with a kick eventfd and a call eventfd.
//! * Features: VERSION_1 and PROTOCOL_FEATURES always, EVENT_IDX and
//!   INDIRECT_DESC when the daemon offers them (EVENT_IDX can be turned off
//!   with [`Options::event_idx`]); protocol features CONFIG, MQ and REPLY_ACK.
//!
//! High level: [`Frontend::predict`] builds a well-formed request and returns
//! the response; [`Frontend::start`] / [`Frontend::next_response`] pipeline
//! several requests on one queue. Low level: [`Frontend::submit`] sends any
//! chain of buffers, [`Frontend::submit_raw`] writes arbitrary (hostile)
//! descriptors, [`Frontend::wait_used`] waits for a used entry.
//!
//! Layout of guest memory (guest-physical addresses, from [`GUEST_BASE`]):
//! per queue, a 32 KiB ring area (descriptor table, avail ring, used ring),
//! then a [`SCRATCH_BYTES`] scratch area for hand-made requests, then
//! `slots * slot_bytes` of request/response slots for the high-level calls.
//! Address 0 up to [`GUEST_BASE`] is not guest memory.
//!
//! A `Frontend` is `Sync`: each queue has its own lock, so one thread per
//! queue can drive it at once.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{fence, Ordering};
use std::sync::{mpsc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nn_core::protocol::{
    self, DeviceConfig, Event, ModelChunk, ModelRequest, RequestHeader, ResponseHeader,
    CONFIG_SIZE, OP_GET_MODEL, OP_NULL, OP_PREDICT,
};
use vhost::vhost_user::message::{
    VhostUserConfigFlags, VhostUserHeaderFlag, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::vhost_user::{Frontend as VuFrontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

/// `VIRTQ_DESC_F_NEXT`.
pub const F_NEXT: u16 = 1;
/// `VIRTQ_DESC_F_WRITE`: device-writable.
pub const F_WRITE: u16 = 2;
/// `VIRTQ_DESC_F_INDIRECT`.
pub const F_INDIRECT: u16 = 4;

/// Guest-physical address where guest memory starts.
pub const GUEST_BASE: u64 = 0x10_0000;
/// Bytes of ring area per queue (room for a 1024-entry split ring).
const RING_BYTES: u64 = 0x8000;
/// Bytes of scratch area per queue, for hand-made requests.
pub const SCRATCH_BYTES: u64 = 0x10_0000;
/// Longest wait for the daemon during setup or a GET_CONFIG.
pub const SOCKET_TIMEOUT: Duration = Duration::from_secs(20);
/// Default time to wait for a response.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// One split-ring descriptor, exactly as written into the table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RawDesc {
    /// Guest-physical address of the buffer.
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
    /// `F_NEXT`, `F_WRITE`, `F_INDIRECT`.
    pub flags: u16,
    /// Index of the next descriptor when `F_NEXT` is set.
    pub next: u16,
}

impl RawDesc {
    /// A descriptor.
    pub const fn new(addr: u64, len: u32, flags: u16, next: u16) -> Self {
        Self {
            addr,
            len,
            flags,
            next,
        }
    }

    /// The 16 bytes of the descriptor in the table.
    pub fn to_bytes(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&self.addr.to_le_bytes());
        b[8..12].copy_from_slice(&self.len.to_le_bytes());
        b[12..14].copy_from_slice(&self.flags.to_le_bytes());
        b[14..16].copy_from_slice(&self.next.to_le_bytes());
        b
    }
}

/// One buffer of a chain for [`Frontend::submit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Buf {
    /// Guest-physical address.
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
    /// Device-writable.
    pub write: bool,
}

impl Buf {
    /// A device-readable buffer.
    pub const fn r(addr: u64, len: u32) -> Self {
        Self {
            addr,
            len,
            write: false,
        }
    }
    /// A device-writable buffer.
    pub const fn w(addr: u64, len: u32) -> Self {
        Self {
            addr,
            len,
            write: true,
        }
    }
}

/// A used-ring entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Used {
    /// Head descriptor index of the chain.
    pub id: u32,
    /// Bytes the device wrote.
    pub len: u32,
}

/// A response to a request sent with [`Frontend::start`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// Head descriptor index of the request's chain.
    pub head: u16,
    /// Bytes the device wrote.
    pub used_len: u32,
    /// The response header, if the device wrote at least one.
    pub header: Option<ResponseHeader>,
    /// The output values (`num_samples * out_dim` of them on success).
    pub outputs: Vec<i32>,
    /// Every byte written after the response header (a `GET_MODEL`
    /// answer's chunk header and bytes).
    pub payload: Vec<u8>,
    /// The request's id as sent.
    pub request_id: u64,
}

/// A `GET_MODEL` answer: the response header and, on success, the chunk
/// header and the chunk's bytes.
pub type ModelAnswer = (ResponseHeader, Option<(ModelChunk, Vec<u8>)>);

/// Connection options.
#[derive(Clone, Debug)]
pub struct Options {
    /// Number of request queues to set up.
    pub queues: usize,
    /// Entries per queue (a power of two, at most 1024).
    pub queue_size: u16,
    /// Negotiate EVENT_IDX if offered.
    pub event_idx: bool,
    /// Request/response slots per queue (most requests in flight with
    /// [`Frontend::start`]).
    pub slots: usize,
    /// Bytes per slot (request and response together).
    pub slot_bytes: usize,
    /// How long a wait polls the used ring before sleeping on the call
    /// eventfd (0: sleep at once, as a guest waiting for an interrupt).
    pub spin: Duration,
    /// Also set up the event queue (index `queues`, device to driver), as
    /// QEMU does; see [`Frontend::post_event_buffer`].
    pub event_queue: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            queues: 1,
            queue_size: 256,
            event_idx: true,
            slots: 16,
            slot_bytes: 256 * 1024,
            spin: Duration::ZERO,
            event_queue: false,
        }
    }
}

struct InFlight {
    descs: Vec<u16>,
    slot: Option<usize>,
    resp_addr: u64,
    resp_len: u32,
    request_id: u64,
}

struct Vq {
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    scratch: u64,
    slots_base: u64,
    kick: EventFd,
    call: EventFd,
    /// Our shadow of avail->idx.
    avail_idx: u16,
    /// Next used entry to consume.
    last_used: u16,
    free_descs: Vec<u16>,
    free_slots: Vec<usize>,
    inflight: HashMap<u16, InFlight>,
    /// Raw chains submitted and not yet seen used.
    raw_inflight: usize,
    /// Kicks actually sent (after EVENT_IDX suppression).
    kicks: u64,
}

/// The frontend: a vhost-user connection and the guest side of its queues.
pub struct Frontend {
    socket: PathBuf,
    /// Where guest memory starts in the daemon's view (its mmap address in
    /// ours, which the vhost-user messages use).
    host: u64,
    vu: Mutex<VuFrontend>,
    mem: GuestMemoryMmap<()>,
    mem_size: u64,
    queues: Vec<Mutex<Vq>>,
    features: u64,
    protocol_features: VhostUserProtocolFeatures,
    opts: Options,
}

/// Sets up vring `q` (num, base 0, addresses, call, kick, enable), as QEMU
/// does at start and after a stop.
fn setup_vring(
    vu: &mut VuFrontend,
    q: usize,
    size: u16,
    host: u64,
    (desc, avail, used): (u64, u64, u64),
    kick: &EventFd,
    call: &EventFd,
) -> io::Result<()> {
    let to_host = |gpa: u64| host + (gpa - GUEST_BASE);
    vu.set_vring_num(q, size)
        .map_err(|e| vu_err("SET_VRING_NUM", e))?;
    vu.set_vring_base(q, 0)
        .map_err(|e| vu_err("SET_VRING_BASE", e))?;
    vu.set_vring_addr(
        q,
        &VringConfigData {
            queue_max_size: size,
            queue_size: size,
            flags: 0,
            desc_table_addr: to_host(desc),
            used_ring_addr: to_host(used),
            avail_ring_addr: to_host(avail),
            log_addr: None,
        },
    )
    .map_err(|e| vu_err("SET_VRING_ADDR", e))?;
    vu.set_vring_call(q, call)
        .map_err(|e| vu_err("SET_VRING_CALL", e))?;
    vu.set_vring_kick(q, kick)
        .map_err(|e| vu_err("SET_VRING_KICK", e))?;
    vu.set_vring_enable(q, true)
        .map_err(|e| vu_err("SET_VRING_ENABLE", e))
}

fn vu_err(what: &str, e: vhost::Error) -> io::Error {
    io::Error::other(format!("{what}: {e}"))
}

fn mem_err(e: vm_memory::GuestMemoryError) -> io::Error {
    io::Error::other(format!("guest memory: {e}"))
}

/// `vring_need_event` of the virtio spec.
fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

fn memfd(size: u64) -> io::Result<File> {
    // SAFETY: memfd_create takes a NUL-terminated name and flags and returns
    // a new descriptor or -1; nothing else is touched.
    let fd = unsafe { libc::memfd_create(c"virtio-nn-guest".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor owned by nobody else.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size)?;
    Ok(file)
}

/// Shuts a socket down if it is still alive after a timeout: the vhost
/// crate's frontend retries reads forever (a socket read timeout only makes
/// it poll), so a daemon that stops answering would hang the caller.
struct Watchdog {
    done: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watchdog {
    fn new(fd: RawFd, timeout: Duration) -> Self {
        let (done, rx) = mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(timeout) {
                // SAFETY: the owner is blocked on this open socket (it drops
                // the watchdog, which ends this wait, before closing it).
                unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
            }
        });
        Self {
            done: Some(done),
            thread: Some(thread),
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        drop(self.done.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn connect_socket(path: &Path) -> io::Result<UnixStream> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match UnixStream::connect(path) {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() < deadline && e.kind() != io::ErrorKind::PermissionDenied => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
        }
    }
}

impl Frontend {
    /// Hangs up (as QEMU does when it stops or resets the device) and
    /// connects again with the same options: fresh memory and queues.
    /// The daemon serves one frontend at a time, so the old connection must
    /// be closed first.
    pub fn reconnect(&mut self) -> io::Result<()> {
        self.hang_up();
        *self = Self::connect_with(&self.socket.clone(), self.opts.clone())?;
        Ok(())
    }

    /// Shuts the vhost-user socket down; the daemon sees the frontend go.
    /// Nothing but dropping works afterwards.
    pub fn hang_up(&self) {
        let vu = self.vu.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: shutdown on a descriptor we own; no memory is involved.
        unsafe { libc::shutdown(vu.as_raw_fd(), libc::SHUT_RDWR) };
    }

    /// Connects to the daemon's socket with `num_queues` queues and default
    /// options, and makes the queues ready.
    pub fn connect(socket: &Path, num_queues: usize) -> io::Result<Self> {
        Self::connect_with(
            socket,
            Options {
                queues: num_queues,
                ..Options::default()
            },
        )
    }

    /// Connects with explicit options.
    pub fn connect_with(socket: &Path, opts: Options) -> io::Result<Self> {
        assert!(opts.queue_size.is_power_of_two() && opts.queue_size <= 1024);
        assert!(opts.queues >= 1);
        let stream = connect_socket(socket)?;
        // A daemon that stops answering fails the setup instead of hanging
        // the test forever.
        let _watchdog = Watchdog::new(stream.as_raw_fd(), SOCKET_TIMEOUT);
        // Request queues, and the event queue after them if wanted.
        let vrings = opts.queues + usize::from(opts.event_queue);
        let mut vu = VuFrontend::from_stream(stream, vrings as u64);
        vu.set_owner().map_err(|e| vu_err("SET_OWNER", e))?;
        let offered = vu.get_features().map_err(|e| vu_err("GET_FEATURES", e))?;
        let required =
            (1u64 << VIRTIO_F_VERSION_1) | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        if offered & required != required {
            return Err(io::Error::other(format!(
                "daemon offers features {offered:#x}, lacking VERSION_1 or PROTOCOL_FEATURES"
            )));
        }
        let mut features = required | (offered & (1u64 << VIRTIO_RING_F_INDIRECT_DESC));
        if opts.event_idx {
            features |= offered & (1u64 << VIRTIO_RING_F_EVENT_IDX);
        }
        vu.set_features(features)
            .map_err(|e| vu_err("SET_FEATURES", e))?;
        let offered_proto = vu
            .get_protocol_features()
            .map_err(|e| vu_err("GET_PROTOCOL_FEATURES", e))?;
        let proto = offered_proto
            & (VhostUserProtocolFeatures::CONFIG
                | VhostUserProtocolFeatures::MQ
                | VhostUserProtocolFeatures::REPLY_ACK);
        vu.set_protocol_features(proto)
            .map_err(|e| vu_err("SET_PROTOCOL_FEATURES", e))?;
        if proto.contains(VhostUserProtocolFeatures::REPLY_ACK) {
            // Every message is acknowledged: when setup returns, the daemon
            // has applied all of it.
            vu.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        }
        if proto.contains(VhostUserProtocolFeatures::MQ) {
            let n = vu.get_queue_num().map_err(|e| vu_err("GET_QUEUE_NUM", e))?;
            if n < vrings as u64 {
                return Err(io::Error::other(format!(
                    "daemon has {n} queues, {vrings} wanted"
                )));
            }
        }

        // Guest memory.
        let stride = Self::queue_stride(&opts);
        let mem_size = stride * vrings as u64;
        let file = memfd(mem_size)?;
        let mem = GuestMemoryMmap::<()>::from_ranges_with_files(&[(
            GuestAddress(GUEST_BASE),
            mem_size as usize,
            Some(FileOffset::new(file, 0)),
        )])
        .map_err(|e| io::Error::other(format!("mapping guest memory: {e}")))?;
        let region = mem
            .find_region(GuestAddress(GUEST_BASE))
            .ok_or_else(|| io::Error::other("guest memory has no region"))?;
        let region = VhostUserMemoryRegionInfo::from_guest_region(region)
            .map_err(|e| vu_err("memory region", e))?;
        let host = region.userspace_addr;
        vu.set_mem_table(&[region])
            .map_err(|e| vu_err("SET_MEM_TABLE", e))?;

        let mut queues = Vec::with_capacity(vrings);
        for q in 0..vrings {
            let base = GUEST_BASE + q as u64 * stride;
            let n = u64::from(opts.queue_size);
            let (desc, avail, used) = (base, base + 16 * n, base + 0x5000);
            debug_assert!(avail + 6 + 2 * n <= used && used + 6 + 8 * n <= base + RING_BYTES);
            let kick = EventFd::new(libc::EFD_NONBLOCK)?;
            let call = EventFd::new(libc::EFD_NONBLOCK)?;
            setup_vring(
                &mut vu,
                q,
                opts.queue_size,
                host,
                (desc, avail, used),
                &kick,
                &call,
            )?;
            queues.push(Mutex::new(Vq {
                size: opts.queue_size,
                desc,
                avail,
                used,
                scratch: base + RING_BYTES,
                slots_base: base + RING_BYTES + SCRATCH_BYTES,
                kick,
                call,
                avail_idx: 0,
                last_used: 0,
                free_descs: (0..opts.queue_size).rev().collect(),
                free_slots: (0..opts.slots).rev().collect(),
                inflight: HashMap::new(),
                raw_inflight: 0,
                kicks: 0,
            }));
        }
        Ok(Self {
            socket: socket.to_path_buf(),
            host,
            vu: Mutex::new(vu),
            mem,
            mem_size,
            queues,
            features,
            protocol_features: proto,
            opts,
        })
    }

    fn queue_stride(opts: &Options) -> u64 {
        let bytes = RING_BYTES + SCRATCH_BYTES + (opts.slots * opts.slot_bytes) as u64;
        bytes.next_multiple_of(0x1000)
    }

    /// The negotiated virtio features.
    pub fn features(&self) -> u64 {
        self.features
    }

    /// Whether EVENT_IDX was negotiated.
    pub fn event_idx(&self) -> bool {
        self.features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0
    }

    /// The negotiated vhost-user protocol features.
    pub fn protocol_features(&self) -> VhostUserProtocolFeatures {
        self.protocol_features
    }

    /// Number of request queues set up.
    pub fn num_queues(&self) -> usize {
        self.opts.queues
    }

    /// Index of the event queue, if it was set up.
    pub fn event_queue(&self) -> Option<usize> {
        self.opts.event_queue.then_some(self.opts.queues)
    }

    /// Posts one 16-byte device-writable buffer on the event queue (in its
    /// scratch area, one place per descriptor); returns its head.
    pub fn post_event_buffer(&self) -> io::Result<u16> {
        let eq = self
            .event_queue()
            .ok_or_else(|| io::Error::other("no event queue (Options::event_queue)"))?;
        let mut vq = self.q(eq);
        let Some(&head) = vq.free_descs.last() else {
            return Err(io::Error::other("event queue full"));
        };
        let addr = vq.scratch + Event::SIZE as u64 * u64::from(head);
        self.write(addr, &[0; Event::SIZE])?;
        let b = [Buf::w(addr, Event::SIZE as u32)];
        self.submit_locked(&mut vq, &b, None, addr, Event::SIZE as u32, 0)
    }

    /// Waits for the next used event buffer and decodes it (`None` if the
    /// device returned it without an event).
    pub fn next_event(&self, timeout: Duration) -> io::Result<Option<Event>> {
        let eq = self
            .event_queue()
            .ok_or_else(|| io::Error::other("no event queue (Options::event_queue)"))?;
        let mut vq = self.q(eq);
        let used = self.wait_used_locked(&mut vq, timeout)?;
        let f = u16::try_from(used.id)
            .ok()
            .and_then(|h| vq.inflight.remove(&h))
            .ok_or_else(|| io::Error::other(format!("unknown event head {}", used.id)))?;
        vq.free_descs.extend(f.descs);
        drop(vq);
        if (used.len as usize) < Event::SIZE {
            return Ok(None);
        }
        let b = self.read(f.resp_addr, Event::SIZE)?;
        Ok(Some(Event::from_bytes(b[..].try_into().expect("16 bytes"))))
    }

    /// The options this frontend was made with.
    pub fn options(&self) -> &Options {
        &self.opts
    }

    /// `[start, end)` of guest memory (guest-physical).
    pub fn guest_range(&self) -> (u64, u64) {
        (GUEST_BASE, GUEST_BASE + self.mem_size)
    }

    /// The guest memory, for reading and writing buffers directly.
    pub fn memory(&self) -> &GuestMemoryMmap<()> {
        &self.mem
    }

    /// The [`SCRATCH_BYTES`] scratch area of `queue` (guest-physical), free
    /// for hand-made requests.
    pub fn scratch(&self, queue: usize) -> u64 {
        self.q(queue).scratch
    }

    /// Writes bytes into guest memory.
    pub fn write(&self, addr: u64, bytes: &[u8]) -> io::Result<()> {
        self.mem
            .write_slice(bytes, GuestAddress(addr))
            .map_err(mem_err)
    }

    /// Reads bytes from guest memory.
    pub fn read(&self, addr: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut b = vec![0u8; len];
        self.mem
            .read_slice(&mut b, GuestAddress(addr))
            .map_err(mem_err)?;
        Ok(b)
    }

    /// Writes a descriptor table (e.g. an indirect one) at `addr`.
    pub fn write_descs(&self, addr: u64, descs: &[RawDesc]) -> io::Result<()> {
        let bytes: Vec<u8> = descs.iter().flat_map(|d| d.to_bytes()).collect();
        self.write(addr, &bytes)
    }

    /// The config space, read with GET_CONFIG.
    pub fn config(&self) -> io::Result<DeviceConfig> {
        let b = self.config_bytes(0, CONFIG_SIZE as u32)?;
        let b: [u8; CONFIG_SIZE] = b
            .try_into()
            .map_err(|_| io::Error::other("short config reply"))?;
        Ok(DeviceConfig::from_bytes(&b))
    }

    /// `size` bytes of config space from `offset`.
    pub fn config_bytes(&self, offset: u32, size: u32) -> io::Result<Vec<u8>> {
        let mut vu = self.vu.lock().unwrap();
        let _watchdog = Watchdog::new(vu.as_raw_fd(), SOCKET_TIMEOUT);
        let buf = vec![0u8; size as usize];
        let (_, data) = vu
            .get_config(offset, size, VhostUserConfigFlags::empty(), &buf)
            .map_err(|e| vu_err("GET_CONFIG", e))?;
        Ok(data)
    }

    fn q(&self, queue: usize) -> MutexGuard<'_, Vq> {
        self.queues[queue].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Places `head` in the avail ring, publishes it and kicks if the device
    /// wants a kick.
    fn publish(&self, vq: &mut Vq, head: u16) -> io::Result<()> {
        let slot = u64::from(vq.avail_idx % vq.size);
        self.mem
            .store(
                head.to_le(),
                GuestAddress(vq.avail + 4 + 2 * slot),
                Ordering::Relaxed,
            )
            .map_err(mem_err)?;
        let old = vq.avail_idx;
        vq.avail_idx = vq.avail_idx.wrapping_add(1);
        self.set_avail_idx_locked(vq, vq.avail_idx, old)
    }

    fn set_avail_idx_locked(&self, vq: &mut Vq, new: u16, old: u16) -> io::Result<()> {
        self.mem
            .store(new.to_le(), GuestAddress(vq.avail + 2), Ordering::Release)
            .map_err(mem_err)?;
        // The store of avail->idx must be visible before we read the
        // device's suppression state (as virtio_mb in Linux).
        fence(Ordering::SeqCst);
        let kick = if self.event_idx() {
            let avail_event: u16 = self
                .mem
                .load(
                    GuestAddress(vq.used + 4 + 8 * u64::from(vq.size)),
                    Ordering::Acquire,
                )
                .map_err(mem_err)?;
            need_event(u16::from_le(avail_event), new, old)
        } else {
            let flags: u16 = self
                .mem
                .load(GuestAddress(vq.used), Ordering::Acquire)
                .map_err(mem_err)?;
            u16::from_le(flags) & 1 == 0
        };
        if kick {
            vq.kicks += 1;
            vq.kick.write(1)?;
        }
        Ok(())
    }

    /// Kicks queue `queue` unconditionally.
    pub fn kick(&self, queue: usize) -> io::Result<()> {
        self.q(queue).kick.write(1)
    }

    /// Makes the daemon's next interrupt on `queue` fail: fills the call
    /// eventfd's counter to its maximum, so the daemon's write to it fails
    /// with EAGAIN (as with a frontend that never reads its interrupts).
    /// Waiting for a used entry on `queue` resets it.
    pub fn jam_call(&self, queue: usize) -> io::Result<()> {
        self.q(queue).call.write(u64::MAX - 1)
    }

    /// Kicks sent on `queue` so far (after notification suppression).
    pub fn kicks(&self, queue: usize) -> u64 {
        self.q(queue).kicks
    }

    /// Sends one chain of buffers; returns its head descriptor index.
    pub fn submit(&self, queue: usize, bufs: &[Buf]) -> io::Result<u16> {
        let mut vq = self.q(queue);
        self.submit_locked(&mut vq, bufs, None, 0, 0, 0)
    }

    fn submit_locked(
        &self,
        vq: &mut Vq,
        bufs: &[Buf],
        slot: Option<usize>,
        resp_addr: u64,
        resp_len: u32,
        request_id: u64,
    ) -> io::Result<u16> {
        if bufs.is_empty() || bufs.len() > vq.free_descs.len() {
            return Err(io::Error::other(format!(
                "chain of {} descriptors, {} free",
                bufs.len(),
                vq.free_descs.len()
            )));
        }
        let descs: Vec<u16> = (0..bufs.len())
            .map(|_| vq.free_descs.pop().expect("checked"))
            .collect();
        for (i, b) in bufs.iter().enumerate() {
            let mut flags = if b.write { F_WRITE } else { 0 };
            let next = descs.get(i + 1).copied().unwrap_or(0);
            if i + 1 < bufs.len() {
                flags |= F_NEXT;
            }
            let d = RawDesc::new(b.addr, b.len, flags, next);
            self.write(vq.desc + 16 * u64::from(descs[i]), &d.to_bytes())?;
        }
        let head = descs[0];
        vq.inflight.insert(
            head,
            InFlight {
                descs,
                slot,
                resp_addr,
                resp_len,
                request_id,
            },
        );
        self.publish(vq, head)?;
        Ok(head)
    }

    /// Writes `descs` at descriptor-table indices `0..descs.len()` exactly as
    /// given and makes `head` available. For hostile chains: nothing is
    /// checked. Fails if regular chains are in flight on the queue (their
    /// descriptors would be overwritten).
    pub fn submit_raw(&self, queue: usize, descs: &[RawDesc], head: u16) -> io::Result<()> {
        let mut vq = self.q(queue);
        if !vq.inflight.is_empty() {
            return Err(io::Error::other(
                "submit_raw with regular requests in flight",
            ));
        }
        if descs.len() > usize::from(vq.size) {
            return Err(io::Error::other("more descriptors than the table holds"));
        }
        let bytes: Vec<u8> = descs.iter().flat_map(|d| d.to_bytes()).collect();
        self.write(vq.desc, &bytes)?;
        vq.raw_inflight += 1;
        self.publish(&mut vq, head)
    }

    /// Stores `idx` as avail->idx (without filling ring entries) and kicks:
    /// for an avail index that jumps ahead. Our shadow index follows it.
    pub fn set_avail_idx_raw(&self, queue: usize, idx: u16) -> io::Result<()> {
        let mut vq = self.q(queue);
        let old = vq.avail_idx;
        vq.avail_idx = idx;
        self.set_avail_idx_locked(&mut vq, idx, old)?;
        vq.kick.write(1)
    }

    /// The device's used->idx of `queue`, read from guest memory (every
    /// used-ring write the device made shows here).
    pub fn used_idx(&self, queue: usize) -> io::Result<u16> {
        let vq = self.q(queue);
        let idx: u16 = self
            .mem
            .load(GuestAddress(vq.used + 2), Ordering::Acquire)
            .map_err(mem_err)?;
        Ok(u16::from_le(idx))
    }

    /// Sends GET_VRING_BASE for `queue` (QEMU's "stop the ring") and returns
    /// the device's next avail index.
    pub fn get_vring_base(&self, queue: usize) -> io::Result<u32> {
        let vu = self.vu.lock().unwrap_or_else(|e| e.into_inner());
        vu.get_vring_base(queue)
            .map_err(|e| vu_err("GET_VRING_BASE", e))
    }

    /// Starts `queue` again after [`Frontend::get_vring_base`], as a guest
    /// that resets its device: the rings are zeroed, everything in flight
    /// is forgotten, and the ring is set up anew from index 0.
    pub fn restart_queue(&self, queue: usize) -> io::Result<()> {
        let mut vq = self.q(queue);
        self.write(vq.desc, &vec![0; RING_BYTES as usize])?;
        vq.avail_idx = 0;
        vq.last_used = 0;
        vq.free_descs = (0..vq.size).rev().collect();
        vq.free_slots = (0..self.opts.slots).rev().collect();
        vq.inflight.clear();
        vq.raw_inflight = 0;
        let _ = vq.call.read();
        let mut vu = self.vu.lock().unwrap_or_else(|e| e.into_inner());
        setup_vring(
            &mut vu,
            queue,
            vq.size,
            self.host,
            (vq.desc, vq.avail, vq.used),
            &vq.kick,
            &vq.call,
        )
    }

    /// Number of chains (regular and raw) submitted and not yet used.
    pub fn in_flight(&self, queue: usize) -> usize {
        let vq = self.q(queue);
        vq.inflight.len() + vq.raw_inflight
    }

    /// Takes the next used entry, if there is one, without waiting.
    fn pop_used(&self, vq: &mut Vq) -> io::Result<Option<Used>> {
        let idx: u16 = self
            .mem
            .load(GuestAddress(vq.used + 2), Ordering::Acquire)
            .map_err(mem_err)?;
        if u16::from_le(idx) == vq.last_used {
            return Ok(None);
        }
        let e = vq.used + 4 + 8 * u64::from(vq.last_used % vq.size);
        let id: u32 = self.mem.read_obj(GuestAddress(e)).map_err(mem_err)?;
        let len: u32 = self.mem.read_obj(GuestAddress(e + 4)).map_err(mem_err)?;
        vq.last_used = vq.last_used.wrapping_add(1);
        let used = Used {
            id: u32::from_le(id),
            len: u32::from_le(len),
        };
        Ok(Some(used))
    }

    /// Waits up to `timeout` for the next used entry of `queue`. Descriptors
    /// of a regular chain are freed; its slot stays taken until
    /// [`Frontend::next_response`] reads it (use that for requests sent
    /// with [`Frontend::start`]).
    pub fn wait_used(&self, queue: usize, timeout: Duration) -> io::Result<Used> {
        let mut vq = self.q(queue);
        let used = self.wait_used_locked(&mut vq, timeout)?;
        if let Some(f) = u16::try_from(used.id)
            .ok()
            .and_then(|h| vq.inflight.remove(&h))
        {
            vq.free_descs.extend(f.descs);
            if let Some(s) = f.slot {
                vq.free_slots.push(s);
            }
        } else {
            vq.raw_inflight = vq.raw_inflight.saturating_sub(1);
        }
        Ok(used)
    }

    fn wait_used_locked(&self, vq: &mut Vq, timeout: Duration) -> io::Result<Used> {
        let start = Instant::now();
        let deadline = start + timeout;
        while !self.opts.spin.is_zero() && start.elapsed() < self.opts.spin {
            if let Some(u) = self.pop_used(vq)? {
                return Ok(u);
            }
            std::hint::spin_loop();
        }
        loop {
            if self.event_idx() {
                // Ask for a call as soon as the next entry is used.
                self.mem
                    .store(
                        vq.last_used.to_le(),
                        GuestAddress(vq.avail + 4 + 2 * u64::from(vq.size)),
                        Ordering::Relaxed,
                    )
                    .map_err(mem_err)?;
                fence(Ordering::SeqCst);
            }
            if let Some(u) = self.pop_used(vq)? {
                return Ok(u);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no used entry before the deadline",
                ));
            }
            let ms = (deadline - now).as_millis().clamp(1, i32::MAX as u128) as i32;
            let mut pfd = libc::pollfd {
                fd: vq.call.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd for the duration of the call.
            let r = unsafe { libc::poll(&raw mut pfd, 1, ms) };
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            // Consume the call (EAGAIN when it was not signalled).
            let _ = vq.call.read();
        }
    }

    /// Waits until no used entry arrives on `queue` for `quiet`, and returns
    /// how many arrived (all consumed).
    pub fn drain(&self, queue: usize, quiet: Duration) -> io::Result<usize> {
        let mut n = 0;
        loop {
            match self.wait_used(queue, quiet) {
                Ok(_) => n += 1,
                Err(e) if e.kind() == io::ErrorKind::TimedOut => return Ok(n),
                Err(e) => return Err(e),
            }
        }
    }

    /// Sends a request with header `hdr` and `inputs` (already `num_samples *
    /// in_dim` values, or any other count for malformed requests) and room
    /// for `out_values` output values; returns the head index. Slots are
    /// taken from the queue's slot area; at most [`Options::slots`] requests
    /// may be in flight.
    pub fn start(
        &self,
        queue: usize,
        hdr: &RequestHeader,
        inputs: &[i32],
        out_values: usize,
    ) -> io::Result<u16> {
        let req_len = RequestHeader::SIZE + 4 * inputs.len();
        let resp_len = ResponseHeader::SIZE + 4 * out_values;
        let req_room = req_len.next_multiple_of(64);
        if req_room + resp_len > self.opts.slot_bytes {
            return Err(io::Error::other(format!(
                "request of {req_len} + response of {resp_len} bytes exceed a slot of {}",
                self.opts.slot_bytes
            )));
        }
        let mut vq = self.q(queue);
        let Some(slot) = vq.free_slots.pop() else {
            return Err(io::Error::other("all slots are in flight"));
        };
        let addr = vq.slots_base + (slot * self.opts.slot_bytes) as u64;
        let mut b = Vec::with_capacity(req_len);
        b.extend_from_slice(&hdr.to_bytes());
        for v in inputs {
            b.extend_from_slice(&v.to_le_bytes());
        }
        let resp_addr = addr + req_room as u64;
        let sent = self.write(addr, &b).and_then(|()| {
            self.submit_locked(
                &mut vq,
                &[
                    Buf::r(addr, req_len as u32),
                    Buf::w(resp_addr, resp_len as u32),
                ],
                Some(slot),
                resp_addr,
                resp_len as u32,
                hdr.id,
            )
        });
        if sent.is_err() {
            vq.free_slots.push(slot);
        }
        sent
    }

    /// Waits for the next response of a request sent with
    /// [`Frontend::start`] on `queue` and decodes it.
    pub fn next_response(&self, queue: usize, timeout: Duration) -> io::Result<Response> {
        let mut vq = self.q(queue);
        let used = self.wait_used_locked(&mut vq, timeout)?;
        let head = u16::try_from(used.id)
            .ok()
            .filter(|h| vq.inflight.contains_key(h))
            .ok_or_else(|| io::Error::other(format!("device returned unknown head {}", used.id)))?;
        let f = vq.inflight.remove(&head).expect("checked");
        vq.free_descs.extend(f.descs.iter().copied());
        if let Some(s) = f.slot {
            vq.free_slots.push(s);
        }
        drop(vq);
        if used.len > f.resp_len {
            return Err(io::Error::other(format!(
                "device claims {} bytes written into a {}-byte response buffer",
                used.len, f.resp_len
            )));
        }
        let bytes = self.read(f.resp_addr, used.len as usize)?;
        let header = bytes
            .get(..ResponseHeader::SIZE)
            .map(|h| ResponseHeader::from_bytes(h.try_into().expect("24 bytes")));
        let mut outputs = Vec::new();
        if let Some(h) = &header {
            let n = (bytes.len() - ResponseHeader::SIZE) / 4;
            let n = n.min(h.payload_len() / 4);
            outputs = vec![0; n];
            protocol::decode_values(&bytes[ResponseHeader::SIZE..], &mut outputs);
        }
        let payload = bytes.get(ResponseHeader::SIZE..).unwrap_or(&[]).to_vec();
        Ok(Response {
            head,
            used_len: used.len,
            header,
            outputs,
            payload,
            request_id: f.request_id,
        })
    }

    /// One well-formed OP_PREDICT request of `n` samples (`inputs.len() / n`
    /// wide) on `queue`, with exactly the room the outputs of `out_dim`
    /// need; returns the response header and the outputs.
    pub fn predict_dims(
        &self,
        queue: usize,
        id: u64,
        inputs: &[i32],
        n: u32,
        out_dim: usize,
    ) -> io::Result<(ResponseHeader, Vec<i32>)> {
        let in_dim = (inputs.len() as u32).checked_div(n).unwrap_or(0);
        let hdr = RequestHeader {
            opcode: OP_PREDICT,
            flags: 0,
            id,
            num_samples: n,
            in_dim,
        };
        self.start(queue, &hdr, inputs, n as usize * out_dim)?;
        let r = self.next_response(queue, TIMEOUT)?;
        let h = r
            .header
            .ok_or_else(|| io::Error::other("no response header written"))?;
        Ok((h, r.outputs))
    }

    /// One well-formed OP_PREDICT request of `n` samples; the output width
    /// is taken from config space (one GET_CONFIG round trip). Returns the
    /// response header and the outputs.
    pub fn predict(
        &self,
        queue: usize,
        inputs: &[i32],
        n: u32,
    ) -> io::Result<(ResponseHeader, Vec<i32>)> {
        let out_dim = self.config()?.output_dim() as usize;
        self.predict_dims(queue, 0x5eed_0000 + u64::from(n), inputs, n, out_dim)
    }

    /// One `GET_MODEL` request on `queue` for `length` bytes at `offset` of
    /// `generation` (0: the one served), with room for them; returns the
    /// response header and, on success, the chunk header and its bytes.
    pub fn get_model(
        &self,
        queue: usize,
        generation: u32,
        offset: u32,
        length: u32,
    ) -> io::Result<ModelAnswer> {
        let hdr = RequestHeader {
            opcode: OP_GET_MODEL,
            flags: 0,
            id: 0x6d6f_6465_6c00 + u64::from(offset),
            num_samples: 0,
            in_dim: 0,
        };
        // The request body as the four little-endian words `start` sends.
        let body = ModelRequest {
            generation,
            offset,
            length,
            reserved: 0,
        }
        .to_bytes();
        let words: Vec<i32> = body
            .chunks_exact(4)
            .map(|w| i32::from_le_bytes([w[0], w[1], w[2], w[3]]))
            .collect();
        let room = (ModelChunk::SIZE + length as usize).div_ceil(4);
        self.start(queue, &hdr, &words, room)?;
        let r = self.next_response(queue, TIMEOUT)?;
        let h = r
            .header
            .ok_or_else(|| io::Error::other("no response header written"))?;
        if h.status != protocol::STATUS_OK {
            return Ok((h, None));
        }
        let chunk = r
            .payload
            .get(..ModelChunk::SIZE)
            .map(|c| ModelChunk::from_bytes(c.try_into().expect("16 bytes")))
            .ok_or_else(|| io::Error::other("no chunk header written"))?;
        let bytes = r.payload[ModelChunk::SIZE..].to_vec();
        if bytes.len() != chunk.length as usize {
            return Err(io::Error::other(format!(
                "chunk header says {} bytes, {} were written",
                chunk.length,
                bytes.len()
            )));
        }
        Ok((h, Some((chunk, bytes))))
    }

    /// One OP_NULL request of `n` samples of `in_dim` zeros.
    pub fn null(&self, queue: usize, n: u32, in_dim: u32) -> io::Result<ResponseHeader> {
        let hdr = RequestHeader {
            opcode: OP_NULL,
            flags: 0,
            id: 0x4e55_4c4c,
            num_samples: n,
            in_dim,
        };
        let inputs = vec![0; n as usize * in_dim as usize];
        self.start(queue, &hdr, &inputs, 0)?;
        self.next_response(queue, TIMEOUT)?
            .header
            .ok_or_else(|| io::Error::other("no response header written"))
    }
}
