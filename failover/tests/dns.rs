//! End-to-end tests of the authoritative DNS server: a real `DnsServer` on 127.0.0.1 (its own
//! ephemeral port per test) queried with the real `dig` binary over UDP and TCP.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use failover::dns::{DnsError, DnsServer};
use failover::zone::{Vouched, ZoneConfig, ZoneSnapshot};
use tokio::process::Command;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const DIG: &str = "/usr/bin/dig";
const WEB_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const WEB_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 10);

/// A running server plus the agent-side handles that drive it.
struct Harness {
    addr: SocketAddr,
    zone: watch::Sender<Arc<ZoneSnapshot>>,
    /// Lease time left in milliseconds; 0 means the server may not vouch.
    vouched_ms: Arc<AtomicU64>,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), DnsError>>,
}

impl Harness {
    async fn start(snapshot: ZoneSnapshot) -> Result<Self> {
        let mut config = ZoneConfig::new("fabric.test.");
        config.ttl = 20;
        let server = DnsServer::bind("127.0.0.1:0".parse()?, config).await?;
        let addr = server.local_addr();
        let (zone, rx) = watch::channel(Arc::new(snapshot));
        let vouched_ms = Arc::new(AtomicU64::new(3_600_000));
        let left = Arc::clone(&vouched_ms);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(server.run(
            rx,
            Arc::new(move |_: &ZoneSnapshot| match left.load(Ordering::SeqCst) {
                0 => Vouched::No,
                ms => Vouched::For(Duration::from_millis(ms)),
            }),
            shutdown.clone(),
        ));
        Ok(Self {
            addr,
            zone,
            vouched_ms,
            shutdown,
            task,
        })
    }

    async fn dig(&self, name: &str, qtype: &str, extra: &[&str]) -> Result<Dig> {
        dig(self.addr, name, qtype, extra).await
    }

    /// Cancels the server and checks that `run` returns cleanly and promptly.
    async fn stop(self) -> Result<()> {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .context("server did not stop within 5s of shutdown")???;
        Ok(())
    }
}

fn snapshot(serial: u32) -> ZoneSnapshot {
    ZoneSnapshot::new(serial)
        .with_name("web", [IpAddr::V4(WEB_V4), IpAddr::V6(WEB_V6)])
        .with_name("drained", [])
}

/// One resource record as `dig` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rr {
    name: String,
    ttl: u32,
    rtype: String,
    data: String,
}

/// The parts of a `dig` reply the tests look at.
#[derive(Debug, Default)]
struct Dig {
    status: String,
    flags: Vec<String>,
    answers: Vec<Rr>,
    authority: Vec<Rr>,
}

impl Dig {
    fn aa(&self) -> bool {
        self.flags.iter().any(|f| f == "aa")
    }

    fn answer_data(&self) -> Vec<&str> {
        self.answers.iter().map(|r| r.data.as_str()).collect()
    }
}

async fn dig(server: SocketAddr, name: &str, qtype: &str, extra: &[&str]) -> Result<Dig> {
    let port = server.port().to_string();
    let at = format!("@{}", server.ip());
    let mut args = vec![
        at.as_str(),
        "-p",
        &port,
        name,
        qtype,
        "+norec",
        "+time=2",
        "+tries=1",
    ];
    args.extend_from_slice(extra);
    let output = tokio::time::timeout(
        Duration::from_secs(10),
        Command::new(DIG).args(&args).kill_on_drop(true).output(),
    )
    .await
    .context("dig did not finish")?
    .context("cannot run dig")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    ensure!(
        output.status.success(),
        "dig {args:?} failed: {}\n{stdout}",
        output.status
    );
    parse_dig(&stdout).with_context(|| format!("dig {args:?} printed:\n{stdout}"))
}

fn parse_dig(out: &str) -> Result<Dig> {
    let mut dig = Dig::default();
    let mut section = "";
    for line in out.lines() {
        if let Some(rest) = line.split("status: ").nth(1) {
            dig.status = rest.split(',').next().unwrap_or_default().trim().to_owned();
        } else if let Some(rest) = line.strip_prefix(";; flags: ") {
            let flags = rest.split(';').next().unwrap_or_default();
            dig.flags = flags.split_whitespace().map(str::to_owned).collect();
        } else if line.starts_with(";; ") && line.ends_with("SECTION:") {
            section = line;
        } else if line.trim().is_empty() {
            section = "";
        } else if !line.starts_with(';') {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [name, ttl, _class, rtype, data @ ..] = fields.as_slice() else {
                bail!("cannot parse record line {line:?}");
            };
            let rr = Rr {
                name: name.to_ascii_lowercase(),
                ttl: ttl.parse()?,
                rtype: (*rtype).to_owned(),
                data: data.join(" "),
            };
            match section {
                ";; ANSWER SECTION:" => dig.answers.push(rr),
                ";; AUTHORITY SECTION:" => dig.authority.push(rr),
                _ => {}
            }
        }
    }
    ensure!(!dig.status.is_empty(), "no status line");
    Ok(dig)
}

