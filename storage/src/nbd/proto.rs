//! A sans-IO codec for the NBD protocol (fixed newstyle handshake, simple replies), both
//! directions: the server decodes what the client encodes and the other way round.
//!
//! Owns: the wire constants, every message the server and the client exchange as a typed value,
//! and `encode`/`decode` for each. Decoders take a byte slice and return a typed error naming
//! what was wrong; they never panic on any input (property-tested) and never allocate more than
//! the input holds.
//!
//! Framing is the caller's: fixed-size headers (`*_LEN`) are read whole, then the payload length
//! the header names. This module does not do I/O, decide what to answer (see
//! [`super::server`]), or speak structured replies, TLS, block status or extended headers.
//!
//! Reference: <https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md>.

/// `NBDMAGIC`, the first 8 bytes the server sends.
pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`: the newstyle magic, and the prefix of every option request.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Prefix of every option reply.
pub const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Prefix of every transmission request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Prefix of every simple reply.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// Prefix of a structured reply chunk (never negotiated here; recognised to name it in errors).
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

/// Bytes in the server's greeting: NBDMAGIC, IHAVEOPT, handshake flags.
pub const GREETING_LEN: usize = 18;
/// Bytes in an option request header: IHAVEOPT, option, length.
pub const OPTION_HEADER_LEN: usize = 16;
/// Bytes in an option reply header: magic, option, reply type, length.
pub const OPTION_REPLY_HEADER_LEN: usize = 20;
/// Bytes in a transmission request header.
pub const REQUEST_LEN: usize = 28;
/// Bytes in a simple reply header.
pub const REPLY_LEN: usize = 16;
/// Bytes in the reply to `NBD_OPT_EXPORT_NAME` without the 124 zero bytes.
pub const EXPORT_NAME_REPLY_LEN: usize = 10;
/// The zero padding after an `NBD_OPT_EXPORT_NAME` reply unless NO_ZEROES was agreed.
pub const EXPORT_NAME_ZEROES: usize = 124;
/// The protocol's ceiling for strings (export names, error messages).
pub const MAX_STRING: usize = 4096;
/// The largest option (or option reply) payload either side accepts: a name, a few info
/// requests, or a message; anything longer is refused before it is read.
pub const MAX_OPTION_DATA: u32 = 16 * 1024;

/// Handshake flags (server → client).
pub mod handshake {
    pub const FIXED_NEWSTYLE: u16 = 1 << 0;
    pub const NO_ZEROES: u16 = 1 << 1;
}

/// Client flags (client → server, after the greeting).
pub mod client_flags {
    pub const FIXED_NEWSTYLE: u32 = 1 << 0;
    pub const NO_ZEROES: u32 = 1 << 1;
    pub const KNOWN: u32 = FIXED_NEWSTYLE | NO_ZEROES;
}

/// Transmission flags (per export).
pub mod tx_flags {
    pub const HAS_FLAGS: u16 = 1 << 0;
    pub const READ_ONLY: u16 = 1 << 1;
    pub const SEND_FLUSH: u16 = 1 << 2;
    pub const SEND_FUA: u16 = 1 << 3;
    pub const ROTATIONAL: u16 = 1 << 4;
    pub const SEND_TRIM: u16 = 1 << 5;
    pub const SEND_WRITE_ZEROES: u16 = 1 << 6;
    pub const CAN_MULTI_CONN: u16 = 1 << 8;
}

/// Option codes.
pub mod opt {
    pub const EXPORT_NAME: u32 = 1;
    pub const ABORT: u32 = 2;
    pub const LIST: u32 = 3;
    pub const STARTTLS: u32 = 5;
    pub const INFO: u32 = 6;
    pub const GO: u32 = 7;
    pub const STRUCTURED_REPLY: u32 = 8;
}

/// Option reply types; errors have bit 31 set.
pub mod rep {
    pub const ACK: u32 = 1;
    pub const SERVER: u32 = 2;
    pub const INFO: u32 = 3;
    pub const ERR_BIT: u32 = 1 << 31;
    pub const ERR_UNSUP: u32 = ERR_BIT + 1;
    pub const ERR_POLICY: u32 = ERR_BIT + 2;
    pub const ERR_INVALID: u32 = ERR_BIT + 3;
    pub const ERR_UNKNOWN: u32 = ERR_BIT + 6;
    pub const ERR_SHUTDOWN: u32 = ERR_BIT + 7;
    pub const ERR_TOO_BIG: u32 = ERR_BIT + 9;
}

/// Information types in `NBD_REP_INFO` (and in the request list of INFO/GO).
pub mod info {
    pub const EXPORT: u16 = 0;
    pub const NAME: u16 = 1;
    pub const DESCRIPTION: u16 = 2;
    pub const BLOCK_SIZE: u16 = 3;
}

/// Command flags in a transmission request.
pub mod cmd_flags {
    pub const FUA: u16 = 1 << 0;
    pub const NO_HOLE: u16 = 1 << 1;
    pub const DF: u16 = 1 << 2;
    pub const REQ_ONE: u16 = 1 << 3;
    pub const FAST_ZERO: u16 = 1 << 4;
}

/// The name of an NBD error number, for messages (`EPERM`, ...).
pub fn errno_name(errno: u32) -> &'static str {
    use crate::device::errno::*;
    match errno {
        0 => "OK",
        EPERM => "EPERM",
        EIO => "EIO",
        ENOMEM => "ENOMEM",
        EINVAL => "EINVAL",
        ENOSPC => "ENOSPC",
        EOVERFLOW => "EOVERFLOW",
        ENOTSUP => "ENOTSUP",
        ESHUTDOWN => "ESHUTDOWN",
        _ => "unknown errno",
    }
}

/// What was wrong with bytes handed to a decoder.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    #[error("{what}: {have} bytes, need {need}")]
    Truncated {
        what: &'static str,
        need: usize,
        have: usize,
    },
    #[error("{what}: bad magic {got:#x}")]
    BadMagic { what: &'static str, got: u64 },
    #[error("{what}: {len} bytes exceeds the limit of {max}")]
    TooLong {
        what: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{what}: not valid UTF-8 without NUL")]
    BadString { what: &'static str },
    #[error("{what}: {extra} unexpected trailing bytes")]
    Trailing { what: &'static str, extra: usize },
    #[error("a structured reply arrived but structured replies were not negotiated")]
    UnexpectedStructuredReply,
}

/// A bounds-checked reader over a byte slice.
struct Cursor<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Cursor<'a> {
    fn new(buf: &'a [u8], what: &'static str) -> Self {
        Self { buf, what }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ProtoError> {
        if self.buf.len() < n {
            return Err(ProtoError::Truncated {
                what: self.what,
                need: n,
                have: self.buf.len(),
            });
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], ProtoError> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u16(&mut self) -> Result<u16, ProtoError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, ProtoError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, ProtoError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    fn string(&mut self, len: usize) -> Result<String, ProtoError> {
        if len > MAX_STRING {
            return Err(ProtoError::TooLong {
                what: self.what,
                len,
                max: MAX_STRING,
            });
        }
        let bytes = self.take(len)?;
        to_string(bytes, self.what)
    }

    fn end(&self) -> Result<(), ProtoError> {
        match self.buf.len() {
            0 => Ok(()),
            extra => Err(ProtoError::Trailing {
                what: self.what,
                extra,
            }),
        }
    }
}

fn to_string(bytes: &[u8], what: &'static str) -> Result<String, ProtoError> {
    if bytes.len() > MAX_STRING {
        return Err(ProtoError::TooLong {
            what,
            len: bytes.len(),
            max: MAX_STRING,
        });
    }
    match std::str::from_utf8(bytes) {
        Ok(s) if !s.contains('\0') => Ok(s.to_owned()),
        _ => Err(ProtoError::BadString { what }),
    }
}

fn len_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn magic64(c: &mut Cursor<'_>, want: u64) -> Result<(), ProtoError> {
    let got = c.u64()?;
    if got == want {
        Ok(())
    } else {
        Err(ProtoError::BadMagic { what: c.what, got })
    }
}

/// The server's greeting: NBDMAGIC, IHAVEOPT, handshake flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Greeting {
    pub flags: u16,
}

impl Greeting {
    pub fn encode(&self) -> [u8; GREETING_LEN] {
        let mut out = [0; GREETING_LEN];
        out[..8].copy_from_slice(&NBDMAGIC.to_be_bytes());
        out[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
        out[16..].copy_from_slice(&self.flags.to_be_bytes());
        out
    }

    pub fn decode(buf: &[u8]) -> Result<Self, ProtoError> {
        let mut c = Cursor::new(buf, "server greeting");
        magic64(&mut c, NBDMAGIC)?;
        magic64(&mut c, IHAVEOPT)?;
        let flags = c.u16()?;
        c.end()?;
        Ok(Self { flags })
    }
}

/// The client's flags, sent once after the greeting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientFlags(pub u32);

impl ClientFlags {
    pub fn encode(&self) -> [u8; 4] {
        self.0.to_be_bytes()
    }

    pub fn decode(buf: &[u8]) -> Result<Self, ProtoError> {
        let mut c = Cursor::new(buf, "client flags");
        let flags = c.u32()?;
        c.end()?;
        Ok(Self(flags))
    }
}

/// An option request's header; `len` bytes of data follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionHeader {
    pub option: u32,
    pub len: u32,
}

impl OptionHeader {
    pub fn decode(buf: &[u8]) -> Result<Self, ProtoError> {
        let mut c = Cursor::new(buf, "option header");
        magic64(&mut c, IHAVEOPT)?;
        let option = c.u32()?;
        let len = c.u32()?;
        c.end()?;
        Ok(Self { option, len })
    }

    pub fn encode(&self) -> [u8; OPTION_HEADER_LEN] {
        let mut out = [0; OPTION_HEADER_LEN];
        out[..8].copy_from_slice(&IHAVEOPT.to_be_bytes());
        out[8..12].copy_from_slice(&self.option.to_be_bytes());
        out[12..].copy_from_slice(&self.len.to_be_bytes());
        out
    }
}

/// The export and the information items an `NBD_OPT_INFO`/`NBD_OPT_GO` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfoRequest {
    pub name: String,
    pub items: Vec<u16>,
}

/// An option the client sends during the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientOption {
    ExportName(String),
    Abort,
    List,
    Info(InfoRequest),
    Go(InfoRequest),
    StructuredReply,
    /// Any option this codec does not parse (STARTTLS, meta contexts, ...), data kept raw.
    Other {
        option: u32,
        data: Vec<u8>,
    },
}

impl ClientOption {
    pub fn code(&self) -> u32 {
        match self {
            ClientOption::ExportName(_) => opt::EXPORT_NAME,
            ClientOption::Abort => opt::ABORT,
            ClientOption::List => opt::LIST,
            ClientOption::Info(_) => opt::INFO,
            ClientOption::Go(_) => opt::GO,
            ClientOption::StructuredReply => opt::STRUCTURED_REPLY,
            ClientOption::Other { option, .. } => *option,
        }
    }

    fn data(&self) -> Vec<u8> {
        match self {
            ClientOption::ExportName(name) => name.as_bytes().to_vec(),
            ClientOption::Abort | ClientOption::List | ClientOption::StructuredReply => Vec::new(),
            ClientOption::Info(req) | ClientOption::Go(req) => {
                let mut out = Vec::with_capacity(6 + req.name.len() + 2 * req.items.len());
                out.extend_from_slice(&len_u32(req.name.len()).to_be_bytes());
                out.extend_from_slice(req.name.as_bytes());
                let count = u16::try_from(req.items.len()).unwrap_or(u16::MAX);
                out.extend_from_slice(&count.to_be_bytes());
                for item in req.items.iter().take(usize::from(count)) {
                    out.extend_from_slice(&item.to_be_bytes());
                }
                out
            }
            ClientOption::Other { data, .. } => data.clone(),
        }
    }

    /// The whole option request: header and data.
    pub fn encode(&self) -> Vec<u8> {
        let data = self.data();
        let header = OptionHeader {
            option: self.code(),
            len: len_u32(data.len()),
        };
        let mut out = header.encode().to_vec();
        out.extend_from_slice(&data);
        out
    }

    /// Parses the data of option `option` (its header already read). An error means the option
    /// is known but its data is malformed (the server answers `NBD_REP_ERR_INVALID`).
    pub fn parse(option: u32, data: &[u8]) -> Result<Self, ProtoError> {
        let empty = |o: ClientOption, what| {
            Cursor::new(data, what).end()?;
            Ok(o)
        };
        match option {
            opt::EXPORT_NAME => Ok(ClientOption::ExportName(to_string(data, "export name")?)),
            opt::ABORT => empty(ClientOption::Abort, "NBD_OPT_ABORT"),
            opt::LIST => empty(ClientOption::List, "NBD_OPT_LIST"),
            opt::STRUCTURED_REPLY => {
                empty(ClientOption::StructuredReply, "NBD_OPT_STRUCTURED_REPLY")
            }
            opt::INFO => Ok(ClientOption::Info(parse_info_request(data)?)),
            opt::GO => Ok(ClientOption::Go(parse_info_request(data)?)),
            option => Ok(ClientOption::Other {
                option,
                data: data.to_vec(),
            }),
        }
    }

    /// Decodes a whole option request (header and data).
    pub fn decode(buf: &[u8]) -> Result<Self, ProtoError> {
        let header = OptionHeader::decode(buf.get(..OPTION_HEADER_LEN).unwrap_or(buf))?;
        let data = &buf[OPTION_HEADER_LEN..];
        if data.len() != header.len as usize {
            return Err(ProtoError::Truncated {
                what: "option data",
                need: header.len as usize,
                have: data.len(),
            });
        }
        Self::parse(header.option, data)
    }
}

fn parse_info_request(data: &[u8]) -> Result<InfoRequest, ProtoError> {
    let mut c = Cursor::new(data, "NBD_OPT_INFO/GO data");
    let name_len = c.u32()? as usize;
    let name = c.string(name_len)?;
    let count = c.u16()?;
    let mut items = Vec::with_capacity(usize::from(count).min(data.len() / 2));
    for _ in 0..count {
        items.push(c.u16()?);
    }
    c.end()?;
    Ok(InfoRequest { name, items })
}

/// One item of an `NBD_REP_INFO` reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Info {
    Export { size: u64, flags: u16 },
    Name(String),
    Description(String),
    BlockSize { min: u32, preferred: u32, max: u32 },
    Other { kind: u16, data: Vec<u8> },
}

impl Info {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Info::Export { size, flags } => {
                out.extend_from_slice(&info::EXPORT.to_be_bytes());
                out.extend_from_slice(&size.to_be_bytes());
                out.extend_from_slice(&flags.to_be_bytes());
            }
            Info::Name(s) | Info::Description(s) => {
                let kind = if matches!(self, Info::Name(_)) {
                    info::NAME
                } else {
                    info::DESCRIPTION
                };
                out.extend_from_slice(&kind.to_be_bytes());
                out.extend_from_slice(s.as_bytes());
            }
            Info::BlockSize {
                min,
                preferred,
                max,
            } => {
                out.extend_from_slice(&info::BLOCK_SIZE.to_be_bytes());
                for v in [min, preferred, max] {
                    out.extend_from_slice(&v.to_be_bytes());
                }
            }
            Info::Other { kind, data } => {
                out.extend_from_slice(&kind.to_be_bytes());
                out.extend_from_slice(data);
            }
        }
        out
    }

    fn decode(data: &[u8]) -> Result<Self, ProtoError> {
        let mut c = Cursor::new(data, "NBD_REP_INFO");
        let kind = c.u16()?;
        let item = match kind {
            info::EXPORT => Info::Export {
                size: c.u64()?,
                flags: c.u16()?,
            },
            info::NAME => Info::Name(to_string(c.rest(), "NBD_INFO_NAME")?),
            info::DESCRIPTION => Info::Description(to_string(c.rest(), "NBD_INFO_DESCRIPTION")?),
            info::BLOCK_SIZE => Info::BlockSize {
                min: c.u32()?,
                preferred: c.u32()?,
                max: c.u32()?,
            },
            kind => Info::Other {
                kind,
                data: c.rest().to_vec(),
            },
        };
        c.end()?;
        Ok(item)
    }
}

/// The body of an option reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyBody {
    Ack,
    /// One export of `NBD_OPT_LIST`.
    Server(String),
    Info(Info),
    /// An error reply (`code` has bit 31 set) with its message.
    Error {
        code: u32,
        message: String,
    },
    /// A non-error reply type this codec does not parse.
    Other {
        kind: u32,
        data: Vec<u8>,
    },
}

/// A reply to an option request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptionReply {
    pub option: u32,
    pub body: ReplyBody,
}

/// An option reply's header; `len` bytes of data follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionReplyHeader {
    pub option: u32,
    pub kind: u32,
    pub len: u32,
}

impl OptionReplyHeader {
    pub fn decode(buf: &[u8]) -> Result<Self, ProtoError> {
        let mut c = Cursor::new(buf, "option reply header");
        magic64(&mut c, OPT_REPLY_MAGIC)?;
        let header = Self {
            option: c.u32()?,
            kind: c.u32()?,
            len: c.u32()?,
        };
        c.end()?;
        Ok(header)
    }
}

impl OptionReply {
    pub fn ack(option: u32) -> Self {
        Self {
            option,
            body: ReplyBody::Ack,
        }
    }

    pub fn error(option: u32, code: u32, message: impl Into<String>) -> Self {
        Self {
            option,
            body: ReplyBody::Error {
                code,
                message: message.into(),
            },
        }
    }

    fn kind_and_data(&self) -> (u32, Vec<u8>) {
        match &self.body {
            ReplyBody::Ack => (rep::ACK, Vec::new()),
            ReplyBody::Server(name) => {
                let mut data = len_u32(name.len()).to_be_bytes().to_vec();
                data.extend_from_slice(name.as_bytes());
                (rep::SERVER, data)
            }
            ReplyBody::Info(item) => (rep::INFO, item.encode()),
            ReplyBody::Error { code, message } => (*code, message.as_bytes().to_vec()),
            ReplyBody::Other { kind, data } => (*kind, data.clone()),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let (kind, data) = self.kind_and_data();
        let mut out = Vec::with_capacity(OPTION_REPLY_HEADER_LEN + data.len());
        out.extend_from_slice(&OPT_REPLY_MAGIC.to_be_bytes());
        out.extend_from_slice(&self.option.to_be_bytes());
        out.extend_from_slice(&kind.to_be_bytes());
        out.extend_from_slice(&len_u32(data.len()).to_be_bytes());
        out.extend_from_slice(&data);
        out
    }

    /// Parses the data of a reply whose header was already read.
    pub fn parse(header: OptionReplyHeader, data: &[u8]) -> Result<Self, ProtoError> {
        let body = match header.kind {
            rep::ACK => {
                Cursor::new(data, "NBD_REP_ACK").end()?;
                ReplyBody::Ack
            }
            rep::SERVER => {
                let mut c = Cursor::new(data, "NBD_REP_SERVER");
                let len = c.u32()? as usize;
                let name = c.string(len)?;
                // Anything after the name is a human-readable description we do not keep.
                ReplyBody::Server(name)
            }
            rep::INFO => ReplyBody::Info(Info::decode(data)?),
            code if code & rep::ERR_BIT != 0 => ReplyBody::Error {
                code,
                message: String::from_utf8_lossy(data).into_owned(),
            },
            kind => ReplyBody::Other {
                kind,
                data: data.to_vec(),
            },
        };
        Ok(Self {
            option: header.option,
            body,
        })
    }

    /// Decodes a whole option reply (header and data).
    pub fn decode(buf: &[u8]) -> Result<Self, ProtoError> {
        let header = OptionReplyHeader::decode(buf.get(..OPTION_REPLY_HEADER_LEN).unwrap_or(buf))?;
        let data = &buf[OPTION_REPLY_HEADER_LEN..];
        if data.len() != header.len as usize {
            return Err(ProtoError::Truncated {
                what: "option reply data",
                need: header.len as usize,
                have: data.len(),
            });
        }
        Self::parse(header, data)
    }
}

/// The server's answer to `NBD_OPT_EXPORT_NAME`: size and transmission flags (then 124 zero
/// bytes unless both sides agreed on NO_ZEROES).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportNameReply {
    pub size: u64,
    pub flags: u16,
}

impl ExportNameReply {
    pub fn encode(&self, zeroes: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(EXPORT_NAME_REPLY_LEN + EXPORT_NAME_ZEROES);
        out.extend_from_slice(&self.size.to_be_bytes());
        out.extend_from_slice(&self.flags.to_be_bytes());
        if zeroes {
            out.extend_from_slice(&[0; EXPORT_NAME_ZEROES]);
        }
        out
    }

    /// Decodes the first [`EXPORT_NAME_REPLY_LEN`] bytes (the caller skips any zeroes).
    pub fn decode(buf: &[u8]) -> Result<Self, ProtoError> {
        let mut c = Cursor::new(buf, "export name reply");
        Ok(Self {
            size: c.u64()?,
            flags: c.u16()?,
        })
    }
}

/// A transmission command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Read,
    Write,
    Disc,
    Flush,
    Trim,
    WriteZeroes,
    /// CACHE, BLOCK_STATUS, RESIZE or anything unknown: refused with EINVAL.
    Other(u16),
}

impl Command {
    pub fn code(self) -> u16 {
        match self {
            Command::Read => 0,
            Command::Write => 1,
            Command::Disc => 2,
            Command::Flush => 3,
            Command::Trim => 4,
            Command::WriteZeroes => 6,
            Command::Other(c) => c,
        }
    }

    pub fn from_code(code: u16) -> Self {
        match code {
            0 => Command::Read,
            1 => Command::Write,
            2 => Command::Disc,
            3 => Command::Flush,
            4 => Command::Trim,
            6 => Command::WriteZeroes,
            c => Command::Other(c),
        }
    }

    /// The protocol's name, for logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Command::Read => "READ",
            Command::Write => "WRITE",
            Command::Disc => "DISC",
            Command::Flush => "FLUSH",
            Command::Trim => "TRIM",
            Command::WriteZeroes => "WRITE_ZEROES",
            Command::Other(_) => "OTHER",
        }
    }
}

/// A transmission request header; a WRITE is followed by `len` bytes of data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub flags: u16,
    pub command: Command,
    pub cookie: u64,
    pub offset: u64,
    pub len: u32,
}

impl Request {
    pub fn encode(&self) -> [u8; REQUEST_LEN] {
        let mut out = [0; REQUEST_LEN];
        out[..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        out[4..6].copy_from_slice(&self.flags.to_be_bytes());
        out[6..8].copy_from_slice(&self.command.code().to_be_bytes());
        out[8..16].copy_from_slice(&self.cookie.to_be_bytes());
        out[16..24].copy_from_slice(&self.offset.to_be_bytes());
        out[24..].copy_from_slice(&self.len.to_be_bytes());
        out
    }

    /// Decodes a request header. Only a bad magic (or a short buffer) is an error: an unknown
    /// command or flag is well-framed and gets an error reply.
    pub fn decode(buf: &[u8]) -> Result<Self, ProtoError> {
        let mut c = Cursor::new(buf, "request");
        let magic = c.u32()?;
        if magic != REQUEST_MAGIC {
            return Err(ProtoError::BadMagic {
                what: "request",
                got: u64::from(magic),
            });
        }
        let req = Self {
            flags: c.u16()?,
            command: Command::from_code(c.u16()?),
            cookie: c.u64()?,
            offset: c.u64()?,
            len: c.u32()?,
        };
        c.end()?;
        Ok(req)
    }

    pub fn fua(&self) -> bool {
        self.flags & cmd_flags::FUA != 0
    }
}

/// A simple reply header; a successful READ is followed by the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimpleReply {
    pub error: u32,
    pub cookie: u64,
}

impl SimpleReply {
    pub fn encode(&self) -> [u8; REPLY_LEN] {
        let mut out = [0; REPLY_LEN];
        out[..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
        out[4..8].copy_from_slice(&self.error.to_be_bytes());
        out[8..].copy_from_slice(&self.cookie.to_be_bytes());
        out
    }

    pub fn decode(buf: &[u8]) -> Result<Self, ProtoError> {
        let mut c = Cursor::new(buf, "simple reply");
        match c.u32()? {
            SIMPLE_REPLY_MAGIC => {}
            STRUCTURED_REPLY_MAGIC => return Err(ProtoError::UnexpectedStructuredReply),
            got => {
                return Err(ProtoError::BadMagic {
                    what: "simple reply",
                    got: u64::from(got),
                });
            }
        }
        let reply = Self {
            error: c.u32()?,
            cookie: c.u64()?,
        };
        c.end()?;
        Ok(reply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn name() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9/_.-]{0,40}"
    }

    fn info_request() -> impl Strategy<Value = InfoRequest> {
        (name(), proptest::collection::vec(any::<u16>(), 0..8))
            .prop_map(|(name, items)| InfoRequest { name, items })
    }

    fn option() -> impl Strategy<Value = ClientOption> {
        prop_oneof![
            name().prop_map(ClientOption::ExportName),
            Just(ClientOption::Abort),
            Just(ClientOption::List),
            Just(ClientOption::StructuredReply),
            info_request().prop_map(ClientOption::Info),
            info_request().prop_map(ClientOption::Go),
            (9u32.., proptest::collection::vec(any::<u8>(), 0..64))
                .prop_map(|(option, data)| ClientOption::Other { option, data }),
        ]
    }

    fn info() -> impl Strategy<Value = Info> {
        prop_oneof![
            (any::<u64>(), any::<u16>()).prop_map(|(size, flags)| Info::Export { size, flags }),
            name().prop_map(Info::Name),
            name().prop_map(Info::Description),
            (any::<u32>(), any::<u32>(), any::<u32>()).prop_map(|(min, preferred, max)| {
                Info::BlockSize {
                    min,
                    preferred,
                    max,
                }
            }),
            (4u16.., proptest::collection::vec(any::<u8>(), 0..32))
                .prop_map(|(kind, data)| Info::Other { kind, data }),
        ]
    }

    fn reply_body() -> impl Strategy<Value = ReplyBody> {
        prop_oneof![
            Just(ReplyBody::Ack),
            name().prop_map(ReplyBody::Server),
            info().prop_map(ReplyBody::Info),
            (rep::ERR_BIT.., name()).prop_map(|(code, message)| ReplyBody::Error { code, message }),
            (
                4u32..rep::ERR_BIT,
                proptest::collection::vec(any::<u8>(), 0..32)
            )
                .prop_map(|(kind, data)| ReplyBody::Other { kind, data }),
        ]
    }

    fn command() -> impl Strategy<Value = Command> {
        any::<u16>().prop_map(Command::from_code)
    }

    proptest! {
        #[test]
        fn greetings_and_client_flags_round_trip(flags in any::<u16>(), cflags in any::<u32>()) {
            let g = Greeting { flags };
            prop_assert_eq!(Greeting::decode(&g.encode()), Ok(g));
            let c = ClientFlags(cflags);
            prop_assert_eq!(ClientFlags::decode(&c.encode()), Ok(c));
        }

        #[test]
        fn options_round_trip(o in option()) {
            prop_assert_eq!(ClientOption::decode(&o.encode()), Ok(o));
        }

        #[test]
        fn option_replies_round_trip(option in any::<u32>(), body in reply_body()) {
            let r = OptionReply { option, body };
            prop_assert_eq!(OptionReply::decode(&r.encode()), Ok(r));
        }

        #[test]
        fn export_name_replies_round_trip(size in any::<u64>(), flags in any::<u16>(), zeroes in any::<bool>()) {
            let r = ExportNameReply { size, flags };
            let bytes = r.encode(zeroes);
            prop_assert_eq!(bytes.len(), EXPORT_NAME_REPLY_LEN + if zeroes { EXPORT_NAME_ZEROES } else { 0 });
            prop_assert_eq!(ExportNameReply::decode(&bytes), Ok(r));
        }

        #[test]
        fn requests_and_replies_round_trip(
            flags in any::<u16>(), command in command(), cookie in any::<u64>(),
            offset in any::<u64>(), len in any::<u32>(), error in any::<u32>(),
        ) {
            let req = Request { flags, command, cookie, offset, len };
            prop_assert_eq!(Request::decode(&req.encode()), Ok(req));
            let reply = SimpleReply { error, cookie };
            prop_assert_eq!(SimpleReply::decode(&reply.encode()), Ok(reply));
        }

        #[test]
        fn garbage_never_panics_a_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..128), code in any::<u32>()) {
            let _ = Request::decode(&bytes);
            let _ = SimpleReply::decode(&bytes);
            let _ = Greeting::decode(&bytes);
            let _ = ClientFlags::decode(&bytes);
            let _ = OptionHeader::decode(&bytes);
            let _ = ClientOption::decode(&bytes);
            let _ = ClientOption::parse(code % 12, &bytes);
            let _ = OptionReply::decode(&bytes);
            let _ = ExportNameReply::decode(&bytes);
            if let Ok(h) = OptionReplyHeader::decode(bytes.get(..OPTION_REPLY_HEADER_LEN).unwrap_or(&bytes)) {
                let _ = OptionReply::parse(h, bytes.get(OPTION_REPLY_HEADER_LEN..).unwrap_or(&[]));
            }
        }

        #[test]
        fn garbage_after_a_valid_magic_never_panics(tail in proptest::collection::vec(any::<u8>(), 0..64), code in any::<u32>()) {
            let mut req = REQUEST_MAGIC.to_be_bytes().to_vec();
            req.extend_from_slice(&tail);
            let _ = Request::decode(&req);
            let mut opt = IHAVEOPT.to_be_bytes().to_vec();
            opt.extend_from_slice(&(code % 12).to_be_bytes());
            opt.extend_from_slice(&tail);
            let _ = ClientOption::decode(&opt);
            let mut rep = OPT_REPLY_MAGIC.to_be_bytes().to_vec();
            rep.extend_from_slice(&tail);
            let _ = OptionReply::decode(&rep);
        }
    }

    #[test]
    fn a_go_request_claiming_more_items_than_it_holds_is_truncated() {
        let mut data = 3u32.to_be_bytes().to_vec();
        data.extend_from_slice(b"vol");
        data.extend_from_slice(&u16::MAX.to_be_bytes());
        data.extend_from_slice(&info::BLOCK_SIZE.to_be_bytes());
        let err = ClientOption::parse(opt::GO, &data);
        assert!(matches!(err, Err(ProtoError::Truncated { .. })), "{err:?}");
    }

    #[test]
    fn a_list_with_data_and_a_name_with_nul_are_invalid() {
        assert!(matches!(
            ClientOption::parse(opt::LIST, b"x"),
            Err(ProtoError::Trailing { .. })
        ));
        assert!(matches!(
            ClientOption::parse(opt::EXPORT_NAME, b"a\0b"),
            Err(ProtoError::BadString { .. })
        ));
    }

    #[test]
    fn a_structured_reply_is_named_as_such() {
        let mut buf = STRUCTURED_REPLY_MAGIC.to_be_bytes().to_vec();
        buf.extend_from_slice(&[0; 12]);
        assert_eq!(
            SimpleReply::decode(&buf),
            Err(ProtoError::UnexpectedStructuredReply)
        );
    }

    #[test]
    fn the_greeting_matches_the_spec_bytes() {
        let g = Greeting {
            flags: handshake::FIXED_NEWSTYLE | handshake::NO_ZEROES,
        };
        assert_eq!(&g.encode()[..16], b"NBDMAGICIHAVEOPT");
        assert_eq!(&g.encode()[16..], &[0, 3]);
    }
}
