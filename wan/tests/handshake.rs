//! Real QUIC endpoints on loopback: who is let in, and what a bad stream does.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use wan::pki::{self, Validity};
use wan::{Channel, FabricTls, Handler, Identity, Role, TlsFiles, Wan, WanConfig, WanError};

struct Echo;

impl Handler for Echo {
    fn handle(
        &self,
        peer: Identity,
        _channel: Channel,
        request: Vec<u8>,
    ) -> Pin<Box<dyn std::future::Future<Output = anyhow::Result<Vec<u8>>> + Send + '_>> {
        Box::pin(async move {
            let mut reply = peer.node.into_bytes();
            reply.push(b':');
            reply.extend(request);
            Ok(reply)
        })
    }
}

fn issue(dir: &std::path::Path, node: &str, role: Role, validity: Validity) -> FabricTls {
    let id = Identity::new(node, "s1", role).expect("identity");
    let issued = pki::issue(dir, &id, validity).expect("issue");
    FabricTls::load(&TlsFiles {
        ca: pki::ca_cert_path(dir),
        cert: issued.cert,
        key: issued.key,
    })
    .expect("load")
}

fn ca() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tmp");
    pki::init_ca(dir.path(), "test").expect("ca");
    dir
}

fn small() -> WanConfig {
    WanConfig {
        max_frame: 1024,
        request_timeout: Duration::from_secs(3),
        idle_timeout: Duration::from_secs(5),
        ..WanConfig::default()
    }
}

/// A serving endpoint on a free loopback port.
fn server(tls: &FabricTls, shutdown: &CancellationToken) -> Arc<Wan> {
    let wan = Wan::bind("127.0.0.1:0".parse().expect("addr"), tls, small()).expect("bind");
    tokio::spawn(wan.clone().serve(Arc::new(Echo), shutdown.clone()));
    wan
}

fn client(tls: &FabricTls) -> Arc<Wan> {
    Wan::bind("127.0.0.1:0".parse().expect("addr"), tls, small()).expect("bind")
}

