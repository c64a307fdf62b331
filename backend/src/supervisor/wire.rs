// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! vhost-user message framing, as the supervisor relays it: a 12-byte header
//! (request code, flags, payload size, all le32), the payload, and the file
//! descriptors sent with the header (SCM_RIGHTS). Nothing here interprets a
//! payload; [`super::journal`] reads the few it journals.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;

use rustix::net::{
    recvmsg, sendmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

/// Size of the message header.
pub const HEADER_SIZE: usize = 12;
/// Largest payload relayed. The biggest vhost-user message this device sees
/// is a memory table of 8 regions (264 bytes) or a config read (12 + 256).
pub const MAX_PAYLOAD: usize = 64 * 1024;
/// Most file descriptors one message may carry (a memory table has 8).
pub const MAX_FDS: usize = 32;

/// Header flag: the protocol version every message carries.
pub const VERSION_1: u32 = 0x1;
/// Header flag: this message is a reply.
pub const FLAG_REPLY: u32 = 0x4;
/// Header flag: the sender wants an acknowledgement (REPLY_ACK).
pub const FLAG_NEED_REPLY: u32 = 0x8;

/// Request codes the supervisor acts on (the vhost-user specification's
/// numbering; every other code is relayed untouched).
pub mod code {
    pub const GET_FEATURES: u32 = 1;
    pub const SET_FEATURES: u32 = 2;
    pub const SET_OWNER: u32 = 3;
    pub const RESET_OWNER: u32 = 4;
    pub const SET_MEM_TABLE: u32 = 5;
    pub const SET_LOG_BASE: u32 = 6;
    pub const SET_LOG_FD: u32 = 7;
    pub const SET_VRING_NUM: u32 = 8;
    pub const SET_VRING_ADDR: u32 = 9;
    pub const SET_VRING_BASE: u32 = 10;
    pub const GET_VRING_BASE: u32 = 11;
    pub const SET_VRING_KICK: u32 = 12;
    pub const SET_VRING_CALL: u32 = 13;
    pub const SET_VRING_ERR: u32 = 14;
    pub const GET_PROTOCOL_FEATURES: u32 = 15;
    pub const SET_PROTOCOL_FEATURES: u32 = 16;
    pub const GET_QUEUE_NUM: u32 = 17;
    pub const SET_VRING_ENABLE: u32 = 18;
    pub const SET_BACKEND_REQ_FD: u32 = 21;
    pub const GET_CONFIG: u32 = 24;
    pub const SET_CONFIG: u32 = 25;
    pub const POSTCOPY_ADVISE: u32 = 28;
    pub const GET_INFLIGHT_FD: u32 = 31;
    pub const SET_INFLIGHT_FD: u32 = 32;
    pub const RESET_DEVICE: u32 = 34;
    pub const GET_MAX_MEM_SLOTS: u32 = 36;
    pub const ADD_MEM_REG: u32 = 37;
    pub const REM_MEM_REG: u32 = 38;
    pub const SET_STATUS: u32 = 39;
    pub const GET_STATUS: u32 = 40;
    pub const GET_SHARED_OBJECT: u32 = 41;
    pub const SET_DEVICE_STATE_FD: u32 = 42;
    pub const CHECK_DEVICE_STATE: u32 = 43;
}

/// Protocol feature bit of REPLY_ACK.
pub const PROTOCOL_F_REPLY_ACK: u64 = 1 << 3;
/// Protocol feature bit of LOG_SHMFD (SET_LOG_BASE then has a reply).
pub const PROTOCOL_F_LOG_SHMFD: u64 = 1 << 1;

/// One vhost-user message.
#[derive(Debug)]
pub struct Msg {
    /// Request code.
    pub code: u32,
    /// Header flags.
    pub flags: u32,
    /// Payload bytes.
    pub payload: Vec<u8>,
    /// Descriptors sent with it.
    pub fds: Vec<OwnedFd>,
}

/// Why a message could not be read.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The peer closed the connection (between messages).
    #[error("connection closed")]
    Closed,
    /// The connection broke or the peer sent something that is not a message.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// A header announced a payload larger than [`MAX_PAYLOAD`].
    #[error("message {code} announces {size} payload bytes (at most {MAX_PAYLOAD})")]
    TooLarge {
        /// Request code.
        code: u32,
        /// Announced size.
        size: usize,
    },
}

impl Msg {
    /// A request without descriptors.
    pub fn request(code: u32, payload: Vec<u8>) -> Self {
        Self {
            code,
            flags: VERSION_1,
            payload,
            fds: Vec::new(),
        }
    }

    /// Whether the header marks a reply.
    pub fn is_reply(&self) -> bool {
        self.flags & FLAG_REPLY != 0
    }

