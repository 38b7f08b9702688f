//! A small async NBD client: one connection, one request at a time.
//!
//! Owns: connecting (fixed newstyle, `NBD_OPT_GO`, falling back to `NBD_OPT_EXPORT_NAME` for a
//! server without GO), READ/WRITE/WRITE_ZEROES/TRIM/FLUSH/DISC with simple replies, listing
//! exports, and `nbd://host:port/export` URIs (the form qemu takes).
//!
//! Invariant: a call returns `Ok` only after the server's reply for that very request (the
//! cookie is checked); a WRITE with `fua` is durable on the server when it returns. Every call
//! is bounded by the client's timeout. After an I/O, timeout or protocol error the connection is
//! out of step: [`NbdError::is_connection`] says so and the caller must reconnect.
//!
//! Does not: pipeline requests, split requests larger than the server's maximum, reconnect by
//! itself, or speak TLS or structured replies.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::proto::{
    self, ClientFlags, ClientOption, Command, ExportNameReply, Greeting, Info, InfoRequest,
    OptionReply, OptionReplyHeader, ProtoError, ReplyBody, Request, SimpleReply, client_flags,
    cmd_flags, handshake, info, opt, rep,
};

/// The port NBD servers listen on unless told otherwise.
pub const DEFAULT_PORT: u16 = 10809;
/// How long one call (connect, or one request and its reply) may take by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// What went wrong talking to an NBD server.
#[derive(Debug, thiserror::Error)]
pub enum NbdError {
    #[error("bad NBD URI {uri:?}: {why}")]
    BadUri { uri: String, why: String },
    #[error("cannot connect to NBD server {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("NBD {op}: connection failed: {source}")]
    Io {
        op: &'static str,
        source: std::io::Error,
    },
    #[error("NBD {op}: no answer within {after:?}")]
    Timeout { op: &'static str, after: Duration },
    #[error("NBD {op}: protocol error: {source}")]
    Proto {
        op: &'static str,
        source: ProtoError,
    },
    #[error("NBD handshake: {0}")]
    Handshake(String),
    #[error("NBD server has no export named {export:?}: {message}")]
    UnknownExport { export: String, message: String },
    #[error("NBD option {option} refused with reply {code:#x}: {message}")]
    OptionRefused {
        option: u32,
        code: u32,
        message: String,
    },
    #[error("NBD {command} at offset {offset} length {len} failed: {name} ({errno})")]
    Errno {
        command: &'static str,
        offset: u64,
        len: u64,
        errno: u32,
        name: &'static str,
    },
    #[error("NBD reply for cookie {got} while waiting for {want}")]
    CookieMismatch { want: u64, got: u64 },
    #[error("NBD request of {len} bytes does not fit the protocol's 32-bit length")]
    TooLarge { len: usize },
}

impl NbdError {
    /// The NBD error number the server replied with, if that is what failed.
    pub fn errno(&self) -> Option<u32> {
        match self {
            NbdError::Errno { errno, .. } => Some(*errno),
            _ => None,
        }
    }

    /// Whether the connection is broken, out of step, or shutting down (ESHUTDOWN, after which
    /// the protocol has the client disconnect): reconnect before the next request.
    pub fn is_connection(&self) -> bool {
        match self {
            NbdError::Errno { errno, .. } => *errno == crate::device::errno::ESHUTDOWN,
            NbdError::BadUri { .. } | NbdError::TooLarge { .. } => false,
            _ => true,
        }
    }
}

/// `nbd://host:port/export`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NbdUri {
    pub host: String,
    pub port: u16,
    pub export: String,
}

impl NbdUri {
    /// `host:port`, with brackets around an IPv6 host.
    pub fn addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl std::fmt::Display for NbdUri {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "nbd://{}/{}", self.addr(), self.export)
    }
}

