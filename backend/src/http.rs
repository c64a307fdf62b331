// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `--http ADDR`: a read-only HTTP endpoint for scrapers and probes, with
//! the KServe v2 / Triton paths.
//!
//! | request | answer |
//! |---|---|
//! | `GET /metrics` | the metrics of [`crate::stats`]: Prometheus text 0.0.4, or OpenMetrics 1.0 when `Accept` names `application/openmetrics-text` |
//! | `GET /v2/health/live` | 200 while the daemon serves |
//! | `GET /v2/health/ready` | 200 when [`crate::health`] reports healthy (a model, a frontend, every queue worker answering); else 503 with the failing checks' reasons, one a line |
//! | `GET /v2/models/NAME` (NAME percent-encoded) | JSON: `name`, `dims`, `activations`, `checksum`, `generation`, `version` (`null`: no repository version) |
//! | `GET /v2/models/NAME/ready` | 200 when NAME is the model served |
//!
//! Unknown paths and models are 404, other methods 405 (`Allow: GET,
//! HEAD`; `HEAD` answers the headers of `GET`). Mutations stay on the admin
//! socket, whose peer-credential check is their access control: nothing
//! here changes state.
//!
//! The answers come from the same state as the admin `status`, `health`
//! and `metrics` commands (the device and its [`Stats`]).
//!
//! # Bounds
//! * At most [`MAX_CONNECTIONS`] connections are served at once, one thread
//!   each; the next ones are answered 503 and closed at once.
//! * One request per connection (`Connection: close`); its head (request
//!   line and headers) is at most [`MAX_HEAD`] bytes and [`MAX_HEADERS`]
//!   headers (431 otherwise); a request with a body is refused (413).
//! * The whole head must arrive within [`READ_TIMEOUT`] (408 otherwise,
//!   however slowly it trickles in), and the whole answer be taken within
//!   [`WRITE_TIMEOUT`]: a slow client holds a connection slot for at most
//!   their sum.
//! * The server runs on its own threads (an accept thread, one per
//!   connection) and takes only the locks the admin socket's `status`,
//!   `health` and `metrics` take (the served model's read lock, the
//!   metrics' families), each for one read: a slow client never holds one.
//!
//! Parsing is `httparse`'s (hyper's parser).
//!
//! # Where it runs
//! Supervised, the supervisor binds the address (so it stays bound and
//! connections wait in its backlog while a worker restarts) and hands the
//! listening socket to every worker, which serves it from its own state,
//! as with the admin socket. Unsupervised, the daemon binds and serves it.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use log::{info, warn};
use serde_json::json;
use thiserror::Error as ThisError;

use crate::device::NnDevice;
use crate::ratelimit::warn_limited;
use crate::stats::Stats;

/// Most connections served at once.
pub const MAX_CONNECTIONS: usize = 16;
/// Largest request head (request line and headers), in bytes.
pub const MAX_HEAD: usize = 8 * 1024;
/// Most headers in a request.
pub const MAX_HEADERS: usize = 32;
/// Time a client has to send its whole request head.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a client refused for [`MAX_CONNECTIONS`] has to take its 503.
const REFUSAL_TIMEOUT: Duration = Duration::from_millis(100);
/// Time a client has to take a whole answer.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why `--http` cannot be served.
#[derive(Debug, ThisError)]
pub enum HttpError {
    /// The address is neither `IP:PORT` nor a socket path.
    #[error("--http {0:?}: neither IP:PORT nor a Unix socket path (one with a '/')")]
    BadAddress(String),
    /// A TCP address other than loopback without `--http-allow-remote`.
    #[error(
        "--http {0}: not a loopback address; the endpoint has no access control \
         (add --http-allow-remote to serve it anyway)"
    )]
    Remote(SocketAddr),
    /// Binding failed.
    #[error("--http {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// Why.
        source: io::Error,
    },
    /// An inherited descriptor is not a listening TCP or Unix socket.
    #[error("--http-fd: not a listening TCP or Unix stream socket")]
    NotASocket,
    /// The accept thread could not start.
    #[error("cannot start the HTTP thread: {0}")]
    Thread(io::Error),
}

