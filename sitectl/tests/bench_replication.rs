//! `sitectl bench replication` end to end, as the real binary at a tiny size: it runs every
//! phase, prints every figure as JSON, and leaves no image behind. The figures themselves are
//! measured, never asserted here.

use std::process::Command;

fn number(v: &serde_json::Value, path: &str) -> f64 {
    let mut cur = v;
    for key in path.split('.') {
        cur = match key.parse::<usize>() {
            Ok(i) => &cur[i],
            Err(_) => &cur[key],
        };
    }
    cur.as_f64()
        .unwrap_or_else(|| panic!("{path} is not a number in {v:#}"))
}

#[test]
fn a_tiny_replication_bench_prints_every_figure_as_json_and_cleans_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(env!("CARGO_BIN_EXE_sitectl"))
        .args([
            "bench",
            "replication",
            "--size",
            "8MiB",
            "--writes",
            "20",
            "--rtt",
            "2ms",
            "--changed",
            "2MiB",
            "--away",
            "8MiB",
            "--journal-limit",
            "4MiB",
            "--output",
            "json",
            "--dir",
        ])
        .arg(dir.path())
        .output()
        .expect("run sitectl");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "sitectl failed: {stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)));

    for path in [
        "rate_bps",
        "link_mib_s",
        "local.fua_4k_p50_ms",
        "local.fua_4k_p99_ms",
        "local.seq_mib_s",
        "rtts.0.rtt_ms",
        "rtts.0.measured_rtt_ms",
        "rtts.0.sync.p50_ms",
        "rtts.0.sync.p99_ms",
        "rtts.0.sync.reference_ms",
        "rtts.0.sync.ratio",
        "rtts.0.throughput.mib_s",
        "rtts.0.throughput.reference_mib_s",
        "rtts.0.throughput.ratio",
        "rtts.0.throughput.window_bound_mib_s",
        "rtts.0.throughput.requests",
        "rtts.0.throughput.request_ms_avg",
        "rtts.0.throughput.replica_ms_avg",
        "rtts.0.throughput.gap_ms_avg",
        "unreplicated.fua_4k_p50_raw_ms",
        "unreplicated.fua_4k_p50_engine_ms",
        "unreplicated.fua_overhead_pct",
        "unreplicated.seq_raw_mib_s",
        "unreplicated.seq_engine_mib_s",
        "unreplicated.seq_overhead_pct",
        "memory.rss_before_bytes",
        "memory.rss_peak_growth_bytes",
        "memory.rss_end_growth_bytes",
        "memory.journal_peak_bytes",
        "memory.dirty_bits_bytes",
    ] {
        assert!(number(&report, path).is_finite(), "{path}");
    }
    assert_eq!(
        report["rtts"].as_array().map(Vec::len),
        Some(1),
        "{report:#}"
    );
    assert_eq!(number(&report, "rtts.0.rtt_ms"), 2.0);
    assert!(report["rtts"][0]["throughput"]["limited_by"].is_string());

    // Both resync paths ran, and each sent at least the changed bytes (a protocol fact).
    let resync = report["rtts"][0]["resync"].as_array().expect("resync rows");
    let paths: Vec<&str> = resync.iter().filter_map(|r| r["path"].as_str()).collect();
    assert_eq!(paths, ["journal replay", "dirty chunks"], "{report:#}");
    for r in resync {
        assert_eq!(number(r, "changed_bytes"), (2u64 << 20) as f64);
        assert!(
            number(r, "link_bytes") >= number(r, "changed_bytes"),
            "{r:#}"
        );
        assert!(number(r, "wire_bytes") >= number(r, "link_bytes"), "{r:#}");
        assert!(number(r, "ratio").is_finite() && number(r, "seconds") >= 0.0);
    }
    // 8 MiB away with a 4 MiB journal: the spill point is reported.
    assert!(
        number(&report, "memory.spilled_at_bytes") <= (5u64 << 20) as f64,
        "{report:#}"
    );

    let left: Vec<_> = std::fs::read_dir(dir.path())
        .expect("read dir")
        .map(|e| e.expect("entry").path())
        .collect();
    assert!(left.is_empty(), "the bench left {left:?} behind");
}