/// Parses `nbd://host[:port]/[export]` (port 10809 if omitted; the export is percent-decoded).
pub fn parse_uri(uri: &str) -> Result<NbdUri, NbdError> {
    let bad = |why: &str| NbdError::BadUri {
        uri: uri.to_owned(),
        why: why.to_owned(),
    };
    let (scheme, rest) = uri
        .split_once("://")
        .ok_or_else(|| bad("expected nbd://host:port/export"))?;
    if !scheme.eq_ignore_ascii_case("nbd") {
        return Err(bad(&format!(
            "scheme {scheme:?} is not supported, only nbd:// (no TLS, no unix sockets)"
        )));
    }
    if rest.contains('?') || rest.contains('#') {
        return Err(bad("query strings and fragments are not supported"));
    }
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (host, port) = split_host_port(authority).map_err(|why| bad(&why))?;
    if host.is_empty() {
        return Err(bad("no host"));
    }
    let export = percent_decode(path).ok_or_else(|| bad("bad percent-encoding in the export"))?;
    Ok(NbdUri {
        host: host.to_owned(),
        port,
        export,
    })
}

fn split_host_port(authority: &str) -> Result<(&str, u16), String> {
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or("unclosed '[' around an IPv6 host")?;
        match after {
            "" => (host, None),
            p => (host, Some(p.strip_prefix(':').ok_or("junk after ']'")?)),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, _)) if h.contains(':') => return Err("IPv6 hosts need [brackets]".into()),
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let port = match port {
        None => DEFAULT_PORT,
        Some(p) => match p.parse::<u16>() {
            Ok(port) if port != 0 => port,
            _ => return Err(format!("port {p:?} is not a number in 1..=65535")),
        },
    };
    Ok((host, port))
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// One connection to one export.
#[derive(Debug)]
pub struct NbdClient {
    stream: TcpStream,
    export: String,
    size: u64,
    flags: u16,
    max_block: Option<u32>,
    next_cookie: u64,
    timeout: Duration,
}

/// A connection whose handshake has reached option haggling.
struct Haggle {
    stream: TcpStream,
    no_zeroes: bool,
}

impl Haggle {
    async fn open(addr: &str, timeout: Duration) -> Result<Self, NbdError> {
        let connect = TcpStream::connect(addr);
        let mut stream = match tokio::time::timeout(timeout, connect).await {
            Err(_) => {
                return Err(NbdError::Timeout {
                    op: "connect",
                    after: timeout,
                });
            }
            Ok(r) => r.map_err(|source| NbdError::Connect {
                addr: addr.to_owned(),
                source,
            })?,
        };
        let _ = stream.set_nodelay(true);
        let mut buf = [0; proto::GREETING_LEN];
        read_exact(&mut stream, &mut buf, "handshake").await?;
        let greeting = Greeting::decode(&buf).map_err(|source| NbdError::Proto {
            op: "handshake",
            source,
        })?;
        if greeting.flags & handshake::FIXED_NEWSTYLE == 0 {
            return Err(NbdError::Handshake(
                "the server does not speak fixed newstyle".into(),
            ));
        }
        let no_zeroes = greeting.flags & handshake::NO_ZEROES != 0;
        let mut flags = client_flags::FIXED_NEWSTYLE;
        if no_zeroes {
            flags |= client_flags::NO_ZEROES;
        }
        write_all(&mut stream, &ClientFlags(flags).encode(), "handshake").await?;
        Ok(Self { stream, no_zeroes })
    }

    async fn send(&mut self, option: &ClientOption) -> Result<(), NbdError> {
        write_all(&mut self.stream, &option.encode(), "handshake").await
    }

    async fn reply(&mut self) -> Result<OptionReply, NbdError> {
        let proto_err = |source| NbdError::Proto {
            op: "handshake",
            source,
        };
        let mut head = [0; proto::OPTION_REPLY_HEADER_LEN];
        read_exact(&mut self.stream, &mut head, "handshake").await?;
        let header = OptionReplyHeader::decode(&head).map_err(proto_err)?;
        if header.len > proto::MAX_OPTION_DATA {
            return Err(NbdError::Handshake(format!(
                "option reply of {} bytes exceeds {}",
                header.len,
                proto::MAX_OPTION_DATA
            )));
        }
        let mut data = vec![0; header.len as usize];
        read_exact(&mut self.stream, &mut data, "handshake").await?;
        OptionReply::parse(header, &data).map_err(proto_err)
    }
}

