//! The NBD server: serves the [`BlockDevice`]s an [`Exports`] names to any NBD client (qemu,
//! libnbd's tools, the kernel, [`super::client`]).
//!
//! Owns: the accept loop, per-connection handshake (fixed newstyle; EXPORT_NAME, GO, INFO, LIST,
//! ABORT; everything else `NBD_REP_ERR_UNSUP`) and transmission (READ, WRITE, DISC, FLUSH, TRIM,
//! WRITE_ZEROES with FUA; simple replies only). What to answer is decided by two pure functions,
//! [`answer_option`] and [`plan`]; the async shell only moves bytes.
//!
//! Invariants:
//! - a reply is written whole: replies go through one writer task per connection, so concurrent
//!   requests never interleave their bytes;
//! - per connection at most [`Limits::max_inflight`] requests are in flight and each carries at
//!   most [`Limits::max_request`] bytes, so a connection holds at most their product in memory;
//! - a WRITE longer than `max_request` is refused with `EINVAL` after its payload has been read
//!   and discarded in small chunks (never buffered), so the connection stays in step and usable;
//!   a READ longer than `max_request` is refused with `EOVERFLOW`. TRIM and WRITE_ZEROES have no
//!   payload and are applied in `max_request` chunks;
//! - garbage that cannot be framed (a bad request magic, option data over
//!   [`proto::MAX_OPTION_DATA`], unknown client flags, an unknown export via EXPORT_NAME) closes
//!   that connection; anything well-framed gets an error reply. No input panics the server, and
//!   one connection's failure never stops the others;
//! - the handshake must finish within [`Limits::handshake_timeout`], and at most
//!   [`Limits::max_connections`] connections are served at once.
//!
//! `CAN_MULTI_CONN` is advertised because the server keeps no cache of its own: every request
//! goes straight to the device, whose flush and FUA make every completed write durable (the
//! [`BlockDevice`] contract), whichever connection wrote it.
//!
//! Does not: authenticate clients or speak TLS (the agent binds it on loopback or a site-internal
//! address), structured replies, block status, or resize.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::proto::{
    self, ClientFlags, ClientOption, Command, ExportNameReply, Greeting, Info, InfoRequest,
    OptionHeader, OptionReply, ProtoError, ReplyBody, Request, SimpleReply, client_flags,
    cmd_flags, handshake, info, rep, tx_flags,
};
use crate::device::{BlockDevice, DeviceError, check_range, errno};

/// Per-connection bounds.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest READ or WRITE payload, in bytes (advertised as the maximum block size).
    pub max_request: u32,
    /// Requests one connection may have in flight at once.
    pub max_inflight: usize,
    /// Time a client has from connecting to entering transmission.
    pub handshake_timeout: Duration,
    /// Connections served at once; one more is closed right after it is accepted.
    pub max_connections: usize,
    /// After shutdown, how long accepted requests may take to be answered before the
    /// connection is dropped with them unanswered (a client that stops reading its replies).
    pub drain_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_request: 32 << 20,
            max_inflight: 16,
            handshake_timeout: Duration::from_secs(10),
            max_connections: 256,
            drain_timeout: Duration::from_secs(5),
        }
    }
}

/// The devices a server exports, by name.
pub trait Exports: Send + Sync + 'static {
    fn lookup(&self, name: &str) -> Option<Arc<dyn BlockDevice>>;
    /// Names for `NBD_OPT_LIST`.
    fn list(&self) -> Vec<String>;
}

/// A fixed map of export names to devices.
#[derive(Clone, Default)]
pub struct StaticExports {
    devices: BTreeMap<String, Arc<dyn BlockDevice>>,
}

impl StaticExports {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) export `name`.
    pub fn with(mut self, name: impl Into<String>, device: Arc<dyn BlockDevice>) -> Self {
        self.devices.insert(name.into(), device);
        self
    }
}

impl Exports for StaticExports {
    fn lookup(&self, name: &str) -> Option<Arc<dyn BlockDevice>> {
        self.devices.get(name).cloned()
    }

    fn list(&self) -> Vec<String> {
        self.devices.keys().cloned().collect()
    }
}