/// Where `--http` listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Addr {
    /// A TCP address.
    Tcp(SocketAddr),
    /// A Unix socket path.
    Unix(PathBuf),
}

impl Addr {
    /// `IP:PORT` (`[::1]:PORT`) or a path holding a `/`.
    pub fn parse(s: &str) -> Result<Self, HttpError> {
        if let Ok(a) = s.parse::<SocketAddr>() {
            return Ok(Self::Tcp(a));
        }
        if s.contains('/') {
            return Ok(Self::Unix(PathBuf::from(s)));
        }
        Err(HttpError::BadAddress(s.to_string()))
    }
}

/// A listening socket of `--http`.
#[derive(Debug)]
pub enum Listener {
    /// TCP.
    Tcp(TcpListener),
    /// Unix stream.
    Unix(UnixListener),
}

impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Self::Tcp(l) => l.as_fd(),
            Self::Unix(l) => l.as_fd(),
        }
    }
}

impl Listener {
    /// A listening socket inherited from the supervisor.
    pub fn from_fd(fd: OwnedFd) -> Result<Self, HttpError> {
        use rustix::net::{sockopt, AddressFamily};
        if !matches!(sockopt::socket_acceptconn(&fd), Ok(true)) {
            return Err(HttpError::NotASocket);
        }
        match sockopt::socket_domain(&fd) {
            Ok(AddressFamily::INET | AddressFamily::INET6) => Ok(Self::Tcp(fd.into())),
            Ok(AddressFamily::UNIX) => Ok(Self::Unix(fd.into())),
            _ => Err(HttpError::NotASocket),
        }
    }
}

/// Binds `addr`: a loopback TCP address (any with `allow_remote`), or a
/// Unix socket of mode `mode` (bound as the admin socket is, see
/// [`crate::admin::bind`]).
pub fn bind(addr: &Addr, allow_remote: bool, mode: u32) -> Result<Listener, HttpError> {
    match addr {
        Addr::Tcp(a) => {
            if !a.ip().is_loopback() && !allow_remote {
                return Err(HttpError::Remote(*a));
            }
            let l = TcpListener::bind(a).map_err(|source| HttpError::Bind {
                addr: a.to_string(),
                source,
            })?;
            info!(
                "HTTP endpoint on http://{}",
                l.local_addr().map_or(a.to_string(), |a| a.to_string())
            );
            Ok(Listener::Tcp(l))
        }
        Addr::Unix(p) => {
            let l = crate::admin::bind(p, mode).map_err(|source| HttpError::Bind {
                addr: p.display().to_string(),
                source,
            })?;
            info!("HTTP endpoint on unix:{}", p.display());
            Ok(Listener::Unix(l))
        }
    }
}

/// What the endpoint answers from.
pub struct State {
    device: Arc<NnDevice>,
    stats: Arc<Stats>,
    connections: AtomicUsize,
}

impl State {
    /// Answers from `device` and `stats` (the ones the admin socket uses).
    pub fn new(device: Arc<NnDevice>, stats: Arc<Stats>) -> Self {
        Self {
            device,
            stats,
            connections: AtomicUsize::new(0),
        }
    }
}

/// An answer.
#[derive(Debug, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// Body.
    pub body: String,
}

const TEXT: &str = "text/plain; charset=utf-8";
const JSON: &str = "application/json";
const PROMETHEUS: &str = "text/plain; version=0.0.4; charset=utf-8";
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

fn text(status: u16, body: impl Into<String>) -> Response {
    let mut body = body.into();
    body.push('\n');
    Response {
        status,
        content_type: TEXT,
        body,
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        400 => "Bad Request",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Internal Server Error",
    }
}

