//! Random bytes at every stage of an NBD connection never panic the server, and it keeps
//! serving. Its own test binary, because it counts panics with a process-wide hook.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{Server, pattern};
use storage::nbd::proto::{self, ClientFlags, ClientOption, InfoRequest, client_flags};
use storage::nbd::{Limits, NbdClient};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Opens a connection, brings it to `stage` (0: nothing sent, 1: after the client flags, 2: in
/// transmission), then sends `garbage` and reads whatever comes back until the server closes.
async fn garbage_at(addr: std::net::SocketAddr, stage: u64, garbage: &[u8]) -> anyhow::Result<()> {
    let mut s = TcpStream::connect(addr).await?;
    let mut greeting = [0; proto::GREETING_LEN];
    s.read_exact(&mut greeting).await?;
    if stage >= 1 {
        s.write_all(&ClientFlags(client_flags::FIXED_NEWSTYLE | client_flags::NO_ZEROES).encode())
            .await?;
    }
    if stage >= 2 {
        let go = ClientOption::Go(InfoRequest {
            name: "vol".into(),
            items: vec![],
        });
        s.write_all(&go.encode()).await?;
    }
    // The server may close early; a failed write is an answer too.
    let _ = s.write_all(garbage).await;
    let _ = s.shutdown().await;
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut sink)).await;
    Ok(())
}

#[tokio::test]
async fn random_bytes_in_the_handshake_and_transmission_never_panic_the_server()
-> anyhow::Result<()> {
    let panics = Arc::new(AtomicUsize::new(0));
    let counter = panics.clone();
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        counter.fetch_add(1, Ordering::SeqCst);
        default(info);
    }));
    let server = Server::start(
        1 << 20,
        Limits {
            max_request: 64 * 1024,
            handshake_timeout: Duration::from_secs(2),
            ..Limits::default()
        },
    )
    .await?;
    for seed in 1..=90u64 {
        let mut garbage = pattern((seed as usize * 37) % 700, seed);
        // Some cases start with a valid magic so the decoders get past the first check.
        let prefix: &[u8] = match seed % 3 {
            1 => &proto::IHAVEOPT.to_be_bytes(),
            2 => &proto::REQUEST_MAGIC.to_be_bytes(),
            _ => &[],
        };
        garbage.splice(0..0, prefix.iter().copied());
        garbage_at(server.addr, seed % 3, &garbage).await?;
    }
    let mut c = NbdClient::connect(&server.addr.to_string(), "vol").await?;
    c.write(0, b"still here", true).await?;
    assert_eq!(c.read(0, 10).await?, b"still here");
    server.stop().await?;
    assert_eq!(panics.load(Ordering::SeqCst), 0, "the server panicked");
    Ok(())
}
