//! Option haggling decided without I/O: which replies an option gets and whether the
//! handshake goes on, enters transmission, or ends.
//!
//! Invariant: only a known export enters transmission; an unknown one named by GO or INFO gets
//! `NBD_REP_ERR_UNKNOWN` (by EXPORT_NAME, which cannot be refused, the connection closes).

use std::sync::Arc;

use super::Exports;
use super::Limits;
use crate::device::BlockDevice;
use crate::nbd::proto::{
    ClientOption, Info, InfoRequest, OptionReply, ProtoError, ReplyBody, info, rep, tx_flags,
};

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
    /// Chosen with `NBD_OPT_EXPORT_NAME`, which is answered by [`crate::nbd::proto::ExportNameReply`].
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::FileDisk;
    use crate::nbd::proto;
    use crate::nbd::server::StaticExports;

    fn limits() -> Limits {
        Limits {
            max_request: 1 << 20,
            ..Limits::default()
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
