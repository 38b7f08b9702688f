//! The NBD server against hand-made bytes over a raw TcpStream (malformed and edge-case
//! requests), and against this crate's own client.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, bail};
use common::{Server, pattern};
use storage::device::errno;
use storage::nbd::proto::{
    self, ClientFlags, ClientOption, Command, Greeting, InfoRequest, OptionReply, ReplyBody,
    Request, SimpleReply, client_flags, cmd_flags, tx_flags,
};
use storage::nbd::{Limits, NbdClient, NbdError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const MIB: u64 = 1 << 20;
const MAX: u32 = 256 * 1024;

fn limits() -> Limits {
    Limits {
        max_request: MAX,
        max_inflight: 4,
        handshake_timeout: Duration::from_millis(500),
        max_connections: 3,
        drain_timeout: Duration::from_millis(300),
    }
}

/// Handshakes by hand (GO on `export`) and returns the stream in transmission.
async fn raw_session(addr: SocketAddr, export: &str) -> anyhow::Result<TcpStream> {
    let mut s = TcpStream::connect(addr).await?;
    let mut greeting = [0; proto::GREETING_LEN];
    s.read_exact(&mut greeting).await?;
    Greeting::decode(&greeting)?;
    s.write_all(&ClientFlags(client_flags::FIXED_NEWSTYLE | client_flags::NO_ZEROES).encode())
        .await?;
    let go = ClientOption::Go(InfoRequest {
        name: export.into(),
        items: vec![],
    });
    s.write_all(&go.encode()).await?;
    loop {
        let mut head = [0; proto::OPTION_REPLY_HEADER_LEN];
        s.read_exact(&mut head).await?;
        let header = proto::OptionReplyHeader::decode(&head)?;
        let mut data = vec![0; header.len as usize];
        s.read_exact(&mut data).await?;
        match OptionReply::parse(header, &data)?.body {
            ReplyBody::Ack => return Ok(s),
            ReplyBody::Error { code, message } => bail!("GO refused {code:#x}: {message}"),
            _ => {}
        }
    }
}

fn request(command: Command, flags: u16, cookie: u64, offset: u64, len: u32) -> Vec<u8> {
    Request {
        flags,
        command,
        cookie,
        offset,
        len,
    }
    .encode()
    .to_vec()
}

async fn reply(s: &mut TcpStream) -> anyhow::Result<SimpleReply> {
    let mut head = [0; proto::REPLY_LEN];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut head))
        .await
        .context("no reply within 5 s")??;
    Ok(SimpleReply::decode(&head)?)
}

/// Asserts the server closes `s` (EOF or reset) within a few seconds.
async fn assert_closed(s: &mut TcpStream) -> anyhow::Result<()> {
    let mut buf = [0; 64];
    match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
        Err(_) => bail!("the server kept the connection open"),
        Ok(Ok(0)) | Ok(Err(_)) => Ok(()),
        Ok(Ok(n)) => bail!("the server sent {n} more bytes instead of closing"),
    }
}

/// A fresh client can still read and write: the server is alive.
async fn assert_alive(addr: SocketAddr) -> anyhow::Result<()> {
    let mut c = NbdClient::connect(&addr.to_string(), "vol").await?;
    c.write(8192, b"alive", true).await?;
    assert_eq!(c.read(8192, 5).await?, b"alive");
    c.disconnect().await?;
    Ok(())
}

#[tokio::test]
async fn a_bad_request_magic_closes_that_connection_only() -> anyhow::Result<()> {
    let server = Server::start(MIB, limits()).await?;
    let mut s = raw_session(server.addr, "vol").await?;
    let mut bad = request(Command::Read, 0, 1, 0, 512);
    bad[0] ^= 0xff;
    s.write_all(&bad).await?;
    assert_closed(&mut s).await?;
    assert_alive(server.addr).await?;
    server.stop().await
}

