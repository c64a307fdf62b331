// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The journal: the vhost-user state QEMU has set up on the current
//! connection, kept so that a new worker can be brought to the same state
//! without QEMU noticing.
//!
//! What is journaled: owner, virtio and protocol features, the memory table
//! (with duplicated region descriptors), and per vring its size, addresses,
//! base, kick/call/err descriptors and enable state; the last message of
//! each other setter (backend channel, log, config, status). A vring is
//! *started* from its kick until QEMU stops it with GET_VRING_BASE.
//!
//! Replay resumes every started vring at the used index found in guest
//! memory: the worker completes the requests of one queue in order
//! (`vhu_nn.rs`), so every request between used and avail has not been
//! answered and is taken again by the new worker. The used index is the one
//! value read from guest memory; any value is accepted (a ring the guest
//! corrupted is the worker's problem, as before the restart).

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};

use super::wire::{
    code, Msg, FLAG_NEED_REPLY, PROTOCOL_F_LOG_SHMFD, PROTOCOL_F_REPLY_ACK, VERSION_1,
};

/// Size of one memory region in SET_MEM_TABLE (guest address, size, user
/// address, mmap offset: four le64).
const REGION_SIZE: usize = 32;

/// A guest memory region, to find the used ring in.
#[derive(Debug)]
struct Region {
    guest_addr: u64,
    size: u64,
    user_addr: u64,
    mmap_offset: u64,
    fd: OwnedFd,
}

/// What is known of one vring.
#[derive(Debug, Default)]
struct Vring {
    num: Option<Msg>,
    addr: Option<Msg>,
    base: Option<Msg>,
    kick: Option<Msg>,
    call: Option<Msg>,
    err: Option<Msg>,
    enable: Option<Msg>,
    started: bool,
}

/// The journal of one QEMU connection.
#[derive(Debug, Default)]
pub struct Journal {
    owner: bool,
    features: Option<Msg>,
    protocol_features: Option<Msg>,
    /// SET_MEM_TABLE and the ADD/REM_MEM_REG after it, in order.
    mem: Vec<Msg>,
    regions: Vec<Region>,
    vrings: BTreeMap<u32, Vring>,
    /// The last message of each other state-setting request.
    other: BTreeMap<u32, Msg>,
}

/// A started vring at replay time.
pub struct Started<'a> {
    /// Vring index.
    pub index: u32,
    /// Where it resumes (`None`: the used index could not be read).
    pub resume_at: Option<u16>,
    /// Its kick eventfd.
    pub kick: Option<BorrowedFd<'a>>,
    /// Its call eventfd.
    pub call: Option<BorrowedFd<'a>>,
}

impl Journal {
    /// Whether nothing has been set up yet.
    pub fn is_empty(&self) -> bool {
        !self.owner && self.features.is_none() && self.mem.is_empty() && self.vrings.is_empty()
    }

    /// Acked protocol features (0 before SET_PROTOCOL_FEATURES).
    pub fn protocol_features(&self) -> u64 {
        self.protocol_features
            .as_ref()
            .and_then(|m| m.u64_at(0))
            .unwrap_or(0)
    }

    /// Whether the backend answers `msg`: the requests that always have a
    /// reply, and any request asking for an acknowledgement once REPLY_ACK
    /// is negotiated.
    pub fn expects_reply(&self, msg: &Msg) -> bool {
        let pf = self.protocol_features();
        match msg.code {
            code::GET_FEATURES
            | code::GET_PROTOCOL_FEATURES
            | code::GET_VRING_BASE
            | code::GET_QUEUE_NUM
            | code::GET_CONFIG
            | code::GET_INFLIGHT_FD
            | code::GET_MAX_MEM_SLOTS
            | code::GET_STATUS
            | code::GET_SHARED_OBJECT
            | code::CHECK_DEVICE_STATE
            | code::SET_DEVICE_STATE_FD
            | code::POSTCOPY_ADVISE => true,
            code::SET_LOG_BASE if pf & PROTOCOL_F_LOG_SHMFD != 0 => true,
            _ => msg.flags & FLAG_NEED_REPLY != 0 && pf & PROTOCOL_F_REPLY_ACK != 0,
        }
    }

