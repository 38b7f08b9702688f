//! The control protocol of `fabric-emu`: JSON lines over a Unix socket, one response line per
//! request line, and the client function `sitectl` calls.
//!
//! ```text
//! → {"op":"set","a":"s1","b":"s2","direction":"both","params":{"delay_ms":40,"jitter_ms":5,"loss":0.01,"rate_bps":100000000}}
//! ← {"ok":{"links":[...],"forwarders":[...]}}
//! → {"op":"partition","a":"s1","b":"s2"}          (direction defaults to "both")
//! → {"op":"heal","a":"s1","b":"s2","direction":"a_to_b"}
//! → {"op":"status"}
//! ← {"error":"no link between sites s1 and s9"}
//! ```
//!
//! Invariant: every request gets exactly one response line, and a successful one carries the
//! status after the change; a bad line is answered with an error, never by closing silently.
//!
//! It does not authenticate: the socket's file permissions are the access control.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::EmuError;
use crate::params::ParamsSpec;
use crate::table::{Direction, Emulator, Status};

/// The longest request or response line accepted.
pub const MAX_LINE: usize = 1 << 20;

/// How long [`request`] waits for the daemon.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// One control request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Sets the selected direction(s) of the `a`–`b` link to exactly `params` (absent fields:
    /// no impairment), keeping each direction's partition state unless `params.partitioned`
    /// says otherwise.
    Set {
        a: String,
        b: String,
        #[serde(default)]
        direction: Direction,
        params: ParamsSpec,
    },
    /// Cuts the selected direction(s).
    Partition {
        a: String,
        b: String,
        #[serde(default)]
        direction: Direction,
    },
    /// Clears the partition of the selected direction(s), keeping delay, loss and rate.
    Heal {
        a: String,
        b: String,
        #[serde(default)]
        direction: Direction,
    },
    /// Reports links, their counters and the forwarders. (A struct variant, so unknown fields
    /// are refused here too.)
    Status {},
}

/// The answer to one request: `{"ok": status}` or `{"error": "message"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    Ok(Status),
    Error(String),
}

impl Response {
    /// The status, or the daemon's refusal as [`EmuError::Refused`].
    pub fn into_result(self) -> Result<Status, EmuError> {
        match self {
            Response::Ok(status) => Ok(status),
            Response::Error(message) => Err(EmuError::Refused { message }),
        }
    }
}

/// Applies one request to the emulator. Pure apart from the emulator's state.
pub fn handle(emu: &Emulator, request: &Request) -> Response {
    let applied = match request {
        Request::Set {
            a,
            b,
            direction,
            params,
        } => emu.update(a, b, *direction, |current| {
            Ok(params.to_params(current.partitioned)?)
        }),
        Request::Partition { a, b, direction } => emu.partition(a, b, *direction),
        Request::Heal { a, b, direction } => emu.heal(a, b, *direction),
        Request::Status {} => Ok(()),
    };
    match applied {
        Ok(()) => {
            if !matches!(request, Request::Status {}) {
                tracing::info!(?request, "link changed");
            }
            Response::Ok(emu.status())
        }
        Err(e) => Response::Error(e.to_string()),
    }
}

/// Parses one request line and answers it.
pub fn handle_line(emu: &Emulator, line: &str) -> Response {
    match serde_json::from_str::<Request>(line) {
        Ok(request) => handle(emu, &request),
        Err(e) => Response::Error(format!("bad request: {e}")),
    }
}

/// Binds the control socket at `path`, replacing a stale socket file left by a dead daemon but
/// refusing to take over from a live one.
pub fn bind(path: &Path) -> Result<UnixListener, EmuError> {
    let control_err = |source| EmuError::Control {
        path: path.to_path_buf(),
        source,
    };
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(control_err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                "another emulator is listening there",
            )));
        }
        std::fs::remove_file(path).map_err(control_err)?;
    }
    UnixListener::bind(path).map_err(control_err)
}