/// The transmission flags of an export.
pub fn transmission_flags(read_only: bool) -> u16 {
    let mut flags = tx_flags::HAS_FLAGS
        | tx_flags::SEND_FLUSH
        | tx_flags::SEND_FUA
        | tx_flags::SEND_TRIM
        | tx_flags::SEND_WRITE_ZEROES
        | tx_flags::CAN_MULTI_CONN;
    if read_only {
        flags |= tx_flags::READ_ONLY;
    }
    flags
}

/// The export a client chose, entering transmission.
#[derive(Clone)]
pub struct Session {
    pub name: String,
    pub device: Arc<dyn BlockDevice>,
    /// Chosen with `NBD_OPT_EXPORT_NAME`, which is answered by [`ExportNameReply`].
    pub via_export_name: bool,
}

/// What the handshake does after answering an option.
pub enum Next {
    Continue,
    Transmit(Session),
    /// Close the connection; with a reason when the client did something wrong.
    Close(Option<String>),
}

/// The replies to one option and what follows them.
pub struct Answer {
    pub replies: Vec<OptionReply>,
    pub next: Next,
}

impl Answer {
    fn one(reply: OptionReply) -> Self {
        Self {
            replies: vec![reply],
            next: Next::Continue,
        }
    }
}

/// Decides the answer to option `code` (parsed, or why its data was malformed).
pub fn answer_option(
    code: u32,
    option: Result<ClientOption, ProtoError>,
    exports: &dyn Exports,
    limits: &Limits,
) -> Answer {
    let option = match option {
        Ok(o) => o,
        Err(e) => return Answer::one(OptionReply::error(code, rep::ERR_INVALID, e.to_string())),
    };
    match option {
        ClientOption::ExportName(name) => match exports.lookup(&name) {
            Some(device) => Answer {
                replies: Vec::new(),
                next: Next::Transmit(Session {
                    name,
                    device,
                    via_export_name: true,
                }),
            },
            None => Answer {
                replies: Vec::new(),
                next: Next::Close(Some(format!(
                    "NBD_OPT_EXPORT_NAME: no export named {name:?}"
                ))),
            },
        },
        ClientOption::Abort => Answer {
            replies: vec![OptionReply::ack(code)],
            next: Next::Close(None),
        },
        ClientOption::List => {
            let mut replies: Vec<OptionReply> = exports
                .list()
                .into_iter()
                .map(|name| OptionReply {
                    option: code,
                    body: ReplyBody::Server(name),
                })
                .collect();
            replies.push(OptionReply::ack(code));
            Answer {
                replies,
                next: Next::Continue,
            }
        }
        ClientOption::Info(req) => answer_info(code, req, false, exports, limits),
        ClientOption::Go(req) => answer_info(code, req, true, exports, limits),
        ClientOption::StructuredReply => Answer::one(OptionReply::error(
            code,
            rep::ERR_UNSUP,
            "structured replies are not supported; this server sends simple replies",
        )),
        ClientOption::Other { option, .. } => Answer::one(OptionReply::error(
            code,
            rep::ERR_UNSUP,
            format!("option {option} is not supported"),
        )),
    }
}

fn answer_info(
    code: u32,
    req: InfoRequest,
    go: bool,
    exports: &dyn Exports,
    limits: &Limits,
) -> Answer {
    let Some(device) = exports.lookup(&req.name) else {
        return Answer::one(OptionReply::error(
            code,
            rep::ERR_UNKNOWN,
            format!("no export named {:?}", req.name),
        ));
    };
    let info = |item| OptionReply {
        option: code,
        body: ReplyBody::Info(item),
    };
    let mut replies = vec![
        info(Info::Export {
            size: device.size(),
            flags: transmission_flags(device.read_only()),
        }),
        info(Info::BlockSize {
            min: 1,
            preferred: 4096,
            max: limits.max_request,
        }),
    ];
    if req.items.contains(&info::NAME) {
        replies.push(info(Info::Name(req.name.clone())));
    }
    replies.push(OptionReply::ack(code));
    let next = if go {
        Next::Transmit(Session {
            name: req.name,
            device,
            via_export_name: false,
        })
    } else {
        Next::Continue
    };
    Answer { replies, next }
}

