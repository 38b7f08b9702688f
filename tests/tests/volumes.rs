//! Block volumes end to end: real agents, real NBD clients (`qemu-io`, `qemu-img`), copies
//! replicated across sites over the WAN.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use consensus::state::CopyState;
use fabric_tests::{TestLab, eventually};
use siteagent::api::{OperationResult, VolumeView};

fn show(lab: &TestLab, name: &str) -> anyhow::Result<VolumeView> {
    lab.ctl(&["volume", "show", name])
}

fn create(lab: &TestLab, args: &[&str]) -> OperationResult {
    let mut all = vec!["volume", "create"];
    all.extend_from_slice(args);
    lab.ctl(&all).expect("volume create")
}

/// Waits until every copy but the primary's was reported in sync with nothing outstanding,
/// in a report made after `after_ms` (unix ms).
fn wait_in_sync(lab: &TestLab, name: &str, after_ms: u64) -> VolumeView {
    eventually(
        Duration::from_secs(60),
        &format!("every copy of {name} in sync"),
        || {
            let v = show(lab, name)?;
            let ok = v.copies.iter().filter(|c| c.site != v.primary).all(|c| {
                c.state == CopyState::InSync && c.lag.writes == 0 && c.reported_ms > after_ms
            });
            Ok(ok.then_some(v))
        },
    )
}

fn image(lab: &TestLab, v: &VolumeView, site: &str) -> PathBuf {
    lab.dir()
        .join("volumes")
        .join(site)
        .join(format!("{}.{}.img", v.name, v.uid))
}

fn tool(name: &str) -> Command {
    let probe = Command::new(name).arg("--version").output();
    assert!(
        probe.is_ok(),
        "`{name}` is missing: run `bash scripts/setup.sh` (it installs qemu-utils)"
    );
    Command::new(name)
}

/// `qemu-img compare` of two raw images: exit 0 when identical, 1 when they differ.
fn compare(a: &std::path::Path, b: &std::path::Path) -> std::process::Output {
    tool("qemu-img")
        .args(["compare", "-f", "raw", "-F", "raw"])
        .arg(a)
        .arg(b)
        .output()
        .expect("qemu-img runs")
}

fn qemu_io(uri: &str, cmds: &[&str]) -> std::process::Output {
    let mut c = tool("qemu-io");
    c.args(["-f", "raw", uri]);
    for cmd in cmds {
        c.args(["-c", cmd]);
    }
    c.output().expect("qemu-io runs")
}

#[test]
fn writes_through_qemu_io_reach_every_copy_byte_for_byte() {
    let lab = TestLab::up(3, 1);
    let r = create(
        &lab,
        &[
            "db",
            "--size",
            "16MiB",
            "--primary",
            "s1",
            "--replica",
            "s2:sync",
            "--replica",
            "s3:async",
        ],
    );
    assert!(r.revision.is_some(), "{r:?}");
    // Served once its primary has reported on the replicas.
    let v = eventually(Duration::from_secs(30), "db served over NBD", || {
        let v = show(&lab, "db")?;
        let reported = v
            .copies
            .iter()
            .all(|c| c.site == v.primary || c.reported_ms > 0);
        Ok(v.nbd.clone().filter(|_| reported).map(|uri| (v, uri)))
    });
    let (v, uri) = v;
    assert!(uri.starts_with("nbd://127."), "{uri}");
    let t0 = siteagent::clock::unix_ms();
    let out = qemu_io(
        &uri,
        &[
            "write -P 0xab 0 1M",
            "write -P 0x5c 4M 512k",
            "write -z 8M 64k",
            "write -P 0x11 2109497 100",
            "flush",
        ],
    );
    assert!(
        out.status.success(),
        "qemu-io write: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = qemu_io(
        &uri,
        &[
            "read -P 0xab 0 1M",
            "read -P 0x5c 4M 512k",
            "read -P 0x11 2109497 100",
            "read -P 0 8M 64k",
        ],
    );
    assert!(
        out.status.success() && !String::from_utf8_lossy(&out.stdout).contains("fail"),
        "qemu-io read back: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let v = wait_in_sync(&lab, "db", t0.max(v.copies[0].reported_ms));
    let primary = image(&lab, &v, "s1");
    for site in ["s2", "s3"] {
        let out = compare(&primary, &image(&lab, &v, site));
        assert!(
            out.status.success(),
            "copy at {site} differs from the primary: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The comparison can fail: a file that missed a write differs.
    let other = lab.dir().join("other.img");
    std::fs::copy(&primary, &other).expect("copy");
    let out = qemu_io(other.to_str().expect("path"), &["write -P 0x01 0 4k"]);
    assert!(out.status.success());
    let out = compare(&primary, &other);
    assert_eq!(out.status.code(), Some(1), "a differing copy is noticed");
}

/// Node id of the (only) agent of `site`.
fn node_of(lab: &TestLab, site: &str) -> u64 {
    lab.procs()
        .into_iter()
        .find(|p| p.site == site)
        .map(|p| p.node)
        .expect("an agent in the site")
}

/// Waits until `name` is served by a host of `site` (after a promotion) and returns the URI.
fn served_at(lab: &TestLab, name: &str, site: &str) -> storage::nbd::client::NbdUri {
    eventually(
        Duration::from_secs(60),
        &format!("{name} served at {site}"),
        || {
            let v = show(lab, name)?;
            // The primary's host has reported under the current epoch: it holds the copy open.
            let host = v
                .copies
                .iter()
                .find(|c| c.site == site)
                .and_then(|c| c.host);
            Ok(match (&v.nbd, host) {
                (Some(uri), Some(h)) if v.primary == site && v.reporter == Some(h) => {
                    Some(storage::nbd::client::parse_uri(uri)?)
                }
                _ => None,
            })
        },
    )
}

/// 4 KiB block `i` as the writer below fills it.
fn block(i: u64) -> Vec<u8> {
    let mut b = Vec::with_capacity(4096);
    while b.len() < 4096 {
        b.extend_from_slice(&i.to_le_bytes());
        b.extend_from_slice(b"fabric!!");
    }
    b
}

/// Writes block after block with FUA until the connection fails or `stop` is set; returns
/// the indices whose write was acknowledged.
fn write_stream(
    uri: storage::nbd::client::NbdUri,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Vec<u64>> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let mut acked = Vec::new();
            let Ok(mut c) =
                storage::nbd::client::NbdClient::connect(&uri.addr(), &uri.export).await
            else {
                return acked;
            };
            for i in 0..2048u64 {
                if stop.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                let data = block(i);
                let write = c.write(i * 4096, &data, true);
                match tokio::time::timeout(Duration::from_secs(10), write).await {
                    Ok(Ok(())) => acked.push(i),
                    _ => break,
                }
            }
            acked
        })
    })
}

