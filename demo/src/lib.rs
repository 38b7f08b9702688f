//! `fabric-demo`: the smallest service the fabric can place, fence and move, used by workload
//! tests and failover drills.
//!
//! Owns: its configuration (the `FABRIC_*` environment a driver sets, overridable by flags), the
//! listening sockets, and the HTTP endpoints: `GET /whoami` (which site, host, epoch and pid
//! answer), `GET /healthz`, and its durable records (`POST /write`, `GET /records`, kept on an NBD
//! volume or a site-shared file: see [`records`]).
//!
//! Invariant: it serves only on sockets it bound at start, and it prints exactly one `started`
//! line before serving and one `stopping` line (with `at_ms`, wall-clock unix ms) once shutdown
//! begins, so a drill can order its life against another site's.
//!
//! Does not: keep state other than its records, talk to other instances, or restart itself. It stops when told to
//! (SIGTERM), or when its guard kills it.

pub mod record_log;
pub mod records;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// How long in-flight requests may take to finish after shutdown begins.
const DRAIN: Duration = Duration::from_secs(2);

/// What went wrong starting or running the demo.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("bad address {0:?} in FABRIC_ADDRESSES / --addresses")]
    BadAddress(String),
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("no address could be bound (tried {0})")]
    NothingBound(String),
    #[error("serving failed: {0}")]
    Serve(std::io::Error),
    #[error("FABRIC_VOLUME_NBD / --volume-nbd: {0}")]
    VolumeUri(storage::nbd::NbdError),
}

/// Command line; every flag but `--listen` falls back to the variable a driver sets.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "fabric-demo", version)]
pub struct DemoArgs {
    /// Service name.
    #[arg(long, env = "FABRIC_SERVICE", default_value = "demo")]
    pub service: String,
    /// Site this instance runs at.
    #[arg(long, env = "FABRIC_SITE", default_value = "local")]
    pub site: String,
    /// Host id within the site.
    #[arg(long, env = "FABRIC_HOST", default_value_t = 0)]
    pub host: u64,
    /// Ownership epoch this instance runs under.
    #[arg(long, env = "FABRIC_EPOCH", default_value_t = 0)]
    pub epoch: u64,
    /// Port to serve on (0: any free port).
    #[arg(long, env = "FABRIC_PORT", default_value_t = 0)]
    pub port: u16,
    /// Comma-separated IPs to bind (v4 and/or v6); empty means 127.0.0.1.
    #[arg(long, env = "FABRIC_ADDRESSES", default_value = "")]
    pub addresses: String,
    /// `ADDR:PORT` to bind, repeatable; replaces `--addresses` and `--port` when given.
    #[arg(long = "listen")]
    pub listen: Vec<SocketAddr>,
    /// Directory for the service's data (unused by the demo beyond reporting it).
    #[arg(long, env = "FABRIC_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Root of the site-shared volumes: records go to `<root>/<site>/<service>/records.log`.
    /// Without it (and without `--volume-nbd`), `POST /write` is refused.
    #[arg(long, env = "FABRIC_VOLUME_ROOT")]
    pub volume_root: Option<PathBuf>,
    /// The service's block volume, `nbd://host:port/export`: records go to a log on it.
    /// Takes precedence over `--volume-root`.
    #[arg(long, env = "FABRIC_VOLUME_NBD")]
    pub volume_nbd: Option<String>,
}

/// Who this instance is; the body of `GET /whoami`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Whoami {
    pub service: String,
    pub site: String,
    pub host: u64,
    pub epoch: u64,
    pub pid: u32,
    pub started_ms: u64,
}