/// What to do with one transmission request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    Read {
        offset: u64,
        len: u32,
    },
    /// Read `len` bytes of payload, then write them.
    Write {
        offset: u64,
        len: u32,
        fua: bool,
    },
    /// TRIM or WRITE_ZEROES: both leave zeroes, so every copy reads the same afterwards.
    Zero {
        offset: u64,
        len: u32,
        fua: bool,
    },
    Flush,
    /// NBD_CMD_DISC: finish what is in flight, then close.
    Disconnect,
    /// Reply with `errno` after discarding `drain` payload bytes.
    Refuse {
        errno: u32,
        drain: u32,
        why: String,
    },
}

/// Decides what to do with `req` on a device of `size` bytes.
pub fn plan(req: &Request, size: u64, read_only: bool, limits: &Limits) -> Plan {
    let drain = if req.command == Command::Write {
        req.len
    } else {
        0
    };
    let refuse = |errno, why: String| Plan::Refuse { errno, drain, why };
    let allowed = cmd_flags::FUA | cmd_flags::NO_HOLE;
    if req.flags & !allowed != 0 {
        return refuse(
            errno::EINVAL,
            format!("unsupported command flags {:#x}", req.flags),
        );
    }
    let in_range = check_range(req.offset, u64::from(req.len), size).is_ok();
    let (offset, len, fua) = (req.offset, req.len, req.fua());
    let range = || format!("offset {offset} length {len} beyond the export's {size} bytes");
    match req.command {
        Command::Disc => Plan::Disconnect,
        Command::Flush => Plan::Flush,
        Command::Read if len > limits.max_request => refuse(
            errno::EOVERFLOW,
            format!("READ of {len} bytes exceeds {}", limits.max_request),
        ),
        Command::Read if !in_range => refuse(errno::EINVAL, range()),
        Command::Read => Plan::Read { offset, len },
        Command::Write if len > limits.max_request => refuse(
            errno::EINVAL,
            format!("WRITE of {len} bytes exceeds {}", limits.max_request),
        ),
        Command::Write | Command::Trim | Command::WriteZeroes if read_only => {
            refuse(errno::EPERM, "the export is read-only".to_owned())
        }
        Command::Write | Command::Trim | Command::WriteZeroes if !in_range => {
            refuse(errno::ENOSPC, range())
        }
        Command::Write => Plan::Write { offset, len, fua },
        Command::Trim | Command::WriteZeroes => Plan::Zero { offset, len, fua },
        Command::Other(code) => refuse(errno::EINVAL, format!("unknown command {code}")),
    }
}

/// Why a connection ended early (logged, never returned to a caller).
#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Proto(#[from] ProtoError),
    #[error("client flags {0:#x} include bits this server did not offer")]
    UnknownClientFlags(u32),
    #[error("option {option} carries {len} bytes, more than {max}")]
    OptionTooLong { option: u32, len: u32, max: u32 },
    #[error("{0}")]
    Refused(String),
}

/// Accepts connections on `listener` and serves `exports` until `shutdown`; then stops
/// accepting and reading requests, answers the requests already accepted (within
/// [`Limits::drain_timeout`]), closes every connection, and returns.
pub async fn serve(
    listener: TcpListener,
    exports: Arc<dyn Exports>,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((_, peer)) if conns.len() >= limits.max_connections => {
                    tracing::warn!(%peer, "nbd: refusing a connection: {} already open", conns.len());
                }
                Ok((stream, peer)) => {
                    let conn = connection(stream, peer, exports.clone(), limits.clone(), shutdown.clone());
                    conns.spawn(conn);
                }
                Err(e) => {
                    // Out of descriptors and the like: transient, so pause rather than spin.
                    tracing::warn!("nbd: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(ended) = conns.join_next(), if !conns.is_empty() => log_panic(ended),
        }
    }
    drop(listener);
    while let Some(ended) = conns.join_next().await {
        log_panic(ended);
    }
}