/// Runs `f` with an NBD client connected to `uri`, on a runtime of its own.
fn with_client<T>(
    uri: &storage::nbd::client::NbdUri,
    f: impl AsyncFnOnce(&mut storage::nbd::client::NbdClient) -> T,
) -> T {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut c = storage::nbd::client::NbdClient::connect(&uri.addr(), &uri.export)
            .await
            .expect("connect");
        f(&mut c).await
    })
}

/// Which of the `written` units (of `fill(i).len()` bytes at `i × len`) the copy served at `uri`
/// does not hold.
fn missing(
    uri: &storage::nbd::client::NbdUri,
    written: &[u64],
    fill: fn(u64) -> Vec<u8>,
) -> Vec<u64> {
    with_client(uri, async |c| {
        let mut lacking = Vec::new();
        for &i in written {
            let want = fill(i);
            let len = want.len() as u64;
            if c.read(i * len, len as u32).await.expect("read") != want {
                lacking.push(i);
            }
        }
        lacking
    })
}

#[test]
fn sync_replica_holds_every_acknowledged_write_after_the_primary_is_killed() {
    let lab = TestLab::up(3, 1);
    create(
        &lab,
        &[
            "db",
            "--size",
            "16MiB",
            "--primary",
            "s1",
            "--replica",
            "s2:sync",
        ],
    );
    let uri = served_at(&lab, "db", "s1");
    // A new primary first compares every chunk with its replicas; until then the copy is
    // `resyncing`, and the state would refuse to promote it without --force.
    wait_in_sync(&lab, "db", 0);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = write_stream(uri, stop.clone());
    std::thread::sleep(Duration::from_millis(1500));
    lab.kill9(node_of(&lab, "s1"));
    let acked = writer.join().expect("writer");
    assert!(
        acked.len() >= 10,
        "the stream made progress: {}",
        acked.len()
    );
    let r: OperationResult = lab
        .ctl(&["volume", "promote", "db", "--site", "s2"])
        .expect("an in-sync sync replica is promoted without --force");
    assert!(r.change.contains("promote"), "{r:?}");
    let uri = served_at(&lab, "db", "s2");
    let lacking = missing(&uri, &acked, block);
    assert!(
        lacking.is_empty(),
        "{} of {} acknowledged writes are missing on the promoted copy: {lacking:?}",
        lacking.len(),
        acked.len()
    );
}

