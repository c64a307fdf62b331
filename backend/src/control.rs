// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The channel between the supervisor and its worker: a `SOCK_SEQPACKET`
//! socket pair, one JSON object per packet, descriptors attached.
//!
//! The worker says when it is ready, hands over every model it swaps in
//! (a sealed memfd, before the model serves a request, so that a restarted
//! worker serves the same model at the same generation) and forwards
//! upgrade requests from the admin socket. The supervisor acknowledges each.
//! The supervisor tells a worker who it is through [`ENV_INFO`].

use std::io::{self, IoSlice, IoSliceMut, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use memfd::{FileSeal, MemfdOptions};
use rustix::net::{
    recvmsg, sendmsg, sockopt, AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// Environment variable holding the supervisor's [`Info`] (JSON) in a worker.
pub const ENV_INFO: &str = "VHOST_USER_NN_SUPERVISOR";
/// Environment variable holding the pid a spawner or worker was started by,
/// checked after `PR_SET_PDEATHSIG` (the parent may already be gone).
pub const ENV_PARENT: &str = "VHOST_USER_NN_PARENT";
/// Most descriptors one message carries (a worker's spawn request: the
/// vhost-user, control, model, admin and HTTP sockets).
const MAX_FDS: usize = 8;
/// Largest control packet.
const MAX_PACKET: usize = 64 * 1024;
/// How long a worker waits for the supervisor's answer (an upgrade answers
/// after the new worker failed to start, which may take a model load).
const ACK_TIMEOUT: Duration = Duration::from_secs(90);
/// The seals every handed-over model carries: its bytes can never change.
pub const MODEL_SEALS: [FileSeal; 4] = [
    FileSeal::SealShrink,
    FileSeal::SealGrow,
    FileSeal::SealWrite,
    FileSeal::SealSeal,
];

/// What the supervisor tells a worker about itself.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Info {
    /// The supervisor's pid.
    pub pid: u32,
    /// Workers started after one died.
    pub restarts: u64,
    /// Workers started by an upgrade.
    pub upgrades: u64,
    /// How the previous worker ended, if one did.
    pub last_exit: Option<String>,
    /// Why the last upgrade failed, if it did.
    pub last_upgrade_error: Option<String>,
}

impl Info {
    /// The info of the supervisor of this process, if it has one.
    pub fn from_env() -> Option<Self> {
        serde_json::from_str(&std::env::var(ENV_INFO).ok()?).ok()
    }
}

/// Worker to supervisor.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "msg", rename_all = "kebab-case", deny_unknown_fields)]
pub enum ToSupervisor {
    /// The model is loaded and the worker listens: connect.
    Ready {
        /// The worker's pid.
        pid: u32,
    },
    /// A model about to be served under `generation`; its bytes are the
    /// attached sealed memfd.
    Model {
        /// Its generation.
        generation: u32,
        /// Where it was loaded from.
        source: PathBuf,
    },
    /// Replace the worker (by one running `binary`, or the same binary).
    Upgrade {
        /// The new worker's executable.
        binary: Option<PathBuf>,
    },
}

/// Supervisor to worker.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "msg", rename_all = "kebab-case", deny_unknown_fields)]
pub enum ToWorker {
    /// Done.
    Ack,
    /// Refused, with the reason.
    Error {
        /// Why.
        error: String,
    },
}

/// A connected pair of control sockets (close-on-exec).
pub fn pair() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?)
}

/// Sends one message with `fds` attached.
pub fn send<T: Serialize>(sock: BorrowedFd<'_>, msg: &T, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    let bytes = serde_json::to_vec(msg).map_err(io::Error::other)?;
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::other("too many descriptors"));
    }
    sendmsg(
        sock,
        &[IoSlice::new(&bytes)],
        &mut control,
        SendFlags::NOSIGNAL,
    )?;
    Ok(())
}