impl DemoArgs {
    /// The socket addresses to bind.
    pub fn listen_addrs(&self) -> Result<Vec<SocketAddr>, DemoError> {
        if !self.listen.is_empty() {
            return Ok(self.listen.clone());
        }
        let mut addrs = Vec::new();
        for part in self.addresses.split(',').map(str::trim) {
            if part.is_empty() {
                continue;
            }
            let ip: IpAddr = part
                .parse()
                .map_err(|_| DemoError::BadAddress(part.to_owned()))?;
            addrs.push(SocketAddr::new(ip, self.port));
        }
        if addrs.is_empty() {
            addrs.push(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), self.port));
        }
        Ok(addrs)
    }

    /// Where records go: the NBD volume if given, else the site-shared file, else nowhere.
    pub fn records(&self) -> Result<records::Records, DemoError> {
        if let Some(uri) = &self.volume_nbd {
            let uri = storage::nbd::parse_uri(uri).map_err(DemoError::VolumeUri)?;
            return Ok(records::Records::on_volume(uri));
        }
        Ok(records::Records::at(self.volume_root.as_ref().map(
            |root| {
                root.join(&self.site)
                    .join(&self.service)
                    .join("records.log")
            },
        )))
    }

    pub fn whoami(&self, started_ms: u64) -> Whoami {
        Whoami {
            service: self.service.clone(),
            site: self.site.clone(),
            host: self.host,
            epoch: self.epoch,
            pid: std::process::id(),
            started_ms,
        }
    }
}

/// Wall-clock unix milliseconds.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn bind_one(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        // Otherwise `[::]:p` would also claim `0.0.0.0:p` and clash with an explicit v4 bind.
        socket.set_only_v6(true)?;
    }
    // A successor on the same host must not wait out TIME_WAIT of its predecessor.
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    socket.set_nonblocking(true)?;
    TcpListener::from_std(socket.into())
}

/// Binds every address. A v6 failure is a warning (hosts without IPv6 exist); a v4 failure, or
/// having nothing bound at all, is fatal.
pub fn bind(addrs: &[SocketAddr]) -> Result<Vec<TcpListener>, DemoError> {
    let mut listeners = Vec::new();
    for &addr in addrs {
        match bind_one(addr) {
            Ok(l) => listeners.push(l),
            Err(source) if addr.is_ipv6() => {
                tracing::warn!(%addr, "cannot bind IPv6 address, continuing without it: {source}");
            }
            Err(source) => return Err(DemoError::Bind { addr, source }),
        }
    }
    if listeners.is_empty() {
        let tried = addrs
            .iter()
            .map(SocketAddr::to_string)
            .collect::<Vec<_>>()
            .join(",");
        return Err(DemoError::NothingBound(tried));
    }
    Ok(listeners)
}

/// The HTTP routes.
pub fn router(who: Whoami, records: records::Records) -> Router {
    let writes = Router::new()
        .route("/write", axum::routing::post(records::write))
        .route("/records", get(records::list))
        .with_state(records);
    Router::new()
        .route("/whoami", get(whoami))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(Arc::new(who))
        .merge(writes)
}

async fn whoami(State(who): State<Arc<Whoami>>) -> Json<Whoami> {
    Json((*who).clone())
}

fn describe(who: &Whoami) -> String {
    format!(
        "service={} site={} host={} epoch={} pid={}",
        who.service, who.site, who.host, who.epoch, who.pid
    )
}

/// Serves on `listeners` until `shutdown`, printing the `started` and `stopping` lines.
pub async fn serve(
    listeners: Vec<TcpListener>,
    who: Whoami,
    records: records::Records,
    shutdown: CancellationToken,
) -> Result<(), DemoError> {
    let listen = listeners
        .iter()
        .filter_map(|l| l.local_addr().ok())
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let app = router(who.clone(), records);
    let mut servers = tokio::task::JoinSet::new();
    for listener in listeners {
        let app = app.clone();
        let stop = shutdown.clone();
        servers.spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
        });
    }
    println!(
        "fabric-demo started {} at_ms={} listen={listen}",
        describe(&who),
        unix_ms()
    );
    tokio::select! {
        _ = shutdown.cancelled() => {}
        Some(ended) = servers.join_next() => {
            shutdown.cancel();
            if let Ok(Err(e)) = ended {
                return Err(DemoError::Serve(e));
            }
        }
    }
    println!(
        "fabric-demo stopping {} at_ms={}",
        describe(&who),
        unix_ms()
    );
    let drained = tokio::time::timeout(DRAIN, async {
        while servers.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!("requests still in flight after {DRAIN:?}, leaving them");
    }
    Ok(())
}