    /// A copy with duplicated descriptors.
    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(Self {
            code: self.code,
            flags: self.flags,
            payload: self.payload.clone(),
            fds: self
                .fds
                .iter()
                .map(OwnedFd::try_clone)
                .collect::<io::Result<_>>()?,
        })
    }

    /// The `n`th le32 of the payload.
    pub fn u32_at(&self, n: usize) -> Option<u32> {
        let b = self.payload.get(n * 4..n * 4 + 4)?;
        Some(u32::from_le_bytes(b.try_into().ok()?))
    }

    /// The le64 at byte `off` of the payload.
    pub fn u64_at(&self, off: usize) -> Option<u64> {
        let b = self.payload.get(off..off + 8)?;
        Some(u64::from_le_bytes(b.try_into().ok()?))
    }

    /// Sends the message (header, payload and descriptors in one sendmsg).
    pub fn send(&self, sock: &UnixStream) -> io::Result<()> {
        let mut header = [0u8; HEADER_SIZE];
        header[0..4].copy_from_slice(&self.code.to_le_bytes());
        header[4..8].copy_from_slice(&self.flags.to_le_bytes());
        let size = u32::try_from(self.payload.len()).map_err(io::Error::other)?;
        header[8..12].copy_from_slice(&size.to_le_bytes());
        let fds: Vec<_> = self.fds.iter().map(|f| f.as_fd()).collect();
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(&fds)) {
            return Err(io::Error::other("too many descriptors for one message"));
        }
        let total = HEADER_SIZE + self.payload.len();
        let iov = [IoSlice::new(&header), IoSlice::new(&self.payload)];
        let mut sent = sendmsg(sock, &iov, &mut control, SendFlags::NOSIGNAL)?;
        // The descriptors went with the first bytes; the rest, if the socket
        // took only part, follows without them.
        while sent < total {
            let rest: Vec<u8> = header
                .iter()
                .chain(&self.payload)
                .skip(sent)
                .copied()
                .collect();
            let n = rustix::net::send(sock, &rest, SendFlags::NOSIGNAL)?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            sent += n;
        }
        Ok(())
    }

    /// Reads one message. Descriptors arrive close-on-exec.
    pub fn recv(sock: &UnixStream) -> Result<Self, WireError> {
        let mut header = [0u8; HEADER_SIZE];
        let mut fds = Vec::new();
        let got = recv_exact(sock, &mut header, &mut fds)?;
        if got == 0 {
            return Err(WireError::Closed);
        }
        if got < HEADER_SIZE {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
        }
        let word =
            |i: usize| u32::from_le_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
        let (code, flags, size) = (word(0), word(4), word(8) as usize);
        if size > MAX_PAYLOAD {
            return Err(WireError::TooLarge { code, size });
        }
        let mut payload = vec![0u8; size];
        if size > 0 && recv_exact(sock, &mut payload, &mut fds)? < size {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
        }
        Ok(Self {
            code,
            flags,
            payload,
            fds,
        })
    }
}

/// Fills `buf` (returns fewer bytes only at end of stream), collecting the
/// descriptors that come with it.
fn recv_exact(sock: &UnixStream, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let mut iov = [IoSliceMut::new(&mut buf[got..])];
        let r = match recvmsg(sock, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC) {
            Ok(r) => r,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        };
        for m in control.drain() {
            if let RecvAncillaryMessage::ScmRights(received) = m {
                fds.extend(received);
            }
        }
        if r.bytes == 0 {
            break;
        }
        got += r.bytes;
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_with_descriptors_crosses_a_socket_whole() {
        let (a, b) = UnixStream::pair().unwrap();
        let file = tempfile::tempfile().unwrap();
        let msg = Msg {
            code: code::SET_VRING_KICK,
            flags: VERSION_1 | FLAG_NEED_REPLY,
            payload: 7u64.to_le_bytes().to_vec(),
            fds: vec![OwnedFd::from(file)],
        };
        msg.send(&a).unwrap();
        let got = Msg::recv(&b).unwrap();
        assert_eq!((got.code, got.flags), (msg.code, msg.flags));
        assert_eq!(got.payload, msg.payload);
        assert_eq!(got.fds.len(), 1);
        assert_eq!(got.u64_at(0), Some(7));
        drop(a);
        assert!(matches!(Msg::recv(&b), Err(WireError::Closed)));
    }

    #[test]
    fn an_oversized_header_is_refused_without_reading_the_payload() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut header = Vec::new();
        for w in [code::GET_CONFIG, VERSION_1, (MAX_PAYLOAD + 1) as u32] {
            header.extend_from_slice(&w.to_le_bytes());
        }
        rustix::net::send(&a, &header, SendFlags::empty()).unwrap();
        assert!(matches!(
            Msg::recv(&b),
            Err(WireError::TooLarge {
                code: code::GET_CONFIG,
                ..
            })
        ));
    }
}