impl NbdClient {
    /// Connects to export `export` at `addr` (`host:port`) with [`DEFAULT_TIMEOUT`].
    pub async fn connect(addr: &str, export: &str) -> Result<Self, NbdError> {
        Self::connect_with_timeout(addr, export, DEFAULT_TIMEOUT).await
    }

    /// Connects to the export a URI names.
    pub async fn connect_uri(uri: &NbdUri, timeout: Duration) -> Result<Self, NbdError> {
        Self::connect_with_timeout(&uri.addr(), &uri.export, timeout).await
    }

    /// Connects with `timeout` bounding the whole handshake and, later, every request.
    pub async fn connect_with_timeout(
        addr: &str,
        export: &str,
        timeout: Duration,
    ) -> Result<Self, NbdError> {
        let handshake = Self::handshake(addr, export, timeout);
        match tokio::time::timeout(timeout, handshake).await {
            Ok(r) => r,
            Err(_) => Err(NbdError::Timeout {
                op: "handshake",
                after: timeout,
            }),
        }
    }

    async fn handshake(addr: &str, export: &str, timeout: Duration) -> Result<Self, NbdError> {
        let mut h = Haggle::open(addr, timeout).await?;
        h.send(&ClientOption::Go(InfoRequest {
            name: export.to_owned(),
            items: vec![info::BLOCK_SIZE],
        }))
        .await?;
        let (mut size, mut flags, mut max_block) = (None, 0, None);
        loop {
            let reply = h.reply().await?;
            match reply.body {
                ReplyBody::Ack => break,
                ReplyBody::Info(Info::Export { size: s, flags: f }) => {
                    size = Some(s);
                    flags = f;
                }
                ReplyBody::Info(Info::BlockSize { max, .. }) => max_block = Some(max),
                ReplyBody::Error {
                    code: rep::ERR_UNSUP,
                    ..
                } => return Self::export_name(h, export, timeout).await,
                ReplyBody::Error {
                    code: rep::ERR_UNKNOWN,
                    message,
                } => {
                    return Err(NbdError::UnknownExport {
                        export: export.to_owned(),
                        message,
                    });
                }
                ReplyBody::Error { code, message } => {
                    return Err(NbdError::OptionRefused {
                        option: opt::GO,
                        code,
                        message,
                    });
                }
                _ => {}
            }
        }
        let size = size.ok_or_else(|| {
            NbdError::Handshake("the server acknowledged GO without NBD_INFO_EXPORT".into())
        })?;
        Ok(Self::ready(
            h.stream, export, size, flags, max_block, timeout,
        ))
    }

    /// The pre-GO way in, for servers that answer GO with ERR_UNSUP.
    async fn export_name(mut h: Haggle, export: &str, timeout: Duration) -> Result<Self, NbdError> {
        h.send(&ClientOption::ExportName(export.to_owned())).await?;
        let mut buf = vec![0; proto::EXPORT_NAME_REPLY_LEN];
        if !h.no_zeroes {
            buf.resize(proto::EXPORT_NAME_REPLY_LEN + proto::EXPORT_NAME_ZEROES, 0);
        }
        read_exact(&mut h.stream, &mut buf, "handshake").await?;
        let reply = ExportNameReply::decode(&buf).map_err(|source| NbdError::Proto {
            op: "handshake",
            source,
        })?;
        Ok(Self::ready(
            h.stream,
            export,
            reply.size,
            reply.flags,
            None,
            timeout,
        ))
    }

