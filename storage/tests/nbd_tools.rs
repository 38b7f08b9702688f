//! The NBD server against real clients: qemu-io, qemu-img (qemu-utils) and nbdinfo, nbdcopy
//! (libnbd-bin). A missing tool fails the test with the package to install.

mod common;

use std::process::Output;
use std::time::Duration;

use anyhow::{Context as _, bail};
use common::{Server, pattern};
use storage::nbd::Limits;
use tokio::process::Command;

const MIB: u64 = 1 << 20;

/// Runs `tool args`, failing clearly if the tool is not installed or hangs.
async fn run(tool: &str, package: &str, args: &[&str]) -> anyhow::Result<Output> {
    let mut cmd = Command::new(tool);
    cmd.args(args).kill_on_drop(true);
    match tokio::time::timeout(Duration::from_secs(60), cmd.output()).await {
        Err(_) => bail!("{tool} {args:?} did not finish within 60 s"),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("{tool} is not installed: apt-get install {package} (scripts/setup.sh does)")
        }
        Ok(r) => Ok(r?),
    }
}

/// Runs the tool and insists on success, returning stdout.
async fn ok(tool: &str, package: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = run(tool, package, args).await?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!(
            "{tool} {args:?}: {}\nstdout: {stdout}\nstderr: {stderr}",
            out.status
        );
    }
    Ok(stdout)
}

async fn qemu_io(uri: &str, cmds: &[&str]) -> anyhow::Result<String> {
    qemu_io_cached(uri, "writethrough", cmds).await
}

/// qemu-io with a cache mode: `writethrough` (its default) sets FUA on every write,
/// `writeback` only where a command asks for it (`-f`).
async fn qemu_io_cached(uri: &str, cache: &str, cmds: &[&str]) -> anyhow::Result<String> {
    let mut args = vec!["-f", "raw", "-t", cache, uri];
    for c in cmds {
        args.extend(["-c", c]);
    }
    let out = ok("qemu-io", "qemu-utils", &args).await?;
    // qemu-io exits 0 even when a command fails; its messages say so.
    if out.contains("failed") || out.contains("error") {
        bail!("qemu-io {cmds:?} reported a failure:\n{out}");
    }
    Ok(out)
}

#[tokio::test]
async fn qemu_io_writes_zeroes_discards_and_flushes_and_qemu_img_sees_the_same_bytes()
-> anyhow::Result<()> {
    let server = Server::start(MIB, Limits::default()).await?;
    let uri = server.uri("vol");
    qemu_io(
        &uri,
        &[
            "write -P 0xab 0 64k",
            "read -P 0xab 0 64k",
            "write -P 0x11 64k 64k",
            "write -z 64k 32k",
            "read -P 0 64k 32k",
            "read -P 0x11 96k 32k",
            "write -f -P 0xcd 128k 4k",
            "discard 0 4k",
            "read -P 0 0 4k",
            "read -P 0xab 4k 60k",
            "flush",
        ],
    )
    .await?;

    // The same bytes, written independently into a plain file.
    let mut want = vec![0u8; MIB as usize];
    want[4096..65536].fill(0xab);
    want[96 * 1024..128 * 1024].fill(0x11);
    want[128 * 1024..132 * 1024].fill(0xcd);
    assert!(
        std::fs::read(&server.vol)? == want,
        "the backing file differs"
    );
    let expected = server.dir.path().join("expected.img");
    std::fs::write(&expected, &want)?;
    let expected = expected.to_string_lossy().into_owned();
    ok(
        "qemu-img",
        "qemu-utils",
        &["compare", "-f", "raw", "-F", "raw", &uri, &expected],
    )
    .await?;

    // And compare notices a difference (the test can fail).
    want[200_000] ^= 1;
    std::fs::write(&expected, &want)?;
    let differs = run(
        "qemu-img",
        "qemu-utils",
        &["compare", "-f", "raw", "-F", "raw", &uri, &expected],
    )
    .await?;
    assert_eq!(differs.status.code(), Some(1), "{differs:?}");
    server.stop().await
}

#[tokio::test]
async fn qemu_io_fua_and_flush_reach_the_device() -> anyhow::Result<()> {
    let server = Server::start(MIB, Limits::default()).await?;
    qemu_io_cached(
        &server.uri("rec"),
        "writeback",
        &[
            "write -f -P 1 0 4k",
            "write -P 2 4k 4k",
            "write -z -f 8k 4k",
            "discard 12k 4k",
            "flush",
        ],
    )
    .await?;
    let ops = server.rec.ops();
    for want in [
        ("write", 0, 4096, true),
        ("write", 4096, 4096, false),
        ("zero", 8192, 4096, true),
        ("zero", 12288, 4096, false),
        ("flush", 0, 0, false),
    ] {
        assert!(ops.contains(&want), "{want:?} missing from {ops:?}");
    }
    server.stop().await
}

#[tokio::test]
async fn nbdinfo_reports_size_read_only_and_the_export_list() -> anyhow::Result<()> {
    let server = Server::start(4 * MIB, Limits::default()).await?;
    let size = ok("nbdinfo", "libnbd-bin", &["--size", &server.uri("vol")]).await?;
    assert_eq!(size.trim(), (4 * MIB).to_string());
    let ro = run(
        "nbdinfo",
        "libnbd-bin",
        &["--is", "read-only", &server.uri("ro")],
    )
    .await?;
    assert!(ro.status.success(), "ro export not read-only: {ro:?}");
    let rw = run(
        "nbdinfo",
        "libnbd-bin",
        &["--is", "read-only", &server.uri("vol")],
    )
    .await?;
    assert_eq!(rw.status.code(), Some(2), "vol export read-only? {rw:?}");
    let multi = run(
        "nbdinfo",
        "libnbd-bin",
        &["--can", "multi-conn", &server.uri("vol")],
    )
    .await?;
    assert!(multi.status.success(), "{multi:?}");

    let list = ok(
        "nbdinfo",
        "libnbd-bin",
        &["--list", "--json", &server.uri("")],
    )
    .await?;
    let json: serde_json::Value = serde_json::from_str(&list).context("nbdinfo --json")?;
    let mut names: Vec<&str> = json["exports"]
        .as_array()
        .context("exports array")?
        .iter()
        .filter_map(|e| e["export-name"].as_str())
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["rec", "ro", "vol"], "{list}");
    server.stop().await
}

#[tokio::test]
async fn nbdcopy_onto_the_export_and_back_is_byte_identical() -> anyhow::Result<()> {
    let server = Server::start(8 * MIB, Limits::default()).await?;
    let src = server.dir.path().join("random.img");
    let mut data = pattern(8 * MIB as usize, 42);
    // A hole in the middle, so nbdcopy's zeroing path is exercised too.
    data[2 * MIB as usize..3 * MIB as usize].fill(0);
    std::fs::write(&src, &data)?;
    std::fs::write(&server.vol, vec![0xffu8; 8 * MIB as usize])?;
    let back = server.dir.path().join("back.img");
    let (src, back) = (
        src.to_string_lossy().into_owned(),
        back.to_string_lossy().into_owned(),
    );
    ok(
        "nbdcopy",
        "libnbd-bin",
        &["--flush", &src, &server.uri("vol")],
    )
    .await?;
    assert!(
        std::fs::read(&server.vol)? == data,
        "the export's file differs from the source"
    );
    ok("nbdcopy", "libnbd-bin", &[&server.uri("vol"), &back]).await?;
    assert!(
        std::fs::read(&back)? == data,
        "the copy back differs from the source"
    );
    server.stop().await
}