    /// Records a request QEMU sent (before it is relayed).
    pub fn record(&mut self, msg: &Msg) -> io::Result<()> {
        let keep = || msg.try_clone();
        match msg.code {
            code::SET_OWNER => self.owner = true,
            code::RESET_OWNER | code::RESET_DEVICE => *self = Self::default(),
            code::SET_FEATURES => self.features = Some(keep()?),
            code::SET_PROTOCOL_FEATURES => self.protocol_features = Some(keep()?),
            code::SET_MEM_TABLE => {
                self.regions = table_regions(msg)?;
                self.mem = vec![keep()?];
            }
            code::ADD_MEM_REG => {
                if let (Some(r), Some(fd)) = (region_at(msg, 8), msg.fds.first()) {
                    let (guest_addr, size, user_addr, mmap_offset) = r;
                    self.regions.push(Region {
                        guest_addr,
                        size,
                        user_addr,
                        mmap_offset,
                        fd: fd.try_clone()?,
                    });
                }
                self.mem.push(keep()?);
            }
            code::REM_MEM_REG => {
                if let Some((guest_addr, size, _, _)) = region_at(msg, 8) {
                    self.regions
                        .retain(|r| !(r.guest_addr == guest_addr && r.size == size));
                }
                self.mem.push(keep()?);
            }
            code::SET_VRING_NUM
            | code::SET_VRING_ADDR
            | code::SET_VRING_BASE
            | code::SET_VRING_ENABLE => {
                if let Some(index) = msg.u32_at(0) {
                    let v = self.vrings.entry(index).or_default();
                    let slot = match msg.code {
                        code::SET_VRING_NUM => &mut v.num,
                        code::SET_VRING_ADDR => &mut v.addr,
                        code::SET_VRING_BASE => &mut v.base,
                        _ => &mut v.enable,
                    };
                    *slot = Some(keep()?);
                }
            }
            code::SET_VRING_KICK | code::SET_VRING_CALL | code::SET_VRING_ERR => {
                if let Some(word) = msg.u64_at(0) {
                    let v = self.vrings.entry((word & 0xff) as u32).or_default();
                    match msg.code {
                        code::SET_VRING_KICK => {
                            v.kick = Some(keep()?);
                            v.started = true;
                        }
                        code::SET_VRING_CALL => v.call = Some(keep()?),
                        _ => v.err = Some(keep()?),
                    }
                }
            }
            code::SET_BACKEND_REQ_FD
            | code::SET_LOG_BASE
            | code::SET_LOG_FD
            | code::SET_CONFIG
            | code::SET_STATUS
            | code::SET_INFLIGHT_FD => {
                self.other.insert(msg.code, keep()?);
            }
            _ => {}
        }
        Ok(())
    }

    /// Records the backend's reply to `request`: GET_VRING_BASE stops the
    /// vring (the backend forgets its kick and call).
    pub fn record_reply(&mut self, request: &Msg) {
        if request.code == code::GET_VRING_BASE {
            if let Some(v) = request.u32_at(0).and_then(|i| self.vrings.get_mut(&i)) {
                v.started = false;
                v.kick = None;
                v.call = None;
            }
        }
    }

    /// The used index of vring `v`, read from guest memory.
    fn used_index(&self, v: &Vring) -> io::Result<u16> {
        let used = v
            .addr
            .as_ref()
            .and_then(|m| m.u64_at(16))
            .ok_or_else(|| io::Error::other("no used ring address"))?;
        let r = self
            .regions
            .iter()
            .find(|r| used >= r.user_addr && used - r.user_addr < r.size)
            .ok_or_else(|| io::Error::other(format!("used ring {used:#x} is in no region")))?;
        // The used ring starts with le16 flags, then le16 idx.
        let offset = r.mmap_offset + (used - r.user_addr) + 2;
        let mut idx = [0u8; 2];
        let n = rustix::io::pread(&r.fd, &mut idx, offset)?;
        if n != 2 {
            return Err(io::Error::other("short read of the used index"));
        }
        Ok(u16::from_le_bytes(idx))
    }