/// The answer to a request of `method` for `target` (path and query),
/// whose `Accept` header is `accept`.
pub fn route(state: &State, method: &str, target: &str, accept: &str) -> Response {
    if method != "GET" && method != "HEAD" {
        return text(
            405,
            format!("{method} not allowed: this endpoint is read-only"),
        );
    }
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    let segments: Vec<&str> = path.strip_prefix('/').unwrap_or(path).split('/').collect();
    match segments.as_slice() {
        ["metrics"] => {
            if accept.contains("application/openmetrics-text") {
                Response {
                    status: 200,
                    content_type: OPENMETRICS,
                    body: state.stats.encode(),
                }
            } else {
                Response {
                    status: 200,
                    content_type: PROMETHEUS,
                    body: state.stats.encode_prometheus(),
                }
            }
        }
        ["v2", "health", "live"] => text(200, "live"),
        ["v2", "health", "ready"] => {
            let report = state.device.health_report();
            if report.healthy {
                text(200, "ready")
            } else {
                let why: Vec<String> = report
                    .checks
                    .iter()
                    .filter(|c| !c.ok)
                    .map(|c| match c.queue {
                        Some(q) => format!("{} {q}: {}: {}", c.check, c.state, c.reason),
                        None => format!("{}: {}: {}", c.check, c.state, c.reason),
                    })
                    .collect();
                text(503, format!("not ready\n{}", why.join("\n")))
            }
        }
        ["v2", "models", name] => model(state, name, false),
        ["v2", "models", name, "ready"] => model(state, name, true),
        _ => text(404, format!("no such path: {path}")),
    }
}

/// `/v2/models/NAME[/ready]`; NAME percent-encoded.
fn model(state: &State, name: &str, ready: bool) -> Response {
    let Ok(name) = percent_encoding::percent_decode_str(name).decode_utf8() else {
        return text(400, "the model name is not UTF-8");
    };
    let name = name.as_ref();
    let served = state.device.current();
    let Some(m) = served.model.as_ref().filter(|m| m.name == name) else {
        return text(404, format!("no model {name:?} is served"));
    };
    if ready {
        return text(200, "ready");
    }
    let activations: Vec<&str> = m
        .mlp
        .layers()
        .iter()
        .map(|l| l.activation().name())
        .collect();
    let body = json!({
        "name": m.name,
        "dims": m.mlp.dims(),
        "activations": activations,
        "checksum": format!("crc32c:{:08x}", m.checksum),
        "generation": served.generation,
        "version": serde_json::Value::Null,
        "platform": "virtio-nn",
    });
    Response {
        status: 200,
        content_type: JSON,
        body: body.to_string(),
    }
}

/// A connection's stream, TCP or Unix.
trait Stream: Read + Write {
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()>;
    fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()>;
}

impl Stream for TcpStream {
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        TcpStream::set_read_timeout(self, t)
    }
    fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        TcpStream::set_write_timeout(self, t)
    }
}

impl Stream for UnixStream {
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        UnixStream::set_read_timeout(self, t)
    }
    fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        UnixStream::set_write_timeout(self, t)
    }
}

