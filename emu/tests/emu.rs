//! The link emulator with real sockets on loopback: what delay, partition, loss and rate do to
//! UDP, TCP and QUIC traffic, and the `fabric-emu` daemon driven through its control socket.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use emu::{
    Direction, Emulator, LinkParams, ParamsSpec, Request, Response, Route, TcpForwarder,
    UdpForwarder, request,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().expect("addr")
}

/// An emulator with one link, s1–s2, both directions with `params`.
fn lab(params: LinkParams) -> Arc<Emulator> {
    let emu = Emulator::new(7);
    emu.add_link("s1", "s2", params, params).expect("link");
    Arc::new(emu)
}

fn delay(ms_each_way: u64) -> LinkParams {
    LinkParams {
        delay: ms(ms_each_way),
        ..LinkParams::default()
    }
}

fn route(listen: SocketAddr, target: SocketAddr) -> Route {
    Route {
        listen,
        target,
        from: "s1".into(),
        to: "s2".into(),
    }
}

/// A UDP echo server; stops with `stop`.
async fn udp_echo(stop: &CancellationToken) -> SocketAddr {
    let socket = UdpSocket::bind(any_port()).await.expect("bind echo");
    let addr = socket.local_addr().expect("addr");
    let stop = stop.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                got = socket.recv_from(&mut buf) => if let Ok((n, from)) = got {
                    let _ = socket.send_to(&buf[..n], from).await;
                },
            }
        }
    });
    addr
}

/// A UDP forwarder s1 → s2 in front of `target`; stops with `stop`.
async fn udp_forwarder(
    emu: &Arc<Emulator>,
    target: SocketAddr,
    stop: &CancellationToken,
) -> SocketAddr {
    let fwd = UdpForwarder::bind(emu.clone(), route(any_port(), target))
        .await
        .expect("bind forwarder");
    let addr = fwd.local_addr();
    tokio::spawn(fwd.run(stop.clone()));
    addr
}

/// A client socket connected to `addr`.
async fn udp_client(addr: SocketAddr) -> UdpSocket {
    let socket = UdpSocket::bind(any_port()).await.expect("bind client");
    socket.connect(addr).await.expect("connect");
    socket
}

/// One ping through `socket`: the round-trip time, or `None` if no echo came within `wait`.
async fn ping(socket: &UdpSocket, seq: u32, wait: Duration) -> Option<Duration> {
    let started = Instant::now();
    socket.send(&seq.to_be_bytes()).await.expect("send");
    let mut buf = [0u8; 64];
    loop {
        let left = wait.checked_sub(started.elapsed())?;
        match timeout(left, socket.recv(&mut buf)).await {
            Ok(Ok(4)) if buf[..4] == seq.to_be_bytes() => return Some(started.elapsed()),
            Ok(_) => continue, // a late echo of an earlier ping
            Err(_) => return None,
        }
    }
}

/// The median RTT of `n` sequential pings, all of which must be answered.
async fn median_rtt(socket: &UdpSocket, n: u32) -> Duration {
    let mut rtts = Vec::new();
    for seq in 0..n {
        rtts.push(ping(socket, seq, ms(2000)).await.expect("echo"));
    }
    rtts.sort();
    rtts[rtts.len() / 2]
}

#[tokio::test]
async fn udp_round_trip_takes_the_delay_of_both_directions() {
    let stop = CancellationToken::new();
    let emu = lab(delay(25));
    let echo = udp_echo(&stop).await;
    let fwd = udp_forwarder(&emu, echo, &stop).await;
    let client = udp_client(fwd).await;
    let rtt = median_rtt(&client, 15).await;
    println!("median UDP RTT through 25 ms each way: {rtt:?}");
    assert!(rtt >= ms(50), "{rtt:?}");
    assert!(rtt <= ms(50 + 40), "{rtt:?}");
    stop.cancel();
}

#[tokio::test]
async fn partition_stops_udp_and_heal_lets_it_through_again() {
    let stop = CancellationToken::new();
    let emu = lab(delay(5));
    let echo = udp_echo(&stop).await;
    let fwd = udp_forwarder(&emu, echo, &stop).await;
    let client = udp_client(fwd).await;
    assert!(ping(&client, 1, ms(1000)).await.is_some(), "before");

    emu.partition("s1", "s2", Direction::Both).expect("cut");
    for seq in 2..7 {
        assert_eq!(ping(&client, seq, ms(150)).await, None, "during");
    }
    let status = emu.status();
    assert_eq!(status.links[0].a_to_b.stats.dropped_partition, 5);

    emu.heal("s1", "s2", Direction::Both).expect("heal");
    let rtt = ping(&client, 9, ms(1000)).await.expect("after heal");
    assert!(rtt >= ms(10), "heal kept the delay: {rtt:?}");
    stop.cancel();
}