    fn ready(
        stream: TcpStream,
        export: &str,
        size: u64,
        flags: u16,
        max_block: Option<u32>,
        timeout: Duration,
    ) -> Self {
        Self {
            stream,
            export: export.to_owned(),
            size,
            flags,
            max_block,
            next_cookie: 1,
            timeout,
        }
    }

    /// The names a server exports (`NBD_OPT_LIST`), then aborts the handshake.
    pub async fn list_exports(addr: &str) -> Result<Vec<String>, NbdError> {
        let list = async {
            let mut h = Haggle::open(addr, DEFAULT_TIMEOUT).await?;
            h.send(&ClientOption::List).await?;
            let mut names = Vec::new();
            loop {
                match h.reply().await?.body {
                    ReplyBody::Ack => break,
                    ReplyBody::Server(name) => names.push(name),
                    ReplyBody::Error { code, message } => {
                        return Err(NbdError::OptionRefused {
                            option: opt::LIST,
                            code,
                            message,
                        });
                    }
                    _ => {}
                }
            }
            // A polite goodbye; the server may close without answering.
            let _ = h.send(&ClientOption::Abort).await;
            Ok(names)
        };
        match tokio::time::timeout(DEFAULT_TIMEOUT, list).await {
            Ok(r) => r,
            Err(_) => Err(NbdError::Timeout {
                op: "list",
                after: DEFAULT_TIMEOUT,
            }),
        }
    }

    pub fn export(&self) -> &str {
        &self.export
    }

    /// The export's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The export's transmission flags.
    pub fn flags(&self) -> u16 {
        self.flags
    }

    /// The largest request the server accepts, if it said.
    pub fn max_block(&self) -> Option<u32> {
        self.max_block
    }

    pub async fn read(&mut self, offset: u64, len: u32) -> Result<Vec<u8>, NbdError> {
        self.request(Command::Read, 0, offset, len, &[]).await
    }

    /// Writes `data` at `offset`; with `fua` the server makes it durable before replying.
    pub async fn write(&mut self, offset: u64, data: &[u8], fua: bool) -> Result<(), NbdError> {
        let len = u32::try_from(data.len()).map_err(|_| NbdError::TooLarge { len: data.len() })?;
        self.request(Command::Write, fua_flag(fua), offset, len, data)
            .await
            .map(drop)
    }

    pub async fn write_zeroes(&mut self, offset: u64, len: u32, fua: bool) -> Result<(), NbdError> {
        self.request(Command::WriteZeroes, fua_flag(fua), offset, len, &[])
            .await
            .map(drop)
    }

    pub async fn trim(&mut self, offset: u64, len: u32) -> Result<(), NbdError> {
        self.request(Command::Trim, 0, offset, len, &[])
            .await
            .map(drop)
    }

    /// Makes every write the server has acknowledged durable.
    pub async fn flush(&mut self) -> Result<(), NbdError> {
        self.request(Command::Flush, 0, 0, 0, &[]).await.map(drop)
    }

    /// Sends NBD_CMD_DISC and closes the connection.
    pub async fn disconnect(mut self) -> Result<(), NbdError> {
        let req = Request {
            flags: 0,
            command: Command::Disc,
            cookie: self.next_cookie,
            offset: 0,
            len: 0,
        };
        write_all(&mut self.stream, &req.encode(), "DISC").await?;
        let _ = self.stream.shutdown().await;
        Ok(())
    }

    async fn request(
        &mut self,
        command: Command,
        flags: u16,
        offset: u64,
        len: u32,
        payload: &[u8],
    ) -> Result<Vec<u8>, NbdError> {
        let cookie = self.next_cookie;
        self.next_cookie = self.next_cookie.wrapping_add(1);
        let req = Request {
            flags,
            command,
            cookie,
            offset,
            len,
        };
        let timeout = self.timeout;
        match tokio::time::timeout(timeout, self.exchange(req, payload)).await {
            Ok(r) => r,
            Err(_) => Err(NbdError::Timeout {
                op: command.name(),
                after: timeout,
            }),
        }
    }