/// A panicking connection is a bug; it ends only that connection, and it is logged loudly.
fn log_panic(ended: Result<(), tokio::task::JoinError>) {
    if let Err(e) = ended
        && e.is_panic()
    {
        tracing::error!("nbd: BUG: a connection task panicked: {e}");
    }
}

async fn connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    exports: Arc<dyn Exports>,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let negotiated = tokio::select! {
        _ = shutdown.cancelled() => return,
        r = tokio::time::timeout(limits.handshake_timeout, handshake(&mut stream, &*exports, &limits)) => r,
    };
    match negotiated {
        Err(_) => {
            tracing::info!(%peer, "nbd: handshake not finished within {:?}", limits.handshake_timeout)
        }
        Ok(Err(e)) => tracing::info!(%peer, "nbd: handshake failed: {e}"),
        Ok(Ok(None)) => {}
        Ok(Ok(Some(session))) => {
            tracing::debug!(%peer, export = %session.name, "nbd: transmission");
            transmission(stream, peer, session, limits, shutdown).await;
        }
    }
}

async fn handshake(
    stream: &mut TcpStream,
    exports: &dyn Exports,
    limits: &Limits,
) -> Result<Option<Session>, ConnError> {
    let greeting = Greeting {
        flags: handshake::FIXED_NEWSTYLE | handshake::NO_ZEROES,
    };
    stream.write_all(&greeting.encode()).await?;
    let mut buf = [0; 4];
    stream.read_exact(&mut buf).await?;
    let ClientFlags(flags) = ClientFlags::decode(&buf)?;
    if flags & !client_flags::KNOWN != 0 {
        return Err(ConnError::UnknownClientFlags(flags));
    }
    let zeroes = flags & client_flags::NO_ZEROES == 0;
    loop {
        let mut head = [0; proto::OPTION_HEADER_LEN];
        stream.read_exact(&mut head).await?;
        let header = OptionHeader::decode(&head)?;
        if header.len > proto::MAX_OPTION_DATA {
            return Err(ConnError::OptionTooLong {
                option: header.option,
                len: header.len,
                max: proto::MAX_OPTION_DATA,
            });
        }
        let mut data = vec![0; header.len as usize];
        stream.read_exact(&mut data).await?;
        let parsed = ClientOption::parse(header.option, &data);
        let answer = answer_option(header.option, parsed, exports, limits);
        let out: Vec<u8> = answer
            .replies
            .iter()
            .flat_map(OptionReply::encode)
            .collect();
        stream.write_all(&out).await?;
        match answer.next {
            Next::Continue => {}
            Next::Close(None) => return Ok(None),
            Next::Close(Some(why)) => return Err(ConnError::Refused(why)),
            Next::Transmit(session) => {
                if session.via_export_name {
                    let reply = ExportNameReply {
                        size: session.device.size(),
                        flags: transmission_flags(session.device.read_only()),
                    };
                    stream.write_all(&reply.encode(zeroes)).await?;
                }
                return Ok(Some(session));
            }
        }
    }
}

/// One request being served, with what it needs to reply.
struct Job {
    cookie: u64,
    command: Command,
    export: Arc<str>,
    device: Arc<dyn BlockDevice>,
    replies: mpsc::Sender<Vec<u8>>,
    chunk: u32,
    _permit: OwnedSemaphorePermit,
}

enum Op {
    Read {
        offset: u64,
        len: u32,
    },
    Write {
        offset: u64,
        data: Vec<u8>,
        fua: bool,
    },
    Zero {
        offset: u64,
        len: u32,
        fua: bool,
    },
    Flush,
}

async fn transmission(
    stream: TcpStream,
    peer: SocketAddr,
    session: Session,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let (mut rd, wr) = stream.into_split();
    let (tx, rx) = mpsc::channel(limits.max_inflight.max(1));
    let mut writer = tokio::spawn(write_replies(wr, rx));
    let mut inflight = JoinSet::new();
    let conn = Conn {
        peer,
        export: session.name.as_str().into(),
        session: &session,
        limits: &limits,
        replies: &tx,
    };
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = conn.read_requests(&mut rd, &mut inflight) => {}
    }
    // Whatever was accepted is answered; a client that stops reading its replies gets
    // `drain_timeout` after shutdown before its requests are abandoned.
    let drained = async {
        while let Some(ended) = inflight.join_next().await {
            log_panic(ended);
        }
        drop(tx);
        let _ = (&mut writer).await;
    };
    let deadline = async {
        shutdown.cancelled().await;
        tokio::time::sleep(limits.drain_timeout).await;
    };
    tokio::select! {
        _ = drained => {}
        _ = deadline => tracing::warn!(%peer, "nbd: shutting down with requests unanswered"),
    }
    writer.abort();
}

