//! Transmission messages: request headers and simple replies.
//!
//! Owns their typed form and byte layout; payloads (WRITE data, READ data) follow on the wire
//! and are the caller's to read or write.

use super::{
    Cursor, ProtoError, REPLY_LEN, REQUEST_LEN, REQUEST_MAGIC, SIMPLE_REPLY_MAGIC,
    STRUCTURED_REPLY_MAGIC, cmd_flags,
};

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