/// `fabric_volume_received_bytes_total` of `volume` on `node`: replication bytes that reached
/// its copy (0 before the first).
fn received_bytes(lab: &TestLab, node: u64, volume: &str) -> u64 {
    let text = lab.metrics(node).expect("metrics");
    text.lines()
        .filter(|l| l.starts_with("fabric_volume_received_bytes_total"))
        .filter(|l| l.contains(&format!("volume=\"{volume}\"")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// 64 KiB chunk `i` as the tests below write it.
fn chunk(i: u64) -> Vec<u8> {
    (0..65536u64).map(|b| (b ^ i) as u8 | 1).collect()
}

/// Writes chunk `i` at `i × 64 KiB` with FUA through `uri`, for each of `chunks`.
fn write_chunks(uri: &storage::nbd::client::NbdUri, chunks: &[u64]) {
    with_client(uri, async |c| {
        for &i in chunks {
            c.write(i * 65536, &chunk(i), true).await.expect("write");
        }
    });
}

#[test]
fn a_partitioned_async_replica_resyncs_what_changed_its_lag_covers_a_kill_and_the_old_primary_is_reprotected()
 {
    let lab = TestLab::up_with_links(3, 1);
    create(
        &lab,
        &[
            "db",
            "--size",
            "32MiB",
            "--primary",
            "s1",
            "--replica",
            "s2:sync",
            "--replica",
            "s3:async",
        ],
    );
    let uri = served_at(&lab, "db", "s1");
    wait_in_sync(&lab, "db", 0);
    let (s1, s3) = (node_of(&lab, "s1"), node_of(&lab, "s3"));

    // 1. Cut s3 off, change 32 scattered chunks (2 MiB), heal: only those cross the link.
    // Counted from before the cut: a write may still slip through while the cut takes effect.
    let before = received_bytes(&lab, s3, "db");
    lab.link("partition", "s1", "s3");
    let changed: Vec<u64> = (0..32).map(|i| i * 15 + 3).collect();
    write_chunks(&uri, &changed);
    let t_heal = siteagent::clock::unix_ms();
    lab.link("heal", "s1", "s3");
    let v = wait_in_sync(&lab, "db", t_heal);
    let shipped = received_bytes(&lab, s3, "db") - before;
    let changed_bytes = changed.len() as u64 * 65536;
    eprintln!("resync after the partition: {shipped} bytes reached s3 for {changed_bytes} changed");
    // Metadata: one BLAKE3 hash request per chunk batch, plus message framing.
    assert!(
        shipped <= 2 * changed_bytes + 64 * 1024,
        "resync shipped {shipped} bytes for {changed_bytes} changed"
    );
    assert!(
        shipped >= changed_bytes,
        "the changes were shipped: {shipped}"
    );
    for site in ["s2", "s3"] {
        let out = compare(&image(&lab, &v, "s1"), &image(&lab, &v, site));
        assert!(
            out.status.success(),
            "{site}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }

    // 2. Cut s3 off again and write: the lag the fabric reports covers what a kill loses.
    lab.link("partition", "s1", "s3");
    let more: Vec<u64> = (0..16).map(|i| i * 7 + 1).collect();
    write_chunks(&uri, &more);
    let t_written = siteagent::clock::unix_ms();
    let lag = eventually(Duration::from_secs(30), "s3 reported lagging", || {
        let v = show(&lab, "db")?;
        let c = v.copies.iter().find(|c| c.site == "s3").expect("s3");
        Ok((c.reported_ms > t_written && c.state == CopyState::Lagging).then_some(c.lag))
    });
    lab.kill9(s1);
    let r: OperationResult = lab
        .ctl(&["volume", "promote", "db", "--site", "s3", "--force"])
        .expect("forced promotion of the lagging copy");
    assert!(r.change.contains("FORCED"), "{r:?}");
    let uri = served_at(&lab, "db", "s3");
    let lost = missing(&uri, &more, chunk).len() as u64;
    eprintln!("async kill: {lost} writes lost; the fabric reported a lag of {lag:?} just before");
    assert!(lost > 0, "the cut replica really lacked writes");
    assert!(
        lost <= lag.writes,
        "{lost} writes lost, but the fabric reported a lag of only {} writes",
        lag.writes
    );
    assert!(
        lag.bytes >= lost * 65536,
        "lag bytes {} < lost {lost} × 64 KiB",
        lag.bytes
    );

    // 3. Reprotect: the old primary comes back as a replica of s3, resyncs, and the writes it
    //    had that s3 lacks are listed in an event, not silently dropped or merged.
    let t_back = siteagent::clock::unix_ms();
    lab.link("heal", "s1", "s3");
    lab.start(s1);
    let v = eventually(Duration::from_secs(90), "s1's copy in sync with s3", || {
        let v = show(&lab, "db")?;
        let c = v.copies.iter().find(|c| c.site == "s1").expect("s1");
        anyhow::ensure!(
            c.state == CopyState::InSync && c.reported_ms > t_back,
            "s1's copy is {} (reported {} ms after the restart)",
            c.state,
            c.reported_ms.saturating_sub(t_back)
        );
        Ok(Some(v))
    });
    let events: Vec<siteagent::api::EventView> = lab.ctl(&["events"]).expect("events");
    let divergence = events
        .iter()
        .find(|e| e.message.starts_with("volume db: the copy at s1 held"))
        .unwrap_or_else(|| panic!("no divergence event for s1 in {events:#?}"));
    let ranges: u64 = divergence
        .message
        .split(" held ")
        .nth(1)
        .and_then(|t| t.split(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("range count");
    assert!(ranges >= 1, "{}", divergence.message);
    let out = compare(&image(&lab, &v, "s3"), &image(&lab, &v, "s1"));
    assert!(
        out.status.success(),
        "s1 after reprotect: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}
