//! The TCP forwarder: accepts clients, dials the target, and pumps bytes both ways through the
//! link directions (`from` → `to` for the client's bytes, `to` → `from` for the target's).
//!
//! Invariant: bytes of one direction are delivered whole and in order — each chunk gets a
//! delivery instant from [`crate::Emulator::admit_ordered`], which never goes backwards; the
//! reader is paced by the rate limiter, so in-flight data stays near the bandwidth-delay product
//! and a slow receiver pushes back on the sender through TCP flow control.
//!
//! Choices, made to look like a real path rather than a broken proxy:
//! - Partitions *hold*: a partition stops forwarding (including chunks already "on the wire");
//!   data waits and flows again after the heal, as TCP retransmission would deliver it. A
//!   connection accepted during a partition waits for the heal before dialing the target. No
//!   connection is reset because of a partition; clients see silence and rely on their own
//!   timeouts, as they would on a real WAN (the kernel gives up only after many minutes).
//! - Loss never drops bytes (TCP retransmits them); it shows as an extra retransmission delay
//!   on the chunks that "lost" a segment (see [`crate::link::DirectionState::admit_ordered`]).
//! - The client's connect completes locally at once; only data is delayed, not the handshake.
//! - A target that refuses (or does not answer within [`CONNECT_TIMEOUT`]) makes the forwarder
//!   reset the client connection; a reset on one side resets the other.
//!
//! It does not model segments, windows or congestion control.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::link::Fate;
use crate::table::{Emulator, ForwardKind, ForwarderStatus};
use crate::{EmuError, Route};

/// How long dialing the target may take before the client is reset.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The most bytes read at once: the granularity of pacing.
const CHUNK: usize = 16 * 1024;

/// Chunks admitted but not yet delivered, per direction; beyond it the reader waits.
const IN_FLIGHT: usize = 1024;

/// A bound TCP forwarder; [`TcpForwarder::run`] accepts and pumps.
#[derive(Debug)]
pub struct TcpForwarder {
    emu: Arc<Emulator>,
    listener: TcpListener,
    local: SocketAddr,
    route: Route,
}

impl TcpForwarder {
    /// Binds the listener of `route`. The link `route.from`–`route.to` must exist.
    pub async fn bind(emu: Arc<Emulator>, route: Route) -> Result<Self, EmuError> {
        emu.check_route(&route)?;
        let bind_err = |source| EmuError::Bind {
            kind: "tcp",
            addr: route.listen,
            source,
        };
        let listener = TcpListener::bind(route.listen).await.map_err(bind_err)?;
        let local = listener.local_addr().map_err(bind_err)?;
        Ok(Self {
            emu,
            listener,
            local,
            route,
        })
    }

    /// The bound listener address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Accepts and forwards until `shutdown`; then closes every connection and returns.
    pub async fn run(self, shutdown: CancellationToken) {
        self.emu.register_forwarder(ForwarderStatus {
            kind: ForwardKind::Tcp,
            listen: self.local,
            target: self.route.target,
            from: self.route.from.clone(),
            to: self.route.to.clone(),
        });
        tracing::info!(listen = %self.local, target = %self.route.target,
            from = %self.route.from, to = %self.route.to, "tcp forwarder up");
        let connections = TaskTracker::new();
        let route = Arc::new(self.route);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                accepted = self.listener.accept() => match accepted {
                    Ok((client, peer)) => {
                        connections.spawn(connection(
                            self.emu.clone(),
                            route.clone(),
                            client,
                            peer,
                            shutdown.child_token(),
                        ));
                    }
                    Err(e) => {
                        // Out of descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "tcp accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
        connections.close();
        connections.wait().await;
        self.emu.unregister_forwarder(self.local, ForwardKind::Tcp);
        tracing::info!(listen = %self.local, "tcp forwarder stopped");
    }
}

async fn connection(
    emu: Arc<Emulator>,
    route: Arc<Route>,
    client: TcpStream,
    peer: SocketAddr,
    cancel: CancellationToken,
) {
    // The handshake needs both directions; during a partition the connection waits for the heal.
    if !emu.wait_open(&route.from, &route.to, &cancel).await
        || !emu.wait_open(&route.to, &route.from, &cancel).await
    {
        return;
    }
    let target = tokio::select! {
        () = cancel.cancelled() => return,
        dialed = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(route.target)) => dialed,
    };
    let target = match target {
        Ok(Ok(stream)) => stream,
        failed => {
            let reason = match failed {
                Ok(Err(e)) => e.to_string(),
                _ => "timed out".to_string(),
            };
            tracing::debug!(%peer, target = %route.target, %reason, "tcp dial failed, resetting client");
            let _ = client.set_zero_linger();
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = target.set_nodelay(true);
    tracing::debug!(%peer, target = %route.target, "tcp connection forwarded");
    let (mut client_read, mut client_write) = client.into_split();
    let (mut target_read, mut target_write) = target.into_split();
    let up = pump(
        &emu,
        &route.from,
        &route.to,
        &mut client_read,
        &mut target_write,
        &cancel,
    );
    let down = pump(
        &emu,
        &route.to,
        &route.from,
        &mut target_read,
        &mut client_write,
        &cancel,
    );
    let (up, down) = tokio::join!(up, down);
    if let Err(e) = up.and(down) {
        tracing::debug!(%peer, error = %e, "tcp connection broken, resetting both sides");
        let _ = client_write.as_ref().set_zero_linger();
        let _ = target_write.as_ref().set_zero_linger();
    }
}

/// Moves one direction's bytes: reads (paced by the rate), admits each chunk, holds it until its
/// delivery instant and writes it. End of stream is passed on as a half-close after the data.
/// An error cancels the whole connection.
async fn pump(
    emu: &Emulator,
    from: &str,
    to: &str,
    reader: &mut OwnedReadHalf,
    writer: &mut OwnedWriteHalf,
    cancel: &CancellationToken,
) -> std::io::Result<()> {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(IN_FLIGHT);
    let read_side = async move {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let len = tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                read = reader.read(&mut buf) => read?,
            };
            if len == 0 {
                return Ok(());
            }
            loop {
                let now = Instant::now();
                match emu.admit_ordered(from, to, len, now.into_std()) {
                    Ok((Fate::Deliver(at), free)) => {
                        if tx
                            .send((Instant::from_std(at), buf[..len].to_vec()))
                            .await
                            .is_err()
                        {
                            return Ok(());
                        }
                        tokio::select! {
                            () = cancel.cancelled() => return Ok(()),
                            () = tokio::time::sleep_until(Instant::from_std(free)) => {}
                        }
                        break;
                    }
                    Ok((Fate::Drop, _)) => {
                        if !emu.wait_open(from, to, cancel).await {
                            return Ok(());
                        }
                    }
                    Err(e) => return Err(std::io::Error::other(e)),
                }
            }
        }
    };
    let write_side = async {
        loop {
            let next = tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                next = rx.recv() => next,
            };
            let Some((at, data)) = next else { break };
            tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                () = tokio::time::sleep_until(at) => {}
            }
            // A partition that began while this chunk was on the wire holds it too.
            if !emu.wait_open(from, to, cancel).await {
                return Ok(());
            }
            tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                written = writer.write_all(&data) => written?,
            }
        }
        writer.shutdown().await
    };
    let (read, write) = tokio::join!(
        async {
            let r = read_side.await;
            if r.is_err() {
                cancel.cancel();
            }
            r
        },
        async {
            let w = write_side.await;
            if w.is_err() {
                cancel.cancel();
            }
            w
        }
    );
    read.and(write)
}