    /// The started vrings and where each resumes.
    pub fn started(&self) -> Vec<Started<'_>> {
        use std::os::fd::AsFd;
        self.vrings
            .iter()
            .filter(|(_, v)| v.started)
            .map(|(&index, v)| Started {
                index,
                resume_at: self
                    .used_index(v)
                    .map_err(|e| log::error!("vring {index}: cannot read the used index: {e}"))
                    .ok(),
                kick: v
                    .kick
                    .as_ref()
                    .and_then(|m| m.fds.first())
                    .map(|f| f.as_fd()),
                call: v
                    .call
                    .as_ref()
                    .and_then(|m| m.fds.first())
                    .map(|f| f.as_fd()),
            })
            .collect()
    }

    /// The messages that bring a new worker to the journaled state, in the
    /// order QEMU sends them, none asking for an acknowledgement. Started
    /// vrings get SET_VRING_BASE at `resume_at`.
    pub fn replay(&self, started: &[Started<'_>]) -> io::Result<Vec<Msg>> {
        let mut out = vec![
            Msg::request(code::GET_FEATURES, Vec::new()),
            Msg::request(code::GET_PROTOCOL_FEATURES, Vec::new()),
        ];
        let mut push = |m: &Msg| -> io::Result<()> {
            let mut m = m.try_clone()?;
            m.flags = VERSION_1;
            out.push(m);
            Ok(())
        };
        if let Some(m) = &self.protocol_features {
            push(m)?;
        }
        if self.owner {
            push(&Msg::request(code::SET_OWNER, Vec::new()))?;
        }
        if let Some(m) = &self.features {
            push(m)?;
        }
        for code in [
            code::SET_BACKEND_REQ_FD,
            code::SET_LOG_BASE,
            code::SET_LOG_FD,
        ] {
            if let Some(m) = self.other.get(&code) {
                push(m)?;
            }
        }
        for m in &self.mem {
            push(m)?;
        }
        for (&index, v) in &self.vrings {
            let resume = started
                .iter()
                .find(|s| s.index == index)
                .and_then(|s| s.resume_at);
            let base = match resume {
                Some(at) => {
                    let mut p = index.to_le_bytes().to_vec();
                    p.extend_from_slice(&u32::from(at).to_le_bytes());
                    Some(Msg::request(code::SET_VRING_BASE, p))
                }
                None => v.base.as_ref().map(Msg::try_clone).transpose()?,
            };
            for m in [&v.num, &base, &v.addr, &v.err, &v.call, &v.kick, &v.enable]
                .into_iter()
                .flatten()
            {
                push(m)?;
            }
        }
        for code in [code::SET_INFLIGHT_FD, code::SET_CONFIG, code::SET_STATUS] {
            if let Some(m) = self.other.get(&code) {
                push(m)?;
            }
        }
        Ok(out)
    }
}

/// The region described at byte `off` of `msg`'s payload.
fn region_at(msg: &Msg, off: usize) -> Option<(u64, u64, u64, u64)> {
    Some((
        msg.u64_at(off)?,
        msg.u64_at(off + 8)?,
        msg.u64_at(off + 16)?,
        msg.u64_at(off + 24)?,
    ))
}

