//! Client probes, as a client in one site sees the service: resolve the name at that site's DNS
//! server, connect to an answered address (through the link emulator when the instance is in
//! another site), `GET /whoami`, and optionally `POST /write?seq=N`, counted only when the
//! service acknowledges it.
//!
//! Invariant: a probe succeeds only when every step did; the first failing step is its error.
//! Every HTTP request opens its own connection (no reuse), so each probe measures what a new
//! client sees. Within its time limit a probe tries again every 100 ms, like a client with
//! retries; its outcome is the last attempt's.
//!
//! It does not record or judge what it saw: the runner records, `checks` judges.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use serde::Deserialize;
use tokio::net::UdpSocket;

use crate::poll::{Check, PollError, poll_until};

/// What the DNS server said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsAnswer {
    Addresses(Vec<IpAddr>),
    /// NOERROR without addresses, NXDOMAIN, SERVFAIL, REFUSED …
    Code(String),
    /// No answer in time.
    Timeout,
}

impl DnsAnswer {
    /// For reports: the addresses, or the code.
    pub fn label(&self) -> Vec<String> {
        match self {
            DnsAnswer::Addresses(a) if !a.is_empty() => a.iter().map(|a| a.to_string()).collect(),
            DnsAnswer::Addresses(_) => vec!["NODATA".into()],
            DnsAnswer::Code(c) => vec![c.clone()],
            DnsAnswer::Timeout => vec!["TIMEOUT".into()],
        }
    }
}

/// Asks `server` for the A records of `name` over UDP.
pub async fn resolve(server: SocketAddr, name: &str, timeout: Duration) -> DnsAnswer {
    let attempt = async {
        let qname = Name::from_ascii(name).map_err(|e| e.to_string())?;
        let mut msg = Message::new(rand::random(), MessageType::Query, OpCode::Query);
        msg.add_query(Query::query(qname, RecordType::A));
        let bytes = msg.to_vec().map_err(|e| e.to_string())?;
        let bind: SocketAddr = if server.is_ipv4() {
            "127.0.0.1:0".parse().map_err(|_| "addr".to_string())?
        } else {
            "[::1]:0".parse().map_err(|_| "addr".to_string())?
        };
        let sock = UdpSocket::bind(bind).await.map_err(|e| e.to_string())?;
        sock.send_to(&bytes, server)
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; 4096];
        loop {
            let (n, from) = sock.recv_from(&mut buf).await.map_err(|e| e.to_string())?;
            if from != server {
                continue;
            }
            let reply = Message::from_vec(&buf[..n]).map_err(|e| e.to_string())?;
            if reply.metadata.id != msg.metadata.id {
                continue;
            }
            return Ok::<_, String>(reply);
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Err(_) => DnsAnswer::Timeout,
        Ok(Err(e)) => DnsAnswer::Code(format!("ERROR {e}")),
        Ok(Ok(reply)) => {
            let code = reply.metadata.response_code;
            if code != ResponseCode::NoError {
                return DnsAnswer::Code(code.to_string().to_uppercase());
            }
            DnsAnswer::Addresses(
                reply
                    .answers
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::A(a) => Some(IpAddr::V4(a.0)),
                        RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                        _ => None,
                    })
                    .collect(),
            )
        }
    }
}

/// `/whoami` of the demo service.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Whoami {
    pub service: String,
    pub site: String,
    pub host: u64,
    pub epoch: u64,
}

/// One HTTP request on a connection of its own, as a new client would make it (no proxy, no
/// connection kept or reused), within `timeout` from connect to the whole body (chunked or
/// not); returns status and body.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    timeout: Duration,
) -> Result<(u16, String), String> {
    // The demo service speaks plain HTTP; the TLS config only keeps reqwest from looking for a
    // process-wide crypto provider.
    let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("HTTP client: {e}"))?
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    let client = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .no_proxy()
        .http1_only()
        .pool_max_idle_per_host(0)
        .timeout(timeout)
        .build()
        .map_err(|e| format!("HTTP client: {e}"))?;
    let method = reqwest::Method::from_bytes(method.as_bytes())
        .map_err(|e| format!("method {method}: {e}"))?;
    let failed = |e: reqwest::Error| {
        if e.is_timeout() {
            format!("{method} {path} at {addr} timed out")
        } else if e.is_connect() {
            format!("connect {addr}: {}", source_of(&e))
        } else {
            format!("{method} {path} at {addr}: {}", source_of(&e))
        }
    };
    let response = client
        .request(method.clone(), format!("http://{addr}{path}"))
        .header(reqwest::header::CONNECTION, "close")
        .body("")
        .send()
        .await
        .map_err(failed)?;
    let status = response.status().as_u16();
    let body = response.text().await.map_err(failed)?;
    Ok((status, body))
}

/// The innermost cause of a client error (e.g. `Connection refused (os error 111)`).
fn source_of(e: &reqwest::Error) -> String {
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// The outcome of one probe.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub dns: DnsAnswer,
    pub whoami: Result<Whoami, String>,
    /// The write acknowledged, if one was sent and acknowledged.
    pub acked_write: Option<u64>,
    /// When the last attempt started, and how long it took.
    pub started: Instant,
    pub latency: Duration,
}