fn soa_serial(rr: &Rr) -> Result<u32> {
    ensure!(rr.rtype == "SOA", "not an SOA: {rr:?}");
    // mname rname serial refresh retry expire minimum
    let serial = rr.data.split_whitespace().nth(2).context("short SOA")?;
    Ok(serial.parse()?)
}

#[tokio::test]
async fn answers_a_and_aaaa_authoritatively_over_udp() -> Result<()> {
    let h = Harness::start(snapshot(1)).await?;

    let a = h.dig("web.fabric.test.", "A", &[]).await?;
    assert_eq!(a.status, "NOERROR");
    assert!(a.aa(), "AA bit: {:?}", a.flags);
    assert_eq!(a.answer_data(), vec!["192.0.2.10"]);
    assert_eq!(a.answers[0].ttl, 20);
    assert_eq!(a.answers[0].name, "web.fabric.test.");

    let aaaa = h.dig("web.fabric.test.", "AAAA", &[]).await?;
    assert_eq!(aaaa.status, "NOERROR");
    assert!(aaaa.aa());
    assert_eq!(aaaa.answer_data(), vec!["2001:db8::a"]);

    h.stop().await
}

#[tokio::test]
async fn answers_over_tcp_on_the_same_port() -> Result<()> {
    let h = Harness::start(snapshot(1)).await?;
    let a = h.dig("web.fabric.test.", "A", &["+tcp"]).await?;
    assert_eq!(a.status, "NOERROR");
    assert!(a.aa());
    assert_eq!(a.answer_data(), vec!["192.0.2.10"]);
    h.stop().await
}

#[tokio::test]
async fn matches_names_case_insensitively() -> Result<()> {
    let h = Harness::start(snapshot(1)).await?;
    let a = h.dig("WeB.FaBrIc.TeSt.", "A", &[]).await?;
    assert_eq!(a.status, "NOERROR");
    assert_eq!(a.answer_data(), vec!["192.0.2.10"]);
    h.stop().await
}

#[tokio::test]
async fn negative_answers_carry_the_soa_for_caching() -> Result<()> {
    let h = Harness::start(snapshot(4)).await?;

    let nx = h.dig("nope.fabric.test.", "A", &[]).await?;
    assert_eq!(nx.status, "NXDOMAIN");
    assert!(nx.aa());
    assert!(nx.answers.is_empty());
    assert_eq!(nx.authority.len(), 1);
    assert_eq!(soa_serial(&nx.authority[0])?, 4);

    let nodata = h.dig("drained.fabric.test.", "A", &[]).await?;
    assert_eq!(nodata.status, "NOERROR");
    assert!(nodata.aa());
    assert!(nodata.answers.is_empty());
    assert_eq!(nodata.authority.len(), 1);
    assert_eq!(nodata.authority[0].rtype, "SOA");

    h.stop().await
}

#[tokio::test]
async fn refuses_names_outside_the_zone() -> Result<()> {
    let h = Harness::start(snapshot(1)).await?;
    let r = h.dig("example.com.", "A", &[]).await?;
    assert_eq!(r.status, "REFUSED");
    assert!(!r.aa());
    assert!(r.answers.is_empty());
    h.stop().await
}

#[tokio::test]
async fn apex_serves_ns_and_soa_whose_serial_follows_the_snapshot() -> Result<()> {
    let h = Harness::start(snapshot(1)).await?;

    let ns = h.dig("fabric.test.", "NS", &[]).await?;
    assert_eq!(ns.status, "NOERROR");
    assert_eq!(ns.answer_data(), vec!["ns.fabric.test."]);

    let before = h.dig("fabric.test.", "SOA", &[]).await?;
    assert_eq!(before.status, "NOERROR");
    assert!(before.aa());
    assert_eq!(soa_serial(&before.answers[0])?, 1);

    let moved = ZoneSnapshot::new(2).with_name("web", [IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7))]);
    h.zone.send_replace(Arc::new(moved));

    let after = h.dig("fabric.test.", "SOA", &[]).await?;
    assert_eq!(soa_serial(&after.answers[0])?, 2);
    let a = h.dig("web.fabric.test.", "A", &[]).await?;
    assert_eq!(a.answer_data(), vec!["198.51.100.7"]);

    h.stop().await
}