/// Binds and serves the instance `args` describes until `shutdown`.
pub async fn run(args: DemoArgs, shutdown: CancellationToken) -> Result<(), DemoError> {
    let records = args.records()?;
    let listeners = bind(&args.listen_addrs()?)?;
    serve(listeners, args.whoami(unix_ms()), records, shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn args(list: &[&str]) -> Option<DemoArgs> {
        DemoArgs::try_parse_from(std::iter::once("fabric-demo").chain(list.iter().copied())).ok()
    }

    #[test]
    fn addresses_and_port_combine_into_one_socket_per_address() {
        let a = args(&["--addresses", "127.0.0.1, ::1", "--port", "8080"]);
        let addrs = a.map(|a| a.listen_addrs().ok());
        let want: Vec<SocketAddr> = ["127.0.0.1:8080", "[::1]:8080"]
            .iter()
            .filter_map(|s| s.parse().ok())
            .collect();
        assert_eq!(addrs, Some(Some(want)));
    }

    #[test]
    fn listen_flags_replace_addresses_and_port() {
        let a = args(&["--addresses", "10.0.0.1", "--listen", "127.0.0.1:9"]);
        let addrs = a.map(|a| a.listen_addrs().ok());
        let want: Vec<SocketAddr> = ["127.0.0.1:9"]
            .iter()
            .filter_map(|s| s.parse().ok())
            .collect();
        assert_eq!(addrs, Some(Some(want)));
    }

    #[test]
    fn no_addresses_means_loopback() {
        let a = args(&["--addresses", ""]);
        let addrs = a.map(|a| a.listen_addrs().ok());
        let want: Vec<SocketAddr> = ["127.0.0.1:0"]
            .iter()
            .filter_map(|s| s.parse().ok())
            .collect();
        assert_eq!(addrs, Some(Some(want)));
    }

    #[test]
    fn a_volume_uri_takes_precedence_and_a_bad_one_is_refused_by_name() {
        let both = args(&[
            "--volume-root",
            "/tmp/v",
            "--volume-nbd",
            "nbd://127.0.0.1:1/web",
        ]);
        let records = both.and_then(|a| a.records().ok());
        let want = storage::nbd::parse_uri("nbd://127.0.0.1:1/web").ok();
        assert_eq!(records.as_ref().and_then(|r| r.volume()), want.as_ref());
        let file_only = args(&["--volume-root", "/tmp/v"]).and_then(|a| a.records().ok());
        assert!(file_only.is_some_and(|r| r.volume().is_none()));
        let bad = args(&["--volume-nbd", "http://x/web"]).map(|a| a.records().err());
        assert!(
            matches!(&bad, Some(Some(e @ DemoError::VolumeUri(_))) if e.to_string().contains("http")),
            "{bad:?}"
        );
    }

    #[test]
    fn a_malformed_address_is_refused_by_name() {
        let a = args(&["--addresses", "127.0.0.1,nonsense"]);
        let err = a.and_then(|a| a.listen_addrs().err());
        assert!(matches!(err, Some(DemoError::BadAddress(s)) if s == "nonsense"));
    }

    #[tokio::test]
    async fn an_unbindable_v6_address_is_skipped_but_v4_is_served() {
        // 2001:db8::/32 is documentation space, never configured on a test host.
        let addrs: Vec<SocketAddr> = ["127.0.0.1:0", "[2001:db8::1]:0"]
            .iter()
            .filter_map(|s| s.parse().ok())
            .collect();
        let bound = bind(&addrs);
        assert!(matches!(&bound, Ok(l) if l.len() == 1), "{bound:?}");
    }

    #[tokio::test]
    async fn nothing_bindable_is_fatal() {
        let addrs: Vec<SocketAddr> = ["[2001:db8::1]:0"]
            .iter()
            .filter_map(|s| s.parse().ok())
            .collect();
        assert!(matches!(bind(&addrs), Err(DemoError::NothingBound(_))));
        let addrs: Vec<SocketAddr> = ["192.0.2.1:0"]
            .iter()
            .filter_map(|s| s.parse().ok())
            .collect();
        assert!(matches!(bind(&addrs), Err(DemoError::Bind { .. })));
    }
}