    async fn exchange(&mut self, req: Request, payload: &[u8]) -> Result<Vec<u8>, NbdError> {
        let op = req.command.name();
        let mut out = Vec::with_capacity(proto::REQUEST_LEN + payload.len());
        out.extend_from_slice(&req.encode());
        out.extend_from_slice(payload);
        write_all(&mut self.stream, &out, op).await?;
        let mut head = [0; proto::REPLY_LEN];
        read_exact(&mut self.stream, &mut head, op).await?;
        let reply = SimpleReply::decode(&head).map_err(|source| NbdError::Proto { op, source })?;
        if reply.cookie != req.cookie {
            return Err(NbdError::CookieMismatch {
                want: req.cookie,
                got: reply.cookie,
            });
        }
        if reply.error != 0 {
            return Err(NbdError::Errno {
                command: op,
                offset: req.offset,
                len: u64::from(req.len),
                errno: reply.error,
                name: proto::errno_name(reply.error),
            });
        }
        if req.command != Command::Read {
            return Ok(Vec::new());
        }
        let mut data = vec![0; req.len as usize];
        read_exact(&mut self.stream, &mut data, op).await?;
        Ok(data)
    }
}

fn fua_flag(fua: bool) -> u16 {
    if fua { cmd_flags::FUA } else { 0 }
}

async fn read_exact(
    stream: &mut TcpStream,
    buf: &mut [u8],
    op: &'static str,
) -> Result<(), NbdError> {
    stream
        .read_exact(buf)
        .await
        .map(drop)
        .map_err(|source| NbdError::Io { op, source })
}

async fn write_all(stream: &mut TcpStream, buf: &[u8], op: &'static str) -> Result<(), NbdError> {
    stream
        .write_all(buf)
        .await
        .map_err(|source| NbdError::Io { op, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_parse_the_way_qemu_writes_them() {
        let u = parse_uri("nbd://127.0.0.1:10900/db").expect("uri");
        assert_eq!(
            u,
            NbdUri {
                host: "127.0.0.1".into(),
                port: 10900,
                export: "db".into()
            }
        );
        assert_eq!(u.to_string(), "nbd://127.0.0.1:10900/db");
        let u = parse_uri("nbd://[::1]/my%20vol").expect("v6 uri");
        assert_eq!((u.host.as_str(), u.port), ("::1", DEFAULT_PORT));
        assert_eq!(u.export, "my vol");
        assert_eq!(u.addr(), "[::1]:10809");
        let u = parse_uri("NBD://site1-host2").expect("no export");
        assert_eq!((u.host.as_str(), u.export.as_str()), ("site1-host2", ""));
    }

    #[test]
    fn bad_uris_say_what_is_wrong() {
        for (uri, why) in [
            ("127.0.0.1:10809/db", "expected nbd://"),
            ("nbds://h/db", "not supported"),
            ("nbd+unix:///db?socket=/s", "not supported"),
            ("nbd:///db", "no host"),
            ("nbd://h:0/db", "port"),
            ("nbd://h:x/db", "port"),
            ("nbd://::1/db", "brackets"),
            ("nbd://[::1/db", "unclosed"),
            ("nbd://h/db?x=1", "query"),
            ("nbd://h/%zz", "percent"),
        ] {
            match parse_uri(uri) {
                Err(e @ NbdError::BadUri { .. }) => {
                    assert!(e.to_string().contains(why), "{uri}: {e}")
                }
                other => panic!("{uri}: {other:?}"),
            }
        }
    }

    #[test]
    fn errno_errors_name_the_errno_and_keep_the_connection() {
        let e = NbdError::Errno {
            command: "WRITE",
            offset: 4096,
            len: 16,
            errno: 1,
            name: proto::errno_name(1),
        };
        assert_eq!(
            e.to_string(),
            "NBD WRITE at offset 4096 length 16 failed: EPERM (1)"
        );
        assert!(!e.is_connection());
        assert_eq!(e.errno(), Some(1));
    }
}