#[tokio::test]
async fn half_loss_lets_about_half_the_datagrams_through() {
    let stop = CancellationToken::new();
    let emu = lab(LinkParams::default());
    emu.set(
        "s1",
        "s2",
        Direction::AToB,
        LinkParams {
            loss: 0.5,
            ..LinkParams::default()
        },
    )
    .expect("set");
    let echo = udp_echo(&stop).await;
    let fwd = udp_forwarder(&emu, echo, &stop).await;
    let client = udp_client(fwd).await;
    let sent = 200u32;
    for seq in 0..sent {
        client.send(&seq.to_be_bytes()).await.expect("send");
        if seq % 20 == 0 {
            tokio::time::sleep(ms(1)).await;
        }
    }
    let mut buf = [0u8; 64];
    let mut back = 0;
    while let Ok(Ok(_)) = timeout(ms(300), client.recv(&mut buf)).await {
        back += 1;
    }
    println!("{back} of {sent} datagrams came back through 50% loss");
    assert!((60..=140).contains(&back), "{back} of {sent}");
    stop.cancel();
}

/// A TCP server that reads one connection to its end and returns what it got.
async fn tcp_sink() -> (SocketAddr, tokio::task::JoinHandle<Vec<u8>>) {
    let listener = TcpListener::bind(any_port()).await.expect("bind sink");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.expect("accept");
        let mut got = Vec::new();
        stream.read_to_end(&mut got).await.expect("read");
        got
    });
    (addr, task)
}

async fn tcp_forwarder(
    emu: &Arc<Emulator>,
    target: SocketAddr,
    stop: &CancellationToken,
) -> SocketAddr {
    let fwd = TcpForwarder::bind(emu.clone(), route(any_port(), target))
        .await
        .expect("bind forwarder");
    let addr = fwd.local_addr();
    tokio::spawn(fwd.run(stop.clone()));
    addr
}

#[tokio::test]
async fn tcp_through_an_8_mbit_link_is_paced_and_intact() {
    let stop = CancellationToken::new();
    let emu = lab(delay(2));
    emu.set(
        "s1",
        "s2",
        Direction::AToB,
        LinkParams {
            delay: ms(2),
            rate_bps: Some(8_000_000),
            ..LinkParams::default()
        },
    )
    .expect("set");
    let (sink, received) = tcp_sink().await;
    let fwd = tcp_forwarder(&emu, sink, &stop).await;
    let payload: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();

    let started = Instant::now();
    let mut client = TcpStream::connect(fwd).await.expect("connect");
    client.write_all(&payload).await.expect("write");
    client.shutdown().await.expect("close");
    let got = timeout(Duration::from_secs(10), received)
        .await
        .expect("in time")
        .expect("sink");
    let took = started.elapsed();
    println!("1 MiB through 8 mbit/s took {took:?}");
    assert_eq!(got.len(), payload.len());
    assert!(got == payload, "bytes arrive intact and in order");
    assert!(took >= ms(900), "{took:?}");
    stop.cancel();
}

#[tokio::test]
async fn tcp_data_is_held_during_a_partition_and_delivered_after_heal() {
    let stop = CancellationToken::new();
    let emu = lab(delay(1));
    let (sink, received) = tcp_sink().await;
    let fwd = tcp_forwarder(&emu, sink, &stop).await;
    let mut client = TcpStream::connect(fwd).await.expect("connect");
    client.write_all(b"before ").await.expect("write");
    tokio::time::sleep(ms(50)).await;

    emu.partition("s1", "s2", Direction::Both).expect("cut");
    client.write_all(b"during").await.expect("write");
    client.shutdown().await.expect("close");
    let mut received = received;
    assert!(
        timeout(ms(300), &mut received).await.is_err(),
        "nothing completes while partitioned"
    );

    emu.heal("s1", "s2", Direction::Both).expect("heal");
    let got = timeout(Duration::from_secs(5), received)
        .await
        .expect("after heal")
        .expect("sink");
    assert_eq!(got, b"before during");
    stop.cancel();
}

mod quic {
    use super::*;
    use wan::pki::{self, Validity};
    use wan::{Channel, FabricTls, Handler, Identity, Role, TlsFiles, Wan, WanConfig};

    struct Echo;

    impl Handler for Echo {
        fn handle(
            &self,
            _peer: Identity,
            _channel: Channel,
            request: Vec<u8>,
        ) -> Pin<Box<dyn std::future::Future<Output = anyhow::Result<Vec<u8>>> + Send + '_>>
        {
            Box::pin(async move { Ok(request) })
        }
    }

    fn tls(dir: &Path, node: &str) -> FabricTls {
        let id = Identity::new(node, "s1", Role::Agent).expect("identity");
        let issued = pki::issue(dir, &id, Validity::days(1)).expect("issue");
        FabricTls::load(&TlsFiles {
            ca: pki::ca_cert_path(dir),
            cert: issued.cert,
            key: issued.key,
        })
        .expect("load")
    }