/// One probe: resolve at `dns`, reach the first address (mapped by `route` for another site's
/// instance), ask who it is, write `seq`. Like a client with retries, it tries again every
/// 100 ms until `timeout`, so only an outage longer than that fails it; the outcome describes
/// the last attempt.
pub async fn probe(
    dns: SocketAddr,
    name: &str,
    port: u16,
    write: Option<u64>,
    timeout: Duration,
    route: impl Fn(SocketAddr) -> SocketAddr,
) -> Outcome {
    let deadline = tokio::time::Instant::now() + timeout;
    let decided = poll_until(timeout, RETRY, name, || async {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let out = attempt(dns, name, port, write, left.max(RETRY), &route).await;
        if out.whoami.is_ok() {
            Check::Ready(out)
        } else {
            Check::NotYet(out)
        }
    })
    .await;
    decided.unwrap_or_else(PollError::into_last)
}

/// How often a probe tries again within its time limit.
const RETRY: Duration = Duration::from_millis(100);

async fn attempt(
    dns: SocketAddr,
    name: &str,
    port: u16,
    write: Option<u64>,
    timeout: Duration,
    route: &impl Fn(SocketAddr) -> SocketAddr,
) -> Outcome {
    let start = Instant::now();
    let answer = resolve(dns, name, timeout).await;
    let target = match &answer {
        DnsAnswer::Addresses(a) => a.first().map(|ip| SocketAddr::new(*ip, port)),
        _ => None,
    };
    let Some(target) = target else {
        return Outcome {
            whoami: Err(format!("DNS: {}", answer.label().join(" "))),
            dns: answer,
            acked_write: None,
            started: start,
            latency: start.elapsed(),
        };
    };
    let via = route(target);
    let left = timeout.saturating_sub(start.elapsed());
    let whoami = match http(via, "GET", "/whoami", left).await {
        Ok((200, body)) => {
            serde_json::from_str::<Whoami>(&body).map_err(|e| format!("whoami: {e}"))
        }
        Ok((code, body)) => Err(format!("whoami: HTTP {code}: {}", body.trim())),
        Err(e) => Err(e),
    };
    let acked_write = match (&whoami, write) {
        (Ok(_), Some(seq)) => {
            let left = timeout.saturating_sub(start.elapsed());
            match http(via, "POST", &format!("/write?seq={seq}"), left).await {
                Ok((200, _)) => Some(seq),
                _ => None,
            }
        }
        _ => None,
    };
    Outcome {
        dns: answer,
        whoami,
        acked_write,
        started: start,
        latency: start.elapsed(),
    }
}

/// Sequence numbers the service at `addr` holds (`GET /records`).
pub async fn records(addr: SocketAddr, timeout: Duration) -> Result<Vec<u64>, String> {
    match http(addr, "GET", "/records", timeout).await? {
        (200, body) => serde_json::from_str::<Records>(&body)
            .map(|r| r.seqs)
            .map_err(|e| format!("records: {e}")),
        (code, body) => Err(format!("records: HTTP {code}: {}", body.trim())),
    }
}

#[derive(Debug, Deserialize)]
struct Records {
    seqs: Vec<u64>,
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// A server that answers every request with `answer` and counts its connections.
    async fn server(answer: &'static str) -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = connections.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut seen = Vec::new();
                    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => seen.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ = s.write_all(answer.as_bytes()).await;
                    let _ = s.shutdown().await;
                });
            }
        });
        (addr, connections)
    }

    #[tokio::test]
    async fn a_chunked_answer_is_read_whole() {
        let (addr, _) = server(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n7\r\n{\"seqs\"\r\n7\r\n:[1,2]}\r\n0\r\n\r\n",
        )
        .await;
        assert_eq!(records(addr, Duration::from_secs(5)).await, Ok(vec![1, 2]));
    }

    #[tokio::test]
    async fn every_request_opens_its_own_connection() {
        let (addr, connections) = server("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
        for _ in 0..3 {
            let answer = http(addr, "POST", "/write?seq=1", Duration::from_secs(5)).await;
            assert_eq!(answer, Ok((200, "ok".to_string())));
        }
        assert_eq!(connections.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn an_error_status_and_a_refused_connection_are_told_apart() {
        let (addr, _) =
            server("HTTP/1.1 503 Service Unavailable\r\nContent-Length: 6\r\n\r\nfenced").await;
        let answer = http(addr, "GET", "/whoami", Duration::from_secs(5)).await;
        assert_eq!(answer, Ok((503, "fenced".to_string())));
        let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let gone = closed.local_addr().expect("addr");
        drop(closed);
        let err = http(gone, "GET", "/whoami", Duration::from_secs(5))
            .await
            .expect_err("refused");
        assert!(err.starts_with(&format!("connect {gone}:")), "{err}");
    }
}