/// What one connection's request loop needs.
struct Conn<'a> {
    peer: SocketAddr,
    export: Arc<str>,
    session: &'a Session,
    limits: &'a Limits,
    replies: &'a mpsc::Sender<Vec<u8>>,
}

impl Conn<'_> {
    /// Reads requests until the client disconnects or sends what cannot be framed, handing each
    /// to a task in `inflight` (at most `max_inflight` at once).
    async fn read_requests(&self, rd: &mut OwnedReadHalf, inflight: &mut JoinSet<()>) {
        let permits = Arc::new(Semaphore::new(self.limits.max_inflight.max(1)));
        let device = &self.session.device;
        let (size, read_only) = (device.size(), device.read_only());
        loop {
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return;
            };
            let mut head = [0; proto::REQUEST_LEN];
            if rd.read_exact(&mut head).await.is_err() {
                return;
            }
            while let Some(ended) = inflight.try_join_next() {
                log_panic(ended);
            }
            let req = match Request::decode(&head) {
                Ok(req) => req,
                Err(e) => {
                    tracing::info!(peer = %self.peer, export = %self.export, "nbd: closing: {e}");
                    return;
                }
            };
            metrics::counter!("fabric_nbd_requests_total", "export" => self.export.to_string(), "command" => req.command.name()).increment(1);
            let job = Job {
                cookie: req.cookie,
                command: req.command,
                export: self.export.clone(),
                device: device.clone(),
                replies: self.replies.clone(),
                chunk: self.limits.max_request.max(4096),
                _permit: permit,
            };
            let op = match plan(&req, size, read_only, self.limits) {
                Plan::Disconnect => return,
                Plan::Refuse { errno, drain, why } => {
                    tracing::debug!(peer = %self.peer, export = %self.export, "nbd: {} refused: {why}", req.command.name());
                    if drain_payload(rd, drain).await.is_err() {
                        return;
                    }
                    job.reply(Err(errno), Vec::new()).await;
                    continue;
                }
                Plan::Read { offset, len } => Op::Read { offset, len },
                Plan::Write { offset, len, fua } => {
                    let mut data = vec![0; len as usize];
                    if rd.read_exact(&mut data).await.is_err() {
                        return;
                    }
                    Op::Write { offset, data, fua }
                }
                Plan::Zero { offset, len, fua } => Op::Zero { offset, len, fua },
                Plan::Flush => Op::Flush,
            };
            inflight.spawn(job.run(op));
        }
    }
}

/// Reads and discards `len` payload bytes without buffering them.
async fn drain_payload(rd: &mut (impl AsyncRead + Unpin), len: u32) -> std::io::Result<()> {
    let mut left = u64::from(len);
    let mut buf = vec![0; 64 * 1024];
    while left > 0 {
        let want = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
        let n = rd.read(&mut buf[..want]).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        left -= n as u64;
    }
    Ok(())
}

async fn write_replies(mut wr: OwnedWriteHalf, mut rx: mpsc::Receiver<Vec<u8>>) {
    while let Some(reply) = rx.recv().await {
        if wr.write_all(&reply).await.is_err() {
            return;
        }
    }
    let _ = wr.shutdown().await;
}