/// Why a request head could not be read.
enum HeadError {
    /// Answer with this status and reason.
    Answer(u16, &'static str),
    /// The client went away or the socket failed: nothing to answer.
    Gone,
}

/// Reads one request head; returns the method, target and `Accept` value.
fn read_head(s: &mut dyn Stream) -> Result<(String, String, String), HeadError> {
    let deadline = Instant::now() + READ_TIMEOUT;
    let mut buf = vec![0u8; MAX_HEAD];
    let mut len = 0;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(HeadError::Answer(
                408,
                "the request head did not arrive in time",
            ));
        }
        s.set_read_timeout(Some(left))
            .map_err(|_| HeadError::Gone)?;
        if len == buf.len() {
            return Err(HeadError::Answer(431, "request head too large"));
        }
        match s.read(&mut buf[len..]) {
            Ok(0) => return Err(HeadError::Gone),
            Ok(n) => len += n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(HeadError::Answer(
                    408,
                    "the request head did not arrive in time",
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return Err(HeadError::Gone),
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf[..len]) {
            Ok(httparse::Status::Partial) => continue,
            Ok(httparse::Status::Complete(_)) => {
                let has_body = req.headers.iter().any(|h| {
                    (h.name.eq_ignore_ascii_case("content-length") && h.value != b"0")
                        || h.name.eq_ignore_ascii_case("transfer-encoding")
                });
                if has_body {
                    return Err(HeadError::Answer(413, "requests have no body here"));
                }
                let accept = req
                    .headers
                    .iter()
                    .filter(|h| h.name.eq_ignore_ascii_case("accept"))
                    .map(|h| String::from_utf8_lossy(h.value).into_owned())
                    .collect::<Vec<_>>()
                    .join(",");
                return Ok((
                    req.method.unwrap_or_default().to_string(),
                    req.path.unwrap_or_default().to_string(),
                    accept,
                ));
            }
            Err(httparse::Error::TooManyHeaders) => {
                return Err(HeadError::Answer(431, "too many headers"))
            }
            Err(_) => return Err(HeadError::Answer(400, "malformed request")),
        }
    }
}

/// Writes `r`; the whole answer must be taken `within` this time.
fn write_response(
    s: &mut dyn Stream,
    r: &Response,
    head_only: bool,
    within: Duration,
) -> io::Result<()> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
        r.status,
        reason(r.status),
        r.content_type,
        r.body.len()
    );
    if r.status == 405 {
        out.push_str("Allow: GET, HEAD\r\n");
    }
    out.push_str("\r\n");
    if !head_only {
        out.push_str(&r.body);
    }
    let deadline = Instant::now() + within;
    let mut rest = out.as_bytes();
    while !rest.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        s.set_write_timeout(Some(left))?;
        match s.write(rest) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => rest = &rest[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn serve_one(state: &State, s: &mut dyn Stream) {
    let r = match read_head(s) {
        Ok((method, target, accept)) => {
            let r = route(state, &method, &target, &accept);
            let _ = write_response(s, &r, method == "HEAD", WRITE_TIMEOUT);
            return;
        }
        Err(HeadError::Answer(status, why)) => text(status, why),
        Err(HeadError::Gone) => return,
    };
    let _ = write_response(s, &r, false, WRITE_TIMEOUT);
}

/// Releases a connection slot when dropped.
struct Slot<'a>(&'a AtomicUsize);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn handle(state: Arc<State>, mut s: Box<dyn Stream + Send>) {
    let taken = state.connections.fetch_add(1, Ordering::AcqRel);
    if taken >= MAX_CONNECTIONS {
        state.connections.fetch_sub(1, Ordering::AcqRel);
        warn_limited!("http: too many connections; answered 503");
        // Answered on the accept thread, so with a short deadline: a
        // refused client cannot hold the accept thread either.
        let _ = write_response(
            &mut *s,
            &text(503, "too many connections"),
            false,
            REFUSAL_TIMEOUT,
        );
        return;
    }
    let mine = state.clone();
    let spawned = thread::Builder::new()
        .name("http-client".into())
        .spawn(move || {
            let _slot = Slot(&state.connections);
            serve_one(&state, &mut *s);
        });
    if let Err(e) = spawned {
        // The closure never ran: its slot is released here.
        drop(Slot(&mine.connections));
        warn!("http: cannot start a client thread: {e}");
    }
}

fn boxed(s: impl Stream + Send + 'static) -> Box<dyn Stream + Send> {
    Box::new(s)
}

/// Serves `listener` from `state` on a new thread.
pub fn spawn(listener: Listener, state: Arc<State>) -> Result<(), HttpError> {
    thread::Builder::new()
        .name("http".into())
        .spawn(move || loop {
            let accepted: io::Result<Box<dyn Stream + Send>> = match &listener {
                Listener::Tcp(l) => l.accept().map(|(s, _)| boxed(s)),
                Listener::Unix(l) => l.accept().map(|(s, _)| boxed(s)),
            };
            match accepted {
                Ok(s) => handle(state.clone(), s),
                Err(e) => {
                    warn_limited!("http: accept: {e}");
                    // Out of descriptors or memory: let some connections end.
                    thread::sleep(Duration::from_millis(50));
                }
            }
        })
        .map(|_| ())
        .map_err(HttpError::Thread)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(
            Addr::parse("127.0.0.1:9090").unwrap(),
            Addr::Tcp("127.0.0.1:9090".parse().unwrap())
        );
        assert_eq!(
            Addr::parse("/run/nn/http.sock").unwrap(),
            Addr::Unix("/run/nn/http.sock".into())
        );
        assert!(matches!(
            Addr::parse("localhost"),
            Err(HttpError::BadAddress(_))
        ));
        let remote = Addr::parse("0.0.0.0:0").unwrap();
        assert!(matches!(
            bind(&remote, false, 0o600),
            Err(HttpError::Remote(_))
        ));
    }
}
