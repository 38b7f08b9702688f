//! Client probes, as a client in one site sees the service: resolve the name at that site's DNS
//! server, connect to an answered address (through the link emulator when the instance is in
//! another site), `GET /whoami`, and optionally `POST /write?seq=N`, counted only when the
//! service acknowledges it.
//!
//! Invariant: a probe succeeds only when every step did; the first failing step is its error.
//! It never retries inside one probe — the next probe is the retry.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

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

/// One HTTP/1.1 request with `Connection: close`; returns status and body.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    timeout: Duration,
) -> Result<(u16, String), String> {
    let attempt = async {
        let mut s = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&raw);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| "no HTTP answer".to_string())?;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("bad status line `{}`", head.lines().next().unwrap_or("")))?;
        Ok((status, body.to_string()))
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or_else(|_| Err(format!("{method} {path} at {addr} timed out")))
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
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let out = attempt(
            dns,
            name,
            port,
            write,
            left.max(Duration::from_millis(100)),
            &route,
        )
        .await;
        if out.whoami.is_ok() || Instant::now() + Duration::from_millis(100) >= deadline {
            return out;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

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
