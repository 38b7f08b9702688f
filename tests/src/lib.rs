//! Harness for end-to-end tests: runs the real `sitectl` and `siteagent` binaries.
//!
//! A [`TestLab`] lives in its own temporary directory on its own 127.N.0.0/16 network, so tests
//! run in parallel. Dropping it stops every agent it started (SIGTERM via `lab down`, then
//! SIGKILL by pid for anything left), also when the test panics, and removes the directory.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::de::DeserializeOwned;

/// Directory of the built binaries: `$FABRIC_BIN_DIR`, else the cargo target dir of this test.
pub fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("FABRIC_BIN_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory")
        .to_path_buf();
    assert!(
        dir.join("sitectl").exists() && dir.join("siteagent").exists(),
        "sitectl/siteagent not built in {}; run `cargo build --bins` first",
        dir.display()
    );
    dir
}

pub fn sitectl_bin() -> PathBuf {
    bin_dir().join("sitectl")
}

pub fn siteagent_bin() -> PathBuf {
    bin_dir().join("siteagent")
}

/// Runs `sitectl` with `args`, returning its output whatever the exit code.
pub fn sitectl(args: &[&str]) -> Output {
    Command::new(sitectl_bin())
        .args(args)
        .env_remove("SITECTL_CONTEXT")
        .output()
        .expect("run sitectl")
}

