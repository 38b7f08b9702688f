//! Transmission: what to do with each request, decided without I/O ([`plan`]), and the
//! per-connection shell that reads requests, runs them concurrently on the device and writes
//! each reply whole through one writer task.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{Limits, Session, log_panic};
use crate::device::{BlockDevice, DeviceError, check_range, errno};
use crate::nbd::proto::{self, Command, Request, SimpleReply, cmd_flags};

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

pub(super) async fn run(
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

    proptest::proptest! {
        #[test]
        fn no_plan_reaches_outside_the_export_or_over_the_limit(
            flags in proptest::prelude::any::<u16>(),
            code in 0u16..10,
            offset in proptest::prelude::any::<u64>(),
            len in proptest::prelude::any::<u32>(),
            size in 0u64..(1 << 40),
            read_only in proptest::prelude::any::<bool>(),
        ) {
            let l = limits();
            let r = Request { flags, command: Command::from_code(code), cookie: 1, offset, len };
            match plan(&r, size, read_only, &l) {
                Plan::Read { offset, len } => {
                    proptest::prop_assert!(len <= l.max_request);
                    proptest::prop_assert!(check_range(offset, u64::from(len), size).is_ok());
                }
                Plan::Write { offset, len, .. } | Plan::Zero { offset, len, .. } => {
                    proptest::prop_assert!(!read_only);
                    proptest::prop_assert!(check_range(offset, u64::from(len), size).is_ok());
                    proptest::prop_assert!(r.command != Command::Write || len <= l.max_request);
                }
                Plan::Refuse { drain, .. } => {
                    // A refused WRITE's payload is always drained, so the stream stays framed.
                    let want = if r.command == Command::Write { len } else { 0 };
                    proptest::prop_assert_eq!(drain, want);
                }
                Plan::Flush | Plan::Disconnect => {}
            }
        }
    }
}
