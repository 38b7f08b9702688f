//! Handshake messages: the greeting, client flags, option requests and their replies, and the
//! reply to `NBD_OPT_EXPORT_NAME`.
//!
//! Owns their typed form and byte layout. Option data the codec does not parse is kept raw
//! ([`ClientOption::Other`], [`ReplyBody::Other`], [`Info::Other`]) so a peer can answer it.

use super::{
    Cursor, EXPORT_NAME_REPLY_LEN, EXPORT_NAME_ZEROES, GREETING_LEN, IHAVEOPT, NBDMAGIC,
    OPT_REPLY_MAGIC, OPTION_HEADER_LEN, OPTION_REPLY_HEADER_LEN, ProtoError, info, len_u32,
    magic64, opt, rep, to_string,
};

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