/// The regions of a SET_MEM_TABLE, each with its descriptor.
fn table_regions(msg: &Msg) -> io::Result<Vec<Region>> {
    let n = msg.u32_at(0).unwrap_or(0) as usize;
    let mut out = Vec::new();
    for (i, fd) in msg.fds.iter().enumerate().take(n) {
        let Some((guest_addr, size, user_addr, mmap_offset)) = region_at(msg, 8 + i * REGION_SIZE)
        else {
            break;
        };
        out.push(Region {
            guest_addr,
            size,
            user_addr,
            mmap_offset,
            fd: fd.try_clone()?,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn state(c: u32, index: u32, value: u32) -> Msg {
        let mut p = index.to_le_bytes().to_vec();
        p.extend_from_slice(&value.to_le_bytes());
        Msg::request(c, p)
    }

    fn with_fd(c: u32, index: u64) -> Msg {
        let mut m = Msg::request(c, index.to_le_bytes().to_vec());
        m.fds.push(OwnedFd::from(tempfile::tempfile().unwrap()));
        m
    }

    /// A memory table of one region whose file holds `used_idx` at the used
    /// ring of a vring at user address 0x7000_1000.
    fn setup(used_idx: u16) -> Journal {
        let mut file = tempfile::tempfile().unwrap();
        let mut bytes = vec![0u8; 0x2000];
        bytes[0x1002..0x1004].copy_from_slice(&used_idx.to_le_bytes());
        file.write_all(&bytes).unwrap();
        let mut table = Msg::request(code::SET_MEM_TABLE, Vec::new());
        table.payload.extend_from_slice(&1u32.to_le_bytes());
        table.payload.extend_from_slice(&0u32.to_le_bytes());
        for v in [0u64, 0x2000, 0x7000_0000, 0] {
            table.payload.extend_from_slice(&v.to_le_bytes());
        }
        table.fds.push(OwnedFd::from(file));
        let mut addr = Msg::request(code::SET_VRING_ADDR, Vec::new());
        for v in [0u32, 0] {
            addr.payload.extend_from_slice(&v.to_le_bytes());
        }
        for v in [0x7000_0000u64, 0x7000_1000, 0x7000_0800, 0] {
            addr.payload.extend_from_slice(&v.to_le_bytes());
        }
        let mut j = Journal::default();
        for m in [
            Msg::request(code::SET_OWNER, Vec::new()),
            Msg::request(code::SET_FEATURES, (1u64 << 32).to_le_bytes().to_vec()),
            table,
            state(code::SET_VRING_NUM, 0, 256),
            state(code::SET_VRING_BASE, 0, 0),
            addr,
            with_fd(code::SET_VRING_CALL, 0),
            with_fd(code::SET_VRING_KICK, 0),
            state(code::SET_VRING_ENABLE, 0, 1),
        ] {
            j.record(&m).unwrap();
        }
        j
    }

    #[test]
    fn a_started_vring_resumes_at_the_used_index_in_guest_memory() {
        let j = setup(517);
        let started = j.started();
        assert_eq!(started.len(), 1);
        assert_eq!(started[0].resume_at, Some(517));
        let replay = j.replay(&started).unwrap();
        let codes: Vec<u32> = replay.iter().map(|m| m.code).collect();
        assert_eq!(
            codes,
            [
                code::GET_FEATURES,
                code::GET_PROTOCOL_FEATURES,
                code::SET_OWNER,
                code::SET_FEATURES,
                code::SET_MEM_TABLE,
                code::SET_VRING_NUM,
                code::SET_VRING_BASE,
                code::SET_VRING_ADDR,
                code::SET_VRING_CALL,
                code::SET_VRING_KICK,
                code::SET_VRING_ENABLE,
            ]
        );
        let base = &replay[6];
        assert_eq!((base.u32_at(0), base.u32_at(1)), (Some(0), Some(517)));
        assert_eq!(
            replay[4].fds.len(),
            1,
            "the memory table keeps its descriptor"
        );
        assert!(replay.iter().all(|m| m.flags & FLAG_NEED_REPLY == 0));
    }

    #[test]
    fn a_stopped_vring_is_not_resumed_and_keeps_its_base() {
        let mut j = setup(9);
        j.record(&state(code::SET_VRING_BASE, 0, 4)).unwrap();
        j.record_reply(&state(code::GET_VRING_BASE, 0, 0));
        assert!(j.started().is_empty());
        let replay = j.replay(&[]).unwrap();
        assert!(!replay.iter().any(|m| m.code == code::SET_VRING_KICK));
        let base = replay
            .iter()
            .find(|m| m.code == code::SET_VRING_BASE)
            .unwrap();
        assert_eq!(base.u32_at(1), Some(4));
    }

    #[test]
    fn replies_follow_the_negotiated_protocol_features() {
        let mut j = Journal::default();
        let mut ack = Msg::request(code::SET_VRING_NUM, vec![0; 8]);
        ack.flags |= FLAG_NEED_REPLY;
        assert!(!j.expects_reply(&ack), "no REPLY_ACK yet");
        assert!(j.expects_reply(&Msg::request(code::GET_CONFIG, vec![0; 12])));
        j.record(&Msg::request(
            code::SET_PROTOCOL_FEATURES,
            PROTOCOL_F_REPLY_ACK.to_le_bytes().to_vec(),
        ))
        .unwrap();
        assert!(j.expects_reply(&ack));
        assert!(!j.expects_reply(&Msg::request(code::SET_VRING_NUM, vec![0; 8])));
    }

    #[test]
    fn a_used_ring_outside_guest_memory_resumes_nowhere() {
        let mut j = setup(3);
        let mut addr = Msg::request(code::SET_VRING_ADDR, vec![0; 8]);
        for v in [0u64, 0x1234_0000, 0, 0] {
            addr.payload.extend_from_slice(&v.to_le_bytes());
        }
        j.record(&addr).unwrap();
        assert_eq!(j.started()[0].resume_at, None);
    }
}