impl Job {
    async fn run(self, op: Op) {
        let device = self.device.clone();
        let result = match op {
            Op::Read { offset, len } => device.read(offset, len).await,
            Op::Write { offset, data, fua } => {
                let bytes = data.len() as u64;
                let written = device.write(offset, data, fua).await;
                if written.is_ok() {
                    metrics::counter!("fabric_nbd_written_bytes_total", "export" => self.export.to_string()).increment(bytes);
                }
                written.map(|()| Vec::new())
            }
            Op::Zero { offset, len, fua } => self.zero(offset, len, fua).await.map(|()| Vec::new()),
            Op::Flush => device.flush().await.map(|()| Vec::new()),
        };
        match result {
            Ok(data) => self.reply(Ok(()), data).await,
            Err(e) => {
                tracing::warn!(export = %self.export, "nbd: {} failed: {e}", self.command.name());
                self.reply(Err(e.nbd_errno()), Vec::new()).await;
            }
        }
    }

    /// Zeroes in chunks so a huge TRIM never allocates more than one request's worth.
    async fn zero(&self, offset: u64, len: u32, fua: bool) -> Result<(), DeviceError> {
        let mut done = 0u32;
        while done < len {
            let n = (len - done).min(self.chunk);
            self.device
                .write_zeroes(offset + u64::from(done), n, fua)
                .await?;
            done += n;
        }
        Ok(())
    }

    async fn reply(&self, result: Result<(), u32>, data: Vec<u8>) {
        let error = result.err().unwrap_or(0);
        let label = self.export.to_string();
        if error != 0 {
            metrics::counter!("fabric_nbd_errors_total", "export" => label.clone(), "errno" => proto::errno_name(error)).increment(1);
        }
        let bytes = match self.command {
            Command::Read => data.len() as u64,
            _ => 0,
        };
        if bytes > 0 {
            metrics::counter!("fabric_nbd_read_bytes_total", "export" => label).increment(bytes);
        }
        let mut out = SimpleReply {
            error,
            cookie: self.cookie,
        }
        .encode()
        .to_vec();
        out.extend_from_slice(&data);
        // A closed writer means the connection is gone; the reply has no one to go to.
        let _ = self.replies.send(out).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::FileDisk;

    fn req(command: Command, flags: u16, offset: u64, len: u32) -> Request {
        Request {
            flags,
            command,
            cookie: 7,
            offset,
            len,
        }
    }

    fn limits() -> Limits {
        Limits {
            max_request: 1 << 20,
            ..Limits::default()
        }
    }

    fn refused(plan: Plan) -> Option<(u32, u32)> {
        match plan {
            Plan::Refuse { errno, drain, .. } => Some((errno, drain)),
            _ => None,
        }
    }

    #[test]
    fn requests_inside_the_export_are_served() {
        let l = limits();
        assert_eq!(
            plan(&req(Command::Read, 0, 0, 4096), 8192, false, &l),
            Plan::Read {
                offset: 0,
                len: 4096
            }
        );
        assert_eq!(
            plan(
                &req(Command::Write, cmd_flags::FUA, 4096, 4096),
                8192,
                false,
                &l
            ),
            Plan::Write {
                offset: 4096,
                len: 4096,
                fua: true
            }
        );
        assert_eq!(
            plan(
                &req(Command::WriteZeroes, cmd_flags::NO_HOLE, 0, 8192),
                8192,
                false,
                &l
            ),
            Plan::Zero {
                offset: 0,
                len: 8192,
                fua: false
            }
        );
        assert_eq!(
            plan(&req(Command::Flush, 0, 0, 0), 8192, true, &l),
            Plan::Flush
        );
        assert_eq!(
            plan(&req(Command::Disc, 0, 0, 0), 8192, false, &l),
            Plan::Disconnect
        );
    }

    #[test]
    fn bad_requests_get_the_documented_errno_and_writes_are_drained() {
        let l = limits();
        let big = l.max_request + 1;
        let cases = [
            (req(Command::Read, 0, 0, big), false, (errno::EOVERFLOW, 0)),
            (req(Command::Read, 0, 8000, 512), false, (errno::EINVAL, 0)),
            (
                req(Command::Read, 0, u64::MAX, 512),
                false,
                (errno::EINVAL, 0),
            ),
            (req(Command::Write, 0, 0, big), false, (errno::EINVAL, big)),
            (
                req(Command::Write, 0, 8000, 512),
                false,
                (errno::ENOSPC, 512),
            ),
            (req(Command::Write, 0, 0, 512), true, (errno::EPERM, 512)),
            (req(Command::Trim, 0, 0, 512), true, (errno::EPERM, 0)),
            (
                req(Command::WriteZeroes, 0, 0, 9000),
                false,
                (errno::ENOSPC, 0),
            ),
            (req(Command::Other(5), 0, 0, 512), false, (errno::EINVAL, 0)),
            (
                req(Command::Read, cmd_flags::DF, 0, 512),
                false,
                (errno::EINVAL, 0),
            ),
            (
                req(Command::Write, cmd_flags::FAST_ZERO, 0, 16),
                false,
                (errno::EINVAL, 16),
            ),
        ];
        for (r, read_only, want) in cases {
            assert_eq!(refused(plan(&r, 8192, read_only, &l)), Some(want), "{r:?}");
        }
    }

    fn exports(dir: &tempfile::TempDir) -> StaticExports {
        let disk = FileDisk::create(&dir.path().join("v.img"), 1 << 20).expect("disk");
        StaticExports::new().with("vol", Arc::new(disk))
    }

    #[test]
    fn go_answers_size_flags_block_size_then_enters_transmission() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ex = exports(&dir);
        let go = ClientOption::Go(InfoRequest {
            name: "vol".into(),
            items: vec![info::NAME],
        });
        let a = answer_option(proto::opt::GO, Ok(go), &ex, &limits());
        let bodies: Vec<ReplyBody> = a.replies.into_iter().map(|r| r.body).collect();
        assert_eq!(
            bodies,
            vec![
                ReplyBody::Info(Info::Export {
                    size: 1 << 20,
                    flags: transmission_flags(false)
                }),
                ReplyBody::Info(Info::BlockSize {
                    min: 1,
                    preferred: 4096,
                    max: 1 << 20
                }),
                ReplyBody::Info(Info::Name("vol".into())),
                ReplyBody::Ack,
            ]
        );
        assert!(matches!(a.next, Next::Transmit(s) if s.name == "vol" && !s.via_export_name));
    }

