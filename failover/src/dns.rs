//! The authoritative DNS server for the fabric zone: sockets, packets and the per-query glue.
//!
//! Owns: the UDP socket and TCP listener (bound together on one port at start-up), the
//! hickory-server loop that frames and parses requests, and the request-level checks a single
//! question needs before [`zone::answer`] can decide it (opcode, question count, class, EDNS
//! version). Per query it reads the latest [`ZoneSnapshot`] from the agent's watch channel and
//! asks the agent's `vouch` callback whether it may still vouch for that data.
//!
//! Invariant: every reply comes from [`zone::answer`] or is an error reply about the request
//! itself; this module never invents records. A malformed packet is dropped (shorter than a
//! header) or answered FORMERR; it never ends the server.
//!
//! It does not decide anything about failover (the agent computes the snapshot and the vouch
//! verdict), cache, recurse, forward, transfer zones, rate-limit, or speak DoT/DoH.
//!
//! [`zone::answer`]: crate::zone::answer

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Edns, Header, HeaderCounts, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::DNSClass;
use hickory_server::Server;
use hickory_server::net::NetError;
use hickory_server::net::runtime::Time;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use thiserror::Error;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::zone::{self, Answer, Vouched, Zone, ZoneConfig, ZoneError, ZoneSnapshot};

/// Says, per query, whether this server may still vouch for the zone snapshot it is answering
/// from ([`Vouched::No`] when its site is fenced, its lease expired or the snapshot is stale)
/// and for how long (TTLs are capped to it).
pub type Vouch = Arc<dyn Fn(&ZoneSnapshot) -> Vouched + Send + Sync>;

/// How long a TCP connection may sit idle before the server closes it.
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// Responses buffered per TCP connection before the connection applies back-pressure.
const TCP_RESPONSE_BUFFER: usize = 32;
/// Attempts to find a port free for both UDP and TCP when asked for port 0.
const EPHEMERAL_PORT_ATTEMPTS: u32 = 16;

/// The two transports the server listens on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
        })
    }
}

/// Why the DNS server could not start or stopped.
#[derive(Debug, Error)]
pub enum DnsError {
    #[error("invalid DNS zone configuration")]
    Zone(#[from] ZoneError),
    #[error("cannot bind DNS {transport} socket on {addr}")]
    Bind {
        addr: SocketAddr,
        transport: Transport,
        #[source]
        source: io::Error,
    },
    #[error("no port on {addr} was free for both UDP and TCP after {attempts} attempts")]
    NoCommonPort { addr: SocketAddr, attempts: u32 },
    #[error("DNS server on {addr} failed")]
    Serve {
        addr: SocketAddr,
        #[source]
        source: NetError,
    },
    #[error("DNS server on {addr} stopped serving before shutdown was requested")]
    Stopped { addr: SocketAddr },
}

/// An authoritative server for one zone, bound and ready to [`run`](DnsServer::run).
#[derive(Debug)]
pub struct DnsServer {
    udp: UdpSocket,
    tcp: TcpListener,
    local_addr: SocketAddr,
    zone: Arc<Zone>,
}

impl DnsServer {
    /// Validates `config` and binds UDP and TCP on `listen` now, so a bad address fails at
    /// start-up with an error naming it. With port 0 both transports get the same ephemeral
    /// port (retrying when TCP finds the UDP-chosen port taken).
    pub async fn bind(listen: SocketAddr, config: ZoneConfig) -> Result<Self, DnsError> {
        let zone = Arc::new(Zone::new(&config)?);
        let attempts = if listen.port() == 0 {
            EPHEMERAL_PORT_ATTEMPTS
        } else {
            1
        };
        for _ in 0..attempts {
            let udp = UdpSocket::bind(listen)
                .await
                .map_err(|source| DnsError::Bind {
                    addr: listen,
                    transport: Transport::Udp,
                    source,
                })?;
            let local_addr = udp.local_addr().map_err(|source| DnsError::Bind {
                addr: listen,
                transport: Transport::Udp,
                source,
            })?;
            match TcpListener::bind(local_addr).await {
                Ok(tcp) => {
                    return Ok(Self {
                        udp,
                        tcp,
                        local_addr,
                        zone,
                    });
                }
                Err(e) if listen.port() == 0 && e.kind() == io::ErrorKind::AddrInUse => {
                    debug!(%local_addr, "TCP port taken, trying another ephemeral port");
                }
                Err(source) => {
                    return Err(DnsError::Bind {
                        addr: local_addr,
                        transport: Transport::Tcp,
                        source,
                    });
                }
            }
        }
        Err(DnsError::NoCommonPort {
            addr: listen,
            attempts,
        })
    }