#[tokio::test]
async fn servfails_while_unvouched_and_recovers_when_vouched_again() -> Result<()> {
    let h = Harness::start(snapshot(1)).await?;

    h.vouched_ms.store(0, Ordering::SeqCst);
    let fenced = h.dig("web.fabric.test.", "A", &[]).await?;
    assert_eq!(fenced.status, "SERVFAIL");
    assert!(fenced.answers.is_empty());
    let soa = h.dig("fabric.test.", "SOA", &["+tcp"]).await?;
    assert_eq!(soa.status, "SERVFAIL");
    let outside = h.dig("example.com.", "A", &[]).await?;
    assert_eq!(outside.status, "REFUSED");

    h.vouched_ms.store(3_600_000, Ordering::SeqCst);
    let back = h.dig("web.fabric.test.", "A", &[]).await?;
    assert_eq!(back.status, "NOERROR");
    assert_eq!(back.answer_data(), vec!["192.0.2.10"]);

    h.stop().await
}

#[tokio::test]
async fn ttls_never_outlast_the_lease_time_left() -> Result<()> {
    let h = Harness::start(snapshot(1)).await?;

    // Configured TTL 20 s, 1.5 s of lease left: TTL 1, rounded down.
    h.vouched_ms.store(1500, Ordering::SeqCst);
    let a = h.dig("web.fabric.test.", "A", &[]).await?;
    assert_eq!(a.status, "NOERROR");
    assert_eq!(a.answer_data(), vec!["192.0.2.10"]);
    assert_eq!(a.answers[0].ttl, 1);
    let nx = h.dig("nope.fabric.test.", "A", &["+tcp"]).await?;
    assert_eq!(nx.status, "NXDOMAIN");
    assert!(
        nx.authority.iter().all(|r| r.ttl <= 1),
        "{:?}",
        nx.authority
    );

    h.stop().await
}

#[tokio::test]
async fn survives_garbage_datagrams_and_tcp_frames() -> Result<()> {
    let h = Harness::start(snapshot(1)).await?;

    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    let garbage: [&[u8]; 4] = [
        b"",
        b"\x01\x02\x03",
        b"this is not a DNS message at all, not even close.....",
        // A header claiming one question, followed by a compression pointer to itself.
        &[
            0x12, 0x34, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xc0, 0x0c,
            0x00, 0x01, 0x00, 0x01,
        ],
    ];
    for datagram in garbage {
        sock.send_to(datagram, h.addr).await?;
    }

    // A TCP client that sends a length prefix promising more than it sends, then hangs up.
    {
        use tokio::io::AsyncWriteExt;
        let mut tcp = tokio::net::TcpStream::connect(h.addr).await?;
        tcp.write_all(&[0x01, 0x00, 0xde, 0xad]).await?;
    }

    let a = h.dig("web.fabric.test.", "A", &[]).await?;
    assert_eq!(a.status, "NOERROR");
    assert_eq!(a.answer_data(), vec!["192.0.2.10"]);
    let tcp = h.dig("web.fabric.test.", "A", &["+tcp"]).await?;
    assert_eq!(tcp.status, "NOERROR");

    h.stop().await
}

#[tokio::test]
async fn bind_on_a_taken_port_fails_with_an_error_naming_the_address() -> Result<()> {
    let taken = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let addr = taken.local_addr()?;
    let err = DnsServer::bind(addr, ZoneConfig::new("fabric.test."))
        .await
        .err()
        .context("bind on a taken port succeeded")?;
    assert!(
        matches!(err, DnsError::Bind { addr: a, .. } if a == addr),
        "{err:?}"
    );
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
    Ok(())
}

#[tokio::test]
async fn bind_rejects_an_invalid_zone_config() {
    let result = DnsServer::bind("127.0.0.1:0".parse().expect("addr"), ZoneConfig::new(".")).await;
    assert!(matches!(result, Err(DnsError::Zone(_))), "{result:?}");
}