    #[test]
    fn unknown_exports_options_and_malformed_data_get_error_replies() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ex = exports(&dir);
        let l = limits();
        let code_of = |a: Answer| match (a.replies.as_slice(), a.next) {
            (
                [
                    OptionReply {
                        body: ReplyBody::Error { code, .. },
                        ..
                    },
                ],
                Next::Continue,
            ) => Some(*code),
            _ => None,
        };
        let info = ClientOption::Info(InfoRequest {
            name: "nope".into(),
            items: vec![],
        });
        assert_eq!(
            code_of(answer_option(proto::opt::INFO, Ok(info), &ex, &l)),
            Some(rep::ERR_UNKNOWN)
        );
        let sr = ClientOption::StructuredReply;
        assert_eq!(
            code_of(answer_option(8, Ok(sr), &ex, &l)),
            Some(rep::ERR_UNSUP)
        );
        let tls = ClientOption::Other {
            option: proto::opt::STARTTLS,
            data: vec![],
        };
        assert_eq!(
            code_of(answer_option(5, Ok(tls), &ex, &l)),
            Some(rep::ERR_UNSUP)
        );
        let bad = ClientOption::parse(proto::opt::LIST, b"junk");
        assert_eq!(
            code_of(answer_option(3, bad, &ex, &l)),
            Some(rep::ERR_INVALID)
        );
        let unknown = answer_option(1, Ok(ClientOption::ExportName("nope".into())), &ex, &l);
        assert!(matches!(unknown.next, Next::Close(Some(why)) if why.contains("nope")));
        let list = answer_option(3, Ok(ClientOption::List), &ex, &l);
        let bodies: Vec<ReplyBody> = list.replies.into_iter().map(|r| r.body).collect();
        assert_eq!(
            bodies,
            vec![ReplyBody::Server("vol".into()), ReplyBody::Ack]
        );
    }

    #[test]
    fn read_only_exports_say_so() {
        assert_ne!(transmission_flags(true) & tx_flags::READ_ONLY, 0);
        assert_eq!(transmission_flags(false) & tx_flags::READ_ONLY, 0);
    }
}
