//! A sans-IO codec for the NBD protocol (fixed newstyle handshake, simple replies), both
//! directions: the server decodes what the client encodes and the other way round.
//!
//! Owns: the wire constants, every message the server and the client exchange as a typed value,
//! and `encode`/`decode` for each. Decoders take a byte slice and return a typed error naming
//! what was wrong; they never panic on any input (property-tested) and never allocate more than
//! the input holds.
//!
//! The messages live in two submodules, re-exported here: `negotiation` (the handshake) and
//! `transmission` (requests and replies); this file holds the constants and the checked reader.
//!
//! Framing is the caller's: fixed-size headers (`*_LEN`) are read whole, then the payload length
//! the header names. This module does not do I/O, decide what to answer (see
//! [`super::server`]), or speak structured replies, TLS, block status or extended headers.
//!
//! Reference: <https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md>.

mod negotiation;
mod transmission;

pub use negotiation::{
    ClientFlags, ClientOption, ExportNameReply, Greeting, Info, InfoRequest, OptionHeader,
    OptionReply, OptionReplyHeader, ReplyBody,
};
pub use transmission::{Command, Request, SimpleReply};

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