/// Receives one message and its descriptors. `Ok(None)`: the peer closed.
pub fn recv<T: DeserializeOwned>(sock: BorrowedFd<'_>) -> io::Result<Option<(T, Vec<OwnedFd>)>> {
    let mut buf = vec![0u8; MAX_PACKET];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let r = recvmsg(
        sock,
        &mut [IoSliceMut::new(&mut buf)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    let fds: Vec<OwnedFd> = control
        .drain()
        .flat_map(|m| match m {
            RecvAncillaryMessage::ScmRights(fds) => fds.collect(),
            _ => Vec::new(),
        })
        .collect();
    if r.bytes == 0 {
        return Ok(None);
    }
    let msg = serde_json::from_slice(&buf[..r.bytes])
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    Ok(Some((msg, fds)))
}

/// A sealed memfd holding `bytes`.
pub fn sealed_memfd(name: &str, bytes: &[u8]) -> io::Result<OwnedFd> {
    let mfd = MemfdOptions::default()
        .allow_sealing(true)
        .close_on_exec(true)
        .create(name)
        .map_err(io::Error::other)?;
    mfd.as_file().write_all(bytes)?;
    mfd.add_seals(&MODEL_SEALS).map_err(io::Error::other)?;
    Ok(OwnedFd::from(mfd.into_file()))
}

/// Whether `fd` is a memfd carrying every seal of [`MODEL_SEALS`], so its
/// contents can be kept without copying: nobody can change them.
pub fn is_sealed_memfd(fd: &OwnedFd) -> bool {
    let Ok(dup) = fd.try_clone() else {
        return false;
    };
    match memfd::Memfd::try_from_fd(dup) {
        Ok(m) => m
            .seals()
            .map(|s| MODEL_SEALS.iter().all(|seal| s.contains(seal)))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// Reads a whole model memfd (from offset 0, whatever the shared file
/// offset), at most `max` bytes.
pub fn read_memfd(fd: &OwnedFd, max: usize) -> io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::from(fd.try_clone()?);
    let len = usize::try_from(file.metadata()?.len()).unwrap_or(usize::MAX);
    if len > max {
        return Err(io::Error::other(format!(
            "model of {len} bytes (at most {max})"
        )));
    }
    let mut bytes = vec![0u8; len];
    file.read_exact_at(&mut bytes, 0)?;
    Ok(bytes)
}

/// The worker's end of the channel.
pub struct Client {
    sock: Mutex<OwnedFd>,
}

impl Client {
    /// The worker's end, inherited as `fd`.
    pub fn new(fd: OwnedFd) -> io::Result<Self> {
        sockopt::set_socket_timeout(&fd, sockopt::Timeout::Recv, Some(ACK_TIMEOUT))?;
        Ok(Self {
            sock: Mutex::new(fd),
        })
    }

    /// Sends `msg` and waits for the acknowledgement.
    pub fn call(&self, msg: &ToSupervisor, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        let sock = self.sock.lock().unwrap_or_else(|e| e.into_inner());
        send(sock.as_fd(), msg, fds)?;
        match recv::<ToWorker>(sock.as_fd())? {
            Some((ToWorker::Ack, _)) => Ok(()),
            Some((ToWorker::Error { error }, _)) => Err(io::Error::other(error)),
            None => Err(io::Error::other(
                "the supervisor closed the control channel",
            )),
        }
    }

    /// Tells the supervisor the worker is ready (no answer).
    pub fn ready(&self) -> io::Result<()> {
        let sock = self.sock.lock().unwrap_or_else(|e| e.into_inner());
        let pid = std::process::id();
        send(sock.as_fd(), &ToSupervisor::Ready { pid }, &[])
    }

    /// Hands a model about to be served over to the supervisor.
    pub fn persist(&self, bytes: &[u8], generation: u32, source: &Path) -> io::Result<()> {
        let fd = sealed_memfd("vhost-user-nn-model", bytes)?;
        self.call(
            &ToSupervisor::Model {
                generation,
                source: source.to_path_buf(),
            },
            &[fd.as_fd()],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_model_crosses_sealed_and_unchangeable() {
        let (a, b) = pair().unwrap();
        let fd = sealed_memfd("t", b"model bytes").unwrap();
        let msg = ToSupervisor::Model {
            generation: 7,
            source: "/m".into(),
        };
        send(a.as_fd(), &msg, &[fd.as_fd()]).unwrap();
        let (got, fds) = recv::<ToSupervisor>(b.as_fd()).unwrap().unwrap();
        assert_eq!(got, msg);
        assert!(is_sealed_memfd(&fds[0]));
        assert_eq!(read_memfd(&fds[0], 100).unwrap(), b"model bytes");
        assert!(read_memfd(&fds[0], 4).is_err());
        let mut file = std::fs::File::from(fds[0].try_clone().unwrap());
        assert!(file.write_all(b"x").is_err(), "sealed against writes");
    }

    #[test]
    fn an_unsealed_or_foreign_descriptor_is_not_taken_as_a_model() {
        let plain = OwnedFd::from(tempfile::tempfile().unwrap());
        assert!(!is_sealed_memfd(&plain));
        let mfd = MemfdOptions::default().create("open").unwrap();
        assert!(!is_sealed_memfd(&OwnedFd::from(mfd.into_file())));
    }

    #[test]
    fn a_closed_peer_reads_as_none() {
        let (a, b) = pair().unwrap();
        drop(a);
        assert!(recv::<ToWorker>(b.as_fd()).unwrap().is_none());
    }
}