/// Runs `sitectl` and parses its JSON stdout; fails with its stderr when it exits non-zero.
pub fn sitectl_json<T: DeserializeOwned>(args: &[&str]) -> anyhow::Result<T> {
    let out = sitectl(args);
    if !out.status.success() {
        bail!(
            "sitectl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "sitectl {}: bad JSON: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Polls `f` every 200 ms until it returns `Some`, or fails after `timeout` with the last error.
pub fn eventually<T>(
    timeout: Duration,
    what: &str,
    mut f: impl FnMut() -> anyhow::Result<Option<T>>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match f() {
            Ok(Some(v)) => return v,
            Ok(None) => "condition not met".to_string(),
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() >= deadline {
            panic!("{what}: not within {timeout:?}; last: {last}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// One agent as `sitectl lab status --output json` reports it.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct LabProc {
    pub node: u64,
    pub site: String,
    pub pid: Option<i32>,
    pub address: String,
    pub admin: String,
    pub roles: Vec<String>,
    pub alive: bool,
}

/// A running lab, torn down on drop.
pub struct TestLab {
    dir: tempfile::TempDir,
}

impl TestLab {
    /// `sitectl lab up` with `sites` × `hosts` agents.
    pub fn up(sites: u32, hosts: u32) -> Self {
        Self::up_with(sites, hosts, &[])
    }

    /// `sitectl lab up` with extra flags (`--witness`, `--ipv6`).
    pub fn up_with(sites: u32, hosts: u32, extra: &[&str]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("fabric-lab-")
            .tempdir()
            .expect("temp dir");
        let lab = TestLab { dir };
        let (sites, hosts) = (sites.to_string(), hosts.to_string());
        let mut args = vec![
            "lab",
            "up",
            "--dir",
            lab.dir_str(),
            "--sites",
            &sites,
            "--hosts-per-site",
            &hosts,
            "--timeout",
            "90s",
            "--output",
            "json",
        ];
        args.extend_from_slice(extra);
        let out = sitectl(&args);
        assert!(
            out.status.success(),
            "lab up failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            lab.logs()
        );
        lab
    }

    /// A lab of `sites` × `hosts` whose every link between sites goes through the link
    /// emulator (2 ms each way), so tests can partition and heal pairs of sites.
    pub fn up_with_links(sites: u32, hosts: u32) -> Self {
        let topology = tempfile::Builder::new()
            .prefix("fabric-topology-")
            .suffix(".toml")
            .tempfile()
            .expect("temp file");
        std::fs::write(
            topology.path(),
            format!(
                "sites = {sites}\nhosts_per_site = {hosts}\n\n[[link]]\na = \"*\"\nb = \"*\"\ndelay = \"2ms\"\n"
            ),
        )
        .expect("write topology");
        let path = topology.path().to_str().expect("utf-8 path").to_string();
        Self::up_with(sites, hosts, &["--topology", &path])
    }

    /// `sitectl lab link partition|heal A B`.
    pub fn link(&self, how: &str, a: &str, b: &str) {
        let out = sitectl(&["lab", "link", how, "--dir", self.dir_str(), a, b]);
        assert!(
            out.status.success(),
            "lab link {how} {a} {b}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn dir_str(&self) -> &str {
        self.dir.path().to_str().expect("utf-8 temp path")
    }

    pub fn context(&self) -> String {
        self.dir().join("context.toml").display().to_string()
    }

    /// `sitectl --context <lab> ARGS --output json`, parsed.
    pub fn ctl<T: DeserializeOwned>(&self, args: &[&str]) -> anyhow::Result<T> {
        let ctx = self.context();
        let mut all = vec!["--context", &ctx, "--output", "json"];
        all.extend_from_slice(args);
        sitectl_json(&all)
    }

    /// The same, asking one agent's admin endpoint only.
    pub fn ctl_at<T: DeserializeOwned>(&self, admin: &str, args: &[&str]) -> anyhow::Result<T> {
        let ctx = self.context();
        let mut all = vec!["--context", &ctx, "--endpoint", admin, "--output", "json"];
        all.extend_from_slice(args);
        sitectl_json(&all)
    }

    pub fn procs(&self) -> Vec<LabProc> {
        sitectl_json(&["lab", "status", "--dir", self.dir_str(), "--output", "json"])
            .expect("lab status")
    }

    pub fn proc(&self, node: u64) -> LabProc {
        self.procs()
            .into_iter()
            .find(|p| p.node == node)
            .unwrap_or_else(|| panic!("no node {node} in the lab"))
    }

    pub fn kill9(&self, node: u64) {
        let p = self.proc(node);
        assert!(p.alive, "node {node} is not running");
        let pid = p.pid.expect("pid");
        kill(Pid::from_raw(pid), Signal::SIGKILL).expect("kill -9");
        eventually(Duration::from_secs(10), "killed agent gone", || {
            Ok((!self.proc(node).alive).then_some(()))
        });
    }

    pub fn start(&self, node: u64) {
        let out = sitectl(&[
            "lab",
            "start",
            "--dir",
            self.dir_str(),
            "--node",
            &node.to_string(),
        ]);
        assert!(
            out.status.success(),
            "lab start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn log(&self, node: u64) -> String {
        std::fs::read_to_string(self.dir().join(format!("nodes/n{node}/agent.log")))
            .unwrap_or_default()
    }

    /// Every agent log, for failure messages.
    pub fn logs(&self) -> String {
        let mut all = String::new();
        if let Ok(entries) = std::fs::read_dir(self.dir().join("nodes")) {
            for e in entries.flatten() {
                let log = std::fs::read_to_string(e.path().join("agent.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                all.push_str(&format!("--- {} ---\n", e.path().display()));
                for l in tail.into_iter().rev() {
                    all.push_str(l);
                    all.push('\n');
                }
            }
        }
        all
    }

    /// Pids recorded in the lab's pid files.
    fn recorded_pids(&self) -> Vec<i32> {
        let Ok(entries) = std::fs::read_dir(self.dir().join("nodes")) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| std::fs::read_to_string(e.path().join("agent.pid")).ok())
            .filter_map(|p| p.trim().parse().ok())
            .collect()
    }
}

impl TestLab {
    /// `GET /metrics` of agent `node`'s admin API, with the lab's operator certificate, through
    /// `curl` (which checks the agent's certificate against the fabric CA and its DNS name).
    pub fn metrics(&self, node: u64) -> anyhow::Result<String> {
        let agent = self.proc(node);
        let name = format!("{node}.{}.fabric", agent.site);
        let text = std::fs::read_to_string(self.context())?;
        let ctx: toml::Table = toml::from_str(&text)?;
        let file = |key: &str| -> anyhow::Result<String> {
            let rel = ctx
                .get("tls")
                .and_then(|t| t.get(key))
                .and_then(|v| v.as_str())
                .ok_or_else(|| anyhow::anyhow!("context has no tls.{key}"))?;
            Ok(self.dir().join(rel).display().to_string())
        };
        let out = Command::new("curl")
            .args(["--silent", "--show-error", "--fail", "--max-time", "10"])
            .args(["--cacert", &file("ca")?, "--cert", &file("cert")?])
            .args(["--key", &file("key")?])
            // The agent's certificate names `node.site.fabric`, not its address.
            .args(["--connect-to", &format!("{name}:443:{}", agent.admin)])
            .arg(format!("https://{name}/metrics"))
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "curl /metrics of node {node}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8(out.stdout)?)
    }
}

impl TestLab {
    /// Sends `signal` to the agent of `node`.
    pub fn signal(&self, node: u64, signal: Signal) {
        let pid = self.proc(node).pid.expect("pid");
        kill(Pid::from_raw(pid), signal).unwrap_or_else(|e| panic!("{signal} to node {node}: {e}"));
    }

    /// Processes (workloads, guards) whose working directory is inside this lab.
    fn workload_pids(&self) -> Vec<i32> {
        let dir = self.dir();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| {
                std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd.starts_with(dir))
            })
            .collect()
    }
}

impl Drop for TestLab {
    fn drop(&mut self) {
        // A frozen agent cannot act on SIGTERM.
        for pid in self.recorded_pids() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGCONT);
        }
        let _ = sitectl(&["lab", "down", "--dir", self.dir_str(), "--grace", "5s"]);
        for pid in self.workload_pids() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        // Belt and braces: anything still running whose command line names this lab dies now.
        let dir = self.dir_str().to_string();
        for pid in self.recorded_pids() {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(&dir) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
}

/// A child process killed (SIGKILL) and reaped when dropped, also on panic.
pub struct ChildGuard(pub std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One `dig` answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dig {
    /// `NOERROR`, `NXDOMAIN`, `SERVFAIL`, `REFUSED`, or `TIMEOUT` when nothing answered.
    pub status: String,
    /// Answer records as `TYPE DATA`, e.g. `A 127.10.1.1`.
    pub answers: Vec<String>,
    /// Authority records as `TYPE DATA`.
    pub authority: Vec<String>,
}

impl Dig {
    /// Addresses of the A/AAAA answers.
    pub fn addresses(&self) -> Vec<String> {
        self.answers
            .iter()
            .filter_map(|a| a.strip_prefix("A ").or_else(|| a.strip_prefix("AAAA ")))
            .map(str::to_string)
            .collect()
    }
}

/// Asks `server` (ip:port) for `name` `qtype` with the real `dig`.
pub fn dig(server: &str, name: &str, qtype: &str) -> Dig {
    let (ip, port) = server.rsplit_once(':').expect("ip:port");
    let ip = ip.trim_start_matches('[').trim_end_matches(']');
    let out = Command::new("dig")
        .args([
            &format!("@{ip}"),
            "-p",
            port,
            name,
            qtype,
            "+norec",
            "+tries=1",
            "+time=1",
            "+noall",
            "+comments",
            "+answer",
            "+authority",
        ])
        .output()
        .expect("run dig (package bind9-dnsutils)");
    let text = String::from_utf8_lossy(&out.stdout);
    let status = text
        .lines()
        .find_map(|l| l.split("status: ").nth(1))
        .and_then(|s| s.split(',').next())
        .unwrap_or("TIMEOUT")
        .to_string();
    let mut section = "";
    let (mut answers, mut authority) = (Vec::new(), Vec::new());
    for line in text.lines() {
        if line.starts_with(";; ANSWER SECTION") {
            section = "answer";
        } else if line.starts_with(";; AUTHORITY SECTION") {
            section = "authority";
        } else if line.starts_with(';') || line.trim().is_empty() {
            continue;
        } else {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() >= 5 {
                let rec = format!("{} {}", f[3], f[4..].join(" "));
                match section {
                    "answer" => answers.push(rec),
                    "authority" => authority.push(rec),
                    _ => {}
                }
            }
        }
    }
    Dig {
        status,
        answers,
        authority,
    }
}

/// `GET /whoami` from the demo service at `addr` (ip:port), parsed.
pub fn whoami(addr: &str) -> anyhow::Result<demo::Whoami> {
    use std::io::{Read, Write};
    let sock: std::net::SocketAddr = addr.parse().context("address")?;
    let mut s = std::net::TcpStream::connect_timeout(&sock, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    write!(
        s,
        "GET /whoami HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    let json = body
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .context("no HTTP body")?;
    Ok(serde_json::from_str(json.trim())?)
}

/// Kills (SIGCONT, then SIGKILL) every process whose command line or working directory lies in
/// `dir`: agents, guards, workloads, the link emulator. For tests that run `sitectl drill run`
/// with a lab directory of their own.
pub fn kill_everything_under(dir: &Path) {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    let needle = dir.to_string_lossy().to_string();
    for pid in entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
    {
        let cwd_inside =
            std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|c| c.starts_with(dir));
        let cmd_inside = std::fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&needle));
        if (cwd_inside || cmd_inside) && pid != std::process::id() as i32 {
            let _ = kill(Pid::from_raw(pid), Signal::SIGCONT);
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}