#[tokio::test]
async fn well_framed_bad_requests_get_their_errno_and_the_connection_goes_on() -> anyhow::Result<()>
{
    let server = Server::start(MIB, limits()).await?;
    let mut s = raw_session(server.addr, "vol").await?;
    let cases: [(&str, Vec<u8>, u32); 6] = [
        (
            "unknown command",
            request(Command::Other(99), 0, 1, 0, 512),
            errno::EINVAL,
        ),
        (
            "READ past the end",
            request(Command::Read, 0, 2, MIB - 100, 512),
            errno::EINVAL,
        ),
        (
            "READ over the limit",
            request(Command::Read, 0, 3, 0, MAX + 1),
            errno::EOVERFLOW,
        ),
        (
            "unsupported flag",
            request(Command::Read, cmd_flags::DF, 4, 0, 512),
            errno::EINVAL,
        ),
        (
            "TRIM past the end",
            request(Command::Trim, 0, 5, MIB, 1),
            errno::ENOSPC,
        ),
        (
            "WRITE_ZEROES offset overflow",
            request(Command::WriteZeroes, 0, 6, u64::MAX, 2),
            errno::ENOSPC,
        ),
    ];
    for (what, bytes, want) in cases {
        let cookie = Request::decode(&bytes)?.cookie;
        s.write_all(&bytes).await?;
        let r = reply(&mut s).await.context(what)?;
        assert_eq!((r.cookie, r.error), (cookie, want), "{what}");
    }
    // Writes with a payload it refuses: the payload is drained, so the stream stays in step.
    let mut past_end = request(Command::Write, 0, 7, MIB - 10, 512);
    past_end.extend_from_slice(&[0xee; 512]);
    let mut too_big = request(Command::Write, 0, 8, 0, MAX * 2);
    too_big.extend_from_slice(&pattern(MAX as usize * 2, 8));
    for (cookie, bytes, want) in [(7, past_end, errno::ENOSPC), (8, too_big, errno::EINVAL)] {
        s.write_all(&bytes).await?;
        let r = reply(&mut s).await?;
        assert_eq!((r.cookie, r.error), (cookie, want));
    }
    // Nothing was written, and the same connection still serves a good request.
    s.write_all(&request(Command::Read, 0, 9, 0, 4096)).await?;
    let r = reply(&mut s).await?;
    assert_eq!((r.cookie, r.error), (9, 0));
    let mut data = vec![0; 4096];
    s.read_exact(&mut data).await?;
    assert_eq!(data, vec![0; 4096], "a refused WRITE reached the disk");
    assert_eq!(std::fs::read(&server.vol)?, vec![0; MIB as usize]);
    assert_alive(server.addr).await?;
    server.stop().await
}

#[tokio::test]
async fn a_truncated_header_or_payload_then_close_leaves_the_server_serving() -> anyhow::Result<()>
{
    let server = Server::start(MIB, limits()).await?;
    let mut s = raw_session(server.addr, "vol").await?;
    s.write_all(&request(Command::Read, 0, 1, 0, 512)[..11])
        .await?;
    drop(s);
    let mut s = raw_session(server.addr, "vol").await?;
    let mut half = request(Command::Write, 0, 1, 0, 4096);
    half.extend_from_slice(&[1; 100]);
    s.write_all(&half).await?;
    drop(s);
    // Garbage instead of the handshake, and a client that never finishes it.
    let mut g = TcpStream::connect(server.addr).await?;
    let mut greeting = [0; proto::GREETING_LEN];
    g.read_exact(&mut greeting).await?;
    g.write_all(&[0xff; 64]).await?;
    assert_closed(&mut g).await?;
    let mut idle = TcpStream::connect(server.addr).await?;
    idle.read_exact(&mut greeting).await?;
    assert_closed(&mut idle)
        .await
        .context("handshake timeout")?;
    assert_alive(server.addr).await?;
    assert!(std::fs::read(&server.vol)?[..4096].iter().all(|&b| b == 0));
    server.stop().await
}

#[tokio::test]
async fn pipelined_requests_get_whole_replies_matched_by_cookie() -> anyhow::Result<()> {
    let server = Server::start(MIB, limits()).await?;
    let data = pattern(MIB as usize, 3);
    std::fs::write(&server.vol, &data)?;
    let mut s = raw_session(server.addr, "vol").await?;
    let n = 32u64;
    let chunk = 16 * 1024u32;
    let mut all = Vec::new();
    for i in 0..n {
        all.extend(request(
            Command::Read,
            0,
            100 + i,
            i * u64::from(chunk),
            chunk,
        ));
    }
    s.write_all(&all).await?;
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..n {
        let r = reply(&mut s).await?;
        assert_eq!(r.error, 0);
        let i = r.cookie - 100;
        let mut got = vec![0; chunk as usize];
        s.read_exact(&mut got).await?;
        let at = (i * u64::from(chunk)) as usize;
        assert!(
            got == data[at..at + chunk as usize],
            "reply {i} mixed with another"
        );
        seen.insert(r.cookie);
    }
    assert_eq!(seen.len() as u64, n);
    server.stop().await
}

#[tokio::test]
async fn the_client_reads_writes_zeroes_trims_and_flushes() -> anyhow::Result<()> {
    let server = Server::start(MIB, limits()).await?;
    let addr = server.addr.to_string();
    assert_eq!(NbdClient::list_exports(&addr).await?, ["rec", "ro", "vol"]);
    let mut c = NbdClient::connect(&addr, "vol").await?;
    assert_eq!(c.size(), MIB);
    assert_eq!(c.max_block(), Some(MAX));
    assert_ne!(c.flags() & tx_flags::SEND_FUA, 0);
    let data = pattern(64 * 1024, 5);
    c.write(4096, &data, true).await?;
    assert_eq!(c.read(4096, 64 * 1024).await?, data);
    c.write_zeroes(8192, 4096, false).await?;
    c.trim(4096, 512).await?;
    c.flush().await?;
    let back = c.read(4096, 8192).await?;
    assert_eq!(&back[..512], &[0; 512]);
    assert_eq!(&back[512..4096], &data[512..4096]);
    assert_eq!(&back[4096..], &[0; 4096]);
    let err = c.write(MIB - 1, b"xy", false).await;
    assert!(
        matches!(&err, Err(e @ NbdError::Errno { .. }) if e.errno() == Some(errno::ENOSPC) && !e.is_connection()),
        "{err:?}"
    );
    // An errno reply leaves the connection usable.
    assert_eq!(c.read(4096 + 512, 16).await?, &data[512..528]);
    c.disconnect().await?;
    assert_eq!(
        std::fs::read(&server.vol)?[4096 + 512..8192],
        data[512..4096]
    );
    server.stop().await
}