    #[tokio::test]
    async fn quic_request_works_through_the_udp_forwarder_and_sees_the_delay() {
        let dir = tempfile::tempdir().expect("tmp");
        pki::init_ca(dir.path(), "test").expect("ca");
        let stop = CancellationToken::new();
        let config = WanConfig {
            max_frame: 64 * 1024,
            request_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(5),
            ..WanConfig::default()
        };
        let server = Wan::bind(any_port(), &tls(dir.path(), "2"), config.clone()).expect("bind");
        tokio::spawn(server.clone().serve(Arc::new(Echo), stop.clone()));
        let emu = lab(delay(20));
        let fwd = udp_forwarder(&emu, server.local_addr().expect("addr"), &stop).await;

        let client = Wan::bind(any_port(), &tls(dir.path(), "1"), config).expect("bind");
        let started = Instant::now();
        let reply = client
            .call(fwd, Some(2), Channel::Control, b"through the emulator")
            .await
            .expect("call");
        let took = started.elapsed();
        assert_eq!(reply, b"through the emulator");
        // A handshake round trip and a request round trip, 40 ms each.
        assert!(took >= ms(80), "{took:?}");
        let big = vec![7u8; 32 * 1024];
        let reply = client
            .call(fwd, Some(2), Channel::Bulk, &big)
            .await
            .expect("bulk call");
        assert_eq!(reply, big);
        let rtts = client.peer_rtts();
        assert!(rtts.iter().all(|(_, _, rtt)| *rtt >= ms(35)), "{rtts:?}");
        client.close().await;
        stop.cancel();
    }
}

/// The daemon as a child process, killed when dropped (also when a test fails).
struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn start(config: &Path, log: PathBuf) -> Self {
        let stderr = std::fs::File::create(&log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_fabric-emu"))
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn fabric-emu");
        Self { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Asks for status until the daemon answers.
async fn wait_ready(socket: &Path, daemon: &Daemon) -> emu::Status {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(Response::Ok(status)) = request(socket, &Request::Status {}).await {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "fabric-emu did not come up; its log:\n{}",
            daemon.log()
        );
        tokio::time::sleep(ms(20)).await;
    }
}

#[tokio::test]
async fn daemon_applies_a_link_change_from_the_control_socket() {
    let dir = tempfile::tempdir().expect("tmp");
    let stop = CancellationToken::new();
    let echo = udp_echo(&stop).await;
    let socket = dir.path().join("emu.sock");
    let config = dir.path().join("emu.toml");
    std::fs::write(
        &config,
        format!(
            "control = {socket:?}\nseed = 1\n\n[[link]]\na = \"s1\"\nb = \"s2\"\ndelay = \"5ms\"\n\n\
             [[forward]]\nkind = \"udp\"\nlisten = \"127.0.0.1:0\"\ntarget = \"{echo}\"\nfrom = \"s1\"\nto = \"s2\"\n"
        ),
    )
    .expect("config");
    let mut daemon = Daemon::start(&config, dir.path().join("emu.log"));
    let status = wait_ready(&socket, &daemon).await;
    let fwd = status.forwarders[0].listen;
    let client = udp_client(fwd).await;

    let before = median_rtt(&client, 7).await;
    let changed = request(
        &socket,
        &Request::Set {
            a: "s2".into(),
            b: "s1".into(),
            direction: Direction::Both,
            params: ParamsSpec {
                delay_ms: 40.0,
                ..ParamsSpec::default()
            },
        },
    )
    .await
    .expect("request")
    .into_result()
    .expect("set accepted");
    assert_eq!(changed.links[0].a_to_b.params.delay_ms, 40.0);
    let after = median_rtt(&client, 7).await;
    println!("daemon: median RTT {before:?} at 5 ms each way, {after:?} at 40 ms");
    assert!(before >= ms(10) && before < ms(60), "{before:?}");
    assert!(after >= ms(80), "{after:?}");

    let refused = request(
        &socket,
        &Request::Partition {
            a: "s1".into(),
            b: "mars".into(),
            direction: Direction::Both,
        },
    )
    .await
    .expect("request");
    assert_eq!(
        refused,
        Response::Error("no link between sites s1 and mars".into())
    );

    // SIGTERM stops it cleanly and it removes its socket.
    let pid = nix::unistd::Pid::from_raw(i32::try_from(daemon.child.id()).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("signal");
    let deadline = Instant::now() + Duration::from_secs(5);
    let exit = loop {
        if let Some(exit) = daemon.child.try_wait().expect("wait") {
            break exit;
        }
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        tokio::time::sleep(ms(20)).await;
    };
    assert!(exit.success(), "{exit:?}; log:\n{}", daemon.log());
    assert!(!socket.exists(), "control socket removed");
    stop.cancel();
}

#[test]
fn daemon_refuses_a_bad_config_naming_the_field_and_line() {
    let dir = tempfile::tempdir().expect("tmp");
    let config = dir.path().join("emu.toml");
    std::fs::write(
        &config,
        "control = \"/tmp/x.sock\"\n[[link]]\na = \"s1\"\nb = \"s2\"\nlatency = \"5ms\"\n",
    )
    .expect("config");
    let out = Command::new(env!("CARGO_BIN_EXE_fabric-emu"))
        .arg("--config")
        .arg(&config)
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("latency") && stderr.contains("line 5"),
        "{stderr}"
    );
}