/// Serves control connections until `shutdown`, then removes the socket file.
pub async fn serve(
    emu: Arc<Emulator>,
    listener: UnixListener,
    path: PathBuf,
    shutdown: CancellationToken,
) {
    tracing::info!(path = %path.display(), "control socket up");
    let connections = TaskTracker::new();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(session(emu.clone(), stream, shutdown.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "control accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    connections.close();
    connections.wait().await;
    let _ = std::fs::remove_file(&path);
}

async fn session(emu: Arc<Emulator>, stream: UnixStream, shutdown: CancellationToken) {
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    let mut line = Vec::new();
    loop {
        line.clear();
        let mut limited = (&mut read).take(MAX_LINE as u64 + 1);
        let got = tokio::select! {
            () = shutdown.cancelled() => return,
            got = limited.read_until(b'\n', &mut line) => got,
        };
        let response = match got {
            Ok(0) | Err(_) => return,
            Ok(_) if line.len() > MAX_LINE => {
                Response::Error(format!("request longer than {MAX_LINE} bytes"))
            }
            Ok(_) => match std::str::from_utf8(&line) {
                Ok(text) if text.trim().is_empty() => continue,
                Ok(text) => handle_line(&emu, text.trim()),
                Err(_) => Response::Error("request is not UTF-8".into()),
            },
        };
        let oversized = line.len() > MAX_LINE;
        let mut out = match serde_json::to_vec(&response) {
            Ok(out) => out,
            Err(e) => format!("{{\"error\":\"cannot encode response: {e}\"}}").into_bytes(),
        };
        out.push(b'\n');
        if write.write_all(&out).await.is_err() || oversized {
            // After an oversized line the stream position is unknown: answer once and close.
            return;
        }
    }
}

/// Sends one request to the emulator listening at `socket_path` and returns its response
/// (which may be [`Response::Error`]; see [`Response::into_result`]).
pub async fn request(socket_path: &Path, request: &Request) -> Result<Response, EmuError> {
    let path = socket_path.to_path_buf();
    tokio::time::timeout(REQUEST_TIMEOUT, exchange(&path, request))
        .await
        .map_err(|_| EmuError::ControlTimeout {
            path: path.clone(),
            secs: REQUEST_TIMEOUT.as_secs(),
        })?
}

async fn exchange(path: &Path, request: &Request) -> Result<Response, EmuError> {
    let control_err = |source| EmuError::Control {
        path: path.to_path_buf(),
        source,
    };
    let mut stream = UnixStream::connect(path).await.map_err(control_err)?;
    let mut line = serde_json::to_vec(request).map_err(|e| EmuError::Protocol {
        reason: format!("cannot encode request: {e}"),
    })?;
    line.push(b'\n');
    stream.write_all(&line).await.map_err(control_err)?;
    let mut reader = BufReader::new(stream).take(MAX_LINE as u64 + 1);
    let mut answer = Vec::new();
    reader
        .read_until(b'\n', &mut answer)
        .await
        .map_err(control_err)?;
    if answer.is_empty() {
        return Err(EmuError::Protocol {
            reason: "the emulator closed the connection without answering".into(),
        });
    }
    serde_json::from_slice(&answer).map_err(|e| EmuError::Protocol {
        reason: format!("bad response: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::params::LinkParams;

    fn lab() -> Emulator {
        let emu = Emulator::new(1);
        emu.add_link("s1", "s2", LinkParams::default(), LinkParams::default())
            .expect("link");
        emu
    }

    #[test]
    fn set_request_from_json_changes_the_link() {
        let emu = lab();
        let line = r#"{"op":"set","a":"s1","b":"s2","direction":"both","params":{"delay_ms":40,"jitter_ms":5,"loss":0.01,"rate_bps":100000000}}"#;
        let Response::Ok(status) = handle_line(&emu, line) else {
            panic!("refused");
        };
        let p = emu.params("s2", "s1").expect("params");
        assert_eq!(p.delay, Duration::from_millis(40));
        assert_eq!(p.jitter, Duration::from_millis(5));
        assert_eq!(p.rate_bps, Some(100_000_000));
        assert_eq!(status.links[0].a_to_b.params.delay_ms, 40.0);
    }

    #[test]
    fn set_keeps_a_partition_and_heal_keeps_the_delay() {
        let emu = lab();
        handle_line(&emu, r#"{"op":"partition","a":"s1","b":"s2"}"#);
        handle_line(
            &emu,
            r#"{"op":"set","a":"s1","b":"s2","params":{"delay_ms":10}}"#,
        );
        assert!(emu.params("s1", "s2").expect("p").partitioned);
        handle_line(&emu, r#"{"op":"heal","a":"s2","b":"s1"}"#);
        let p = emu.params("s1", "s2").expect("p");
        assert!(!p.partitioned);
        assert_eq!(p.delay, Duration::from_millis(10));
    }

    #[test]
    fn unknown_pair_is_answered_with_an_error_naming_it() {
        let emu = lab();
        let response = handle_line(&emu, r#"{"op":"partition","a":"s1","b":"w"}"#);
        assert_eq!(
            response,
            Response::Error("no link between sites s1 and w".into())
        );
    }

    #[test]
    fn malformed_requests_are_answered_with_an_error() {
        let emu = lab();
        for bad in [
            "not json",
            r#"{"op":"explode"}"#,
            r#"{"op":"heal","a":"s1"}"#,
            r#"{"op":"status","extra":1}"#,
            r#"{"op":"heal","a":"s1","b":"s2","x":1}"#,
            r#"{"op":"set","a":"s1","b":"s2","params":{"delay":40}}"#,
            r#"{"op":"set","a":"s1","b":"s2","params":{"loss":7}}"#,
        ] {
            assert!(
                matches!(handle_line(&emu, bad), Response::Error(_)),
                "{bad}"
            );
        }
    }

    #[test]
    fn responses_have_the_documented_shape() {
        let ok = serde_json::to_value(handle(&lab(), &Request::Status {})).expect("json");
        assert!(ok["ok"]["links"].is_array(), "{ok}");
        let status = serde_json::to_value(Request::Status {}).expect("json");
        assert_eq!(status, serde_json::json!({"op": "status"}));
        let err = serde_json::to_value(Response::Error("x".into())).expect("json");
        assert_eq!(err, serde_json::json!({"error": "x"}));
    }

    #[tokio::test]
    async fn request_round_trips_over_the_socket() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("emu.sock");
        let emu = Arc::new(lab());
        let shutdown = CancellationToken::new();
        let listener = bind(&path).expect("bind");
        let server = tokio::spawn(serve(emu.clone(), listener, path.clone(), shutdown.clone()));
        let response = request(
            &path,
            &Request::Partition {
                a: "s1".into(),
                b: "s2".into(),
                direction: Direction::BToA,
            },
        )
        .await
        .expect("request");
        let status = response.into_result().expect("ok");
        assert_eq!(status.links[0].b_to_a.params.partitioned, Some(true));
        assert_eq!(status.links[0].a_to_b.params.partitioned, Some(false));
        let refused = request(
            &path,
            &Request::Heal {
                a: "x".into(),
                b: "y".into(),
                direction: Direction::Both,
            },
        )
        .await
        .expect("request")
        .into_result();
        assert!(matches!(refused, Err(EmuError::Refused { .. })));
        // A second daemon on the same socket is refused.
        assert!(bind(&path).is_err());
        shutdown.cancel();
        server.await.expect("join");
        assert!(!path.exists(), "socket file removed on shutdown");
    }

    #[tokio::test]
    async fn request_to_a_missing_socket_names_the_path() {
        let err = request(Path::new("/nonexistent/emu.sock"), &Request::Status {})
            .await
            .expect_err("no daemon");
        assert!(err.to_string().contains("/nonexistent/emu.sock"), "{err}");
    }
}