#[tokio::test]
async fn a_read_only_export_refuses_writes_with_eperm() -> anyhow::Result<()> {
    let server = Server::start(MIB, limits()).await?;
    let mut c = NbdClient::connect(&server.addr.to_string(), "ro").await?;
    assert_ne!(c.flags() & tx_flags::READ_ONLY, 0);
    for result in [
        c.write(0, b"no", true).await,
        c.write_zeroes(0, 512, false).await,
        c.trim(0, 512).await,
    ] {
        let errno = result.err().and_then(|e| e.errno());
        assert_eq!(errno, Some(errno::EPERM));
    }
    assert_eq!(c.read(0, 512).await?, vec![0; 512]);
    server.stop().await
}

#[tokio::test]
async fn an_unknown_export_is_named_in_the_error() -> anyhow::Result<()> {
    let server = Server::start(MIB, limits()).await?;
    let err = NbdClient::connect(&server.addr.to_string(), "nope").await;
    match err {
        Err(e @ NbdError::UnknownExport { .. }) => assert!(e.to_string().contains("nope"), "{e}"),
        other => bail!("expected UnknownExport, got {other:?}"),
    }
    server.stop().await
}

#[tokio::test]
async fn shutdown_stops_accepting_and_ends_open_connections() -> anyhow::Result<()> {
    let server = Server::start(MIB, limits()).await?;
    let addr = server.addr;
    let mut s = raw_session(addr, "vol").await?;
    server.stop().await?;
    assert_closed(&mut s).await?;
    assert!(NbdClient::connect(&addr.to_string(), "vol").await.is_err());
    Ok(())
}

#[tokio::test]
async fn connections_beyond_the_limit_are_closed_and_room_comes_back() -> anyhow::Result<()> {
    let server = Server::start(MIB, limits()).await?;
    let held: Vec<TcpStream> = vec![
        raw_session(server.addr, "vol").await?,
        raw_session(server.addr, "vol").await?,
        raw_session(server.addr, "vol").await?,
    ];
    let mut extra = TcpStream::connect(server.addr).await?;
    assert_closed(&mut extra)
        .await
        .context("a fourth connection")?;
    drop(held);
    let mut alive = Err(anyhow::anyhow!("never tried"));
    for _ in 0..50 {
        alive = assert_alive(server.addr).await;
        if alive.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    alive.context("after the held connections closed")?;
    server.stop().await
}

#[tokio::test]
async fn shutdown_is_not_held_up_by_a_stalled_payload_or_a_client_that_never_reads()
-> anyhow::Result<()> {
    let server = Server::start(MIB, limits()).await?;
    let mut stalled = raw_session(server.addr, "vol").await?;
    let mut partial = request(Command::Write, 0, 1, 0, 4096);
    partial.extend_from_slice(&[7; 100]);
    stalled.write_all(&partial).await?;
    let mut deaf = raw_session(server.addr, "vol").await?;
    let mut reads = Vec::new();
    for cookie in 0..64 {
        reads.extend(request(Command::Read, 0, cookie, 0, MAX));
    }
    deaf.write_all(&reads).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    server.stop().await.context("stop")?;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    drop((stalled, deaf));
    Ok(())
}

#[tokio::test]
async fn random_operations_through_the_client_match_an_in_memory_model() -> anyhow::Result<()> {
    let size = 256 * 1024u64;
    let server = Server::start(size, limits()).await?;
    let mut model = vec![0u8; size as usize];
    let mut c = NbdClient::connect(&server.addr.to_string(), "vol").await?;
    let dice = pattern(4 * 400, 99);
    for (i, d) in dice.chunks_exact(4).enumerate() {
        let offset = u64::from(u16::from_le_bytes([d[1], d[2]])) * 4 % size;
        let len = (u32::from(d[3]) * 97 + 1).min((size - offset) as u32);
        let (at, end) = (offset as usize, offset as usize + len as usize);
        match d[0] % 5 {
            0 => {
                let data = pattern(len as usize, i as u64 + 1);
                c.write(offset, &data, d[3] % 2 == 0).await?;
                model[at..end].copy_from_slice(&data);
            }
            1 => {
                c.write_zeroes(offset, len, false).await?;
                model[at..end].fill(0);
            }
            2 => {
                c.trim(offset, len).await?;
                model[at..end].fill(0);
            }
            3 => c.flush().await?,
            _ => assert!(
                c.read(offset, len).await? == model[at..end],
                "op {i}: read differs"
            ),
        }
    }
    c.disconnect().await?;
    assert!(
        std::fs::read(&server.vol)? == model,
        "the file differs from the model"
    );
    server.stop().await
}