    /// The address both transports are bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `shutdown` is cancelled, then stops accepting, drops in-flight work and
    /// returns.
    ///
    /// Each query reads the latest value of `zone` (replaced by the agent whenever the state
    /// changes; if the sender goes away the last snapshot keeps being served) and calls `vouch`;
    /// when `vouch` says no every in-zone query gets SERVFAIL, so resolvers go to another
    /// site's server, and otherwise no TTL exceeds the time it may still vouch.
    pub async fn run(
        self,
        zone: watch::Receiver<Arc<ZoneSnapshot>>,
        vouch: Vouch,
        shutdown: CancellationToken,
    ) -> Result<(), DnsError> {
        let addr = self.local_addr;
        let origin = self.zone.origin().to_string();
        let mut server = Server::new(Responder {
            zone: self.zone,
            snapshot: zone,
            vouch,
        });
        server.register_socket(self.udp);
        server.register_listener(self.tcp, TCP_IDLE_TIMEOUT, TCP_RESPONSE_BUFFER);
        info!(%addr, %origin, "authoritative DNS serving on UDP and TCP");

        tokio::select! {
            result = server.block_until_done() => {
                return Err(match result {
                    Ok(()) => DnsError::Stopped { addr },
                    Err(source) => DnsError::Serve { addr, source },
                });
            }
            () = shutdown.cancelled() => {}
        }
        server
            .shutdown_gracefully()
            .await
            .map_err(|source| DnsError::Serve { addr, source })?;
        info!(%addr, %origin, "authoritative DNS stopped");
        Ok(())
    }
}

/// The per-request handler hickory-server calls.
struct Responder {
    zone: Arc<Zone>,
    snapshot: watch::Receiver<Arc<ZoneSnapshot>>,
    vouch: Vouch,
}

impl Responder {
    /// The reply to `request`: an error about the request itself, or the zone's answer.
    fn decide(&self, request: &Request) -> Answer {
        if request.edns.as_ref().is_some_and(|e| e.version() > 0) {
            return refusal(ResponseCode::BADVERS);
        }
        if request.metadata.op_code != OpCode::Query {
            return refusal(ResponseCode::NotImp);
        }
        let Ok(info) = request.request_info() else {
            // Not exactly one question.
            return refusal(ResponseCode::FormErr);
        };
        if info.query.query_class() != DNSClass::IN {
            return refusal(ResponseCode::Refused);
        }
        // Clone the Arc so the watch lock is not held while answering.
        let snapshot = Arc::clone(&self.snapshot.borrow());
        zone::answer(
            &self.zone,
            &snapshot,
            info.query.original().name(),
            info.query.query_type(),
            (self.vouch)(&snapshot),
        )
    }
}

fn refusal(rcode: ResponseCode) -> Answer {
    Answer {
        rcode,
        authoritative: false,
        answers: Vec::new(),
        authority: Vec::new(),
    }
}

#[async_trait::async_trait]
impl RequestHandler for Responder {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let answer = self.decide(request);

        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.authoritative = answer.authoritative;
        metadata.response_code = answer.rcode;

        // Echo EDNS when the client used it, so it keeps its larger UDP payload size.
        let edns = request.edns.as_ref().map(|req| {
            let mut edns = Edns::new();
            edns.set_max_payload(req.max_payload().max(512));
            edns.set_version(0);
            edns.set_rcode_high(answer.rcode.high());
            edns
        });

        let (qname, qtype) = match request.queries.queries() {
            [q] => (q.name().to_string(), q.query_type().to_string()),
            _ => (String::new(), String::new()),
        };
        debug!(
            src = %request.src(),
            protocol = %request.protocol(),
            %qname,
            %qtype,
            rcode = %answer.rcode,
            answers = answer.answers.len(),
            "dns query"
        );
        metrics::counter!("fabric_dns_queries_total", "rcode" => rcode_label(answer.rcode))
            .increment(1);

        let response = MessageResponseBuilder::new(&request.queries, edns.as_ref()).build(
            metadata,
            answer.answers.iter(),
            answer.authority.iter(),
            std::iter::empty(),
            std::iter::empty(),
        );
        match response_handle.send_response(response).await {
            Ok(info) => info,
            Err(error) => {
                warn!(src = %request.src(), %error, "cannot send DNS response");
                let mut failed = Metadata::response_from_request(&request.metadata);
                failed.response_code = ResponseCode::ServFail;
                ResponseInfo::from(Header {
                    metadata: failed,
                    counts: HeaderCounts::default(),
                })
            }
        }
    }
}

/// The metric label for `rcode`: its mnemonic, as `dig` prints it.
fn rcode_label(rcode: ResponseCode) -> &'static str {
    match rcode {
        ResponseCode::NoError => "NOERROR",
        ResponseCode::FormErr => "FORMERR",
        ResponseCode::ServFail => "SERVFAIL",
        ResponseCode::NXDomain => "NXDOMAIN",
        ResponseCode::NotImp => "NOTIMP",
        ResponseCode::Refused => "REFUSED",
        ResponseCode::BADVERS => "BADVERS",
        _ => "OTHER",
    }
}