/// A refused caller gets no reply. With TLS 1.3 the client's half of the handshake completes
/// before the server has checked the client certificate, so the refusal can surface as a failed
/// connect or as the connection dropping under the first stream.
fn assert_refused(result: Result<Vec<u8>, WanError>) {
    match result {
        Err(WanError::Connect { .. } | WanError::Frame { .. } | WanError::Stream { .. }) => {}
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Starts an agent of the CA in `dir` and returns what a request from `caller` got.
async fn call_agent_as(dir: &std::path::Path, caller: &FabricTls) -> Result<Vec<u8>, WanError> {
    let stop = CancellationToken::new();
    let agent = pki::issued_paths(dir, Role::Agent, "1");
    let tls = if agent.cert.exists() {
        FabricTls::load(&TlsFiles {
            ca: pki::ca_cert_path(dir),
            cert: agent.cert,
            key: agent.key,
        })
        .expect("load")
    } else {
        issue(dir, "1", Role::Agent, Validity::days(1))
    };
    let srv = server(&tls, &stop);
    let result = client(caller)
        .call(
            srv.local_addr().expect("addr"),
            None,
            Channel::Control,
            b"x",
        )
        .await;
    stop.cancel();
    result
}

#[tokio::test]
async fn agents_of_one_ca_talk_and_know_each_other() {
    let dir = ca();
    let stop = CancellationToken::new();
    let srv = server(
        &issue(dir.path(), "1", Role::Agent, Validity::days(1)),
        &stop,
    );
    let cli = client(&issue(dir.path(), "2", Role::Agent, Validity::days(1)));
    let addr = srv.local_addr().expect("addr");
    let reply = cli
        .call(addr, Some(1), Channel::Control, b"hi")
        .await
        .expect("call");
    assert_eq!(
        reply, b"2:hi",
        "server saw the client's identity from its certificate"
    );
    let rtts = cli.peer_rtts();
    assert_eq!(rtts.len(), 1);
    assert_eq!(rtts[0].0.node, "1");
    stop.cancel();
}

#[tokio::test]
async fn expecting_another_node_is_refused() {
    let dir = ca();
    let stop = CancellationToken::new();
    let srv = server(
        &issue(dir.path(), "1", Role::Agent, Validity::days(1)),
        &stop,
    );
    let cli = client(&issue(dir.path(), "2", Role::Agent, Validity::days(1)));
    let err = cli
        .call(
            srv.local_addr().expect("addr"),
            Some(9),
            Channel::Control,
            b"x",
        )
        .await
        .expect_err("wrong node");
    assert!(
        matches!(err, WanError::WrongPeer { expected: 9, .. }),
        "{err}"
    );
    stop.cancel();
}

#[tokio::test]
async fn foreign_ca_client_cannot_connect() {
    let dir = ca();
    let other = ca();
    // The intruder trusts our CA too (a bundle), so the refusal is the server's.
    let id = Identity::new("2", "s1", Role::Agent).expect("identity");
    let issued = pki::issue(other.path(), &id, Validity::days(1)).expect("issue");
    let bundle = other.path().join("bundle.crt");
    let mut trust = std::fs::read(pki::ca_cert_path(other.path())).expect("ca");
    trust.extend(std::fs::read(pki::ca_cert_path(dir.path())).expect("ca"));
    std::fs::write(&bundle, trust).expect("bundle");
    let intruder = FabricTls::load(&TlsFiles {
        ca: bundle,
        cert: issued.cert,
        key: issued.key,
    })
    .expect("load");
    assert_refused(call_agent_as(dir.path(), &intruder).await);
}

#[tokio::test]
async fn expired_certificate_is_refused() {
    let dir = ca();
    let now = time::OffsetDateTime::now_utc();
    let expired = Validity {
        not_before: now - time::Duration::days(10),
        not_after: now - time::Duration::days(1),
    };
    let old = issue(dir.path(), "2", Role::Agent, expired);
    assert_refused(call_agent_as(dir.path(), &old).await);
    // The same CA and role, but valid: let in.
    let fresh = issue(dir.path(), "3", Role::Agent, Validity::days(1));
    assert!(call_agent_as(dir.path(), &fresh).await.is_ok());
}

#[tokio::test]
async fn operator_certificate_cannot_act_as_an_agent() {
    let dir = ca();
    let op = issue(dir.path(), "alice", Role::Operator, Validity::days(1));
    assert_refused(call_agent_as(dir.path(), &op).await);
}

#[tokio::test]
async fn bad_streams_are_closed_and_the_server_keeps_serving() {
    let dir = ca();
    let stop = CancellationToken::new();
    let srv = server(
        &issue(dir.path(), "1", Role::Agent, Validity::days(1)),
        &stop,
    );
    let addr = srv.local_addr().expect("addr");
    let cli = client(&issue(dir.path(), "2", Role::Agent, Validity::days(1)));

    // Oversized frame announced: the stream is reset, no reply comes.
    let (mut send, mut recv) = cli.open_raw(addr).await.expect("raw");
    send.write_all(&[Channel::Raft as u8, 0x7f, 0xff, 0xff, 0xff])
        .await
        .expect("write");
    let _ = send.finish();
    assert!(
        recv.read_to_end(1 << 20).await.is_err(),
        "oversized frame was answered"
    );

    // Unknown channel byte.
    let (mut send, mut recv) = cli.open_raw(addr).await.expect("raw");
    send.write_all(&[0xee, 0, 0, 0, 1, 0]).await.expect("write");
    let _ = send.finish();
    assert!(
        recv.read_to_end(1 << 20).await.is_err(),
        "unknown channel was answered"
    );

    // A frame longer than the client may send is refused locally.
    let big = vec![0u8; 4096];
    assert!(matches!(
        cli.call(addr, None, Channel::Bulk, &big).await,
        Err(WanError::Frame { .. })
    ));

    // Garbage UDP at the socket.
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("udp");
    for _ in 0..50 {
        udp.send_to(&[0xde, 0xad, 0xbe, 0xef, 0, 1, 2, 3], addr)
            .await
            .expect("send");
    }

    // Same connection and a new client are both still served.
    assert_eq!(
        cli.call(addr, Some(1), Channel::Control, b"ok")
            .await
            .expect("after"),
        b"2:ok"
    );
    let fresh = client(&issue(dir.path(), "3", Role::Agent, Validity::days(1)));
    assert_eq!(
        fresh
            .call(addr, Some(1), Channel::Raft, b"ok")
            .await
            .expect("fresh"),
        b"3:ok"
    );
    stop.cancel();
}
