//! `sitectl bench replication`'s table: one row per figure, with what it is compared with and
//! the goal, then notes on what limits throughput, where the journal spills and the build.

use crate::bench::replication::Report;
use crate::output::table;

const MIB: f64 = (1u64 << 20) as f64;

fn mib(bytes: u64) -> String {
    let m = bytes as f64 / MIB;
    if m >= 10.0 {
        format!("{m:.1} MiB")
    } else {
        format!("{m:.2} MiB")
    }
}

/// The whole report as text.
pub fn replication_bench(r: &Report) -> String {
    let mut rows = Vec::new();
    for t in &r.rtts {
        let rtt = format!("{:.0} ms (measured {:.2})", t.rtt_ms, t.measured_rtt_ms);
        let s = &t.sync;
        rows.push(vec![
            "sync 4 KiB FUA write p50".into(),
            rtt.clone(),
            format!(
                "{:.2} ms (p99 {:.2}, {} writes)",
                s.p50_ms, s.p99_ms, s.writes
            ),
            format!(
                "local fsync p50 {:.2} + RTT {:.2} = {:.2} ms",
                r.local.fua_4k_p50_ms, t.measured_rtt_ms, s.reference_ms
            ),
            format!("{:.2}×", s.ratio),
            format!("≤ {}×", s.goal_max),
        ]);
        let a = &t.throughput;
        rows.push(vec![
            "async 1 MiB sequential writes".into(),
            rtt.clone(),
            format!(
                "{:.1} MiB/s ({} in {:.1} s{})",
                a.mib_s,
                mib(a.bytes),
                a.seconds,
                if a.journal_spilled {
                    ", journal spilled"
                } else {
                    ""
                }
            ),
            format!(
                "min(disk {:.1}, link {:.1}) = {:.1} MiB/s",
                r.local.seq_mib_s, r.link_mib_s, a.reference_mib_s
            ),
            format!("{:.2}×", a.ratio),
            format!("≥ {}×", a.goal_min),
        ]);
        for x in &t.resync {
            rows.push(vec![
                format!("resync, {} (journal {})", x.path, mib(x.journal_limit)),
                rtt.clone(),
                format!(
                    "{} sent (wire {}) in {:.1} s",
                    mib(x.link_bytes),
                    mib(x.wire_bytes),
                    x.seconds
                ),
                format!("{} changed", mib(x.changed_bytes)),
                format!("{:.3}× (wire {:.3}×)", x.ratio, x.wire_ratio),
                format!("≤ {}×", x.goal_max),
            ]);
        }
    }
    let u = &r.unreplicated;
    rows.push(vec![
        "unreplicated engine, 4 KiB FUA p50".into(),
        "-".into(),
        format!("{:.3} ms", u.fua_4k_p50_engine_ms),
        format!("FileDisk {:.3} ms", u.fua_4k_p50_raw_ms),
        format!("{:+.1} %", u.fua_overhead_pct),
        format!("< {} %", u.goal_max_pct),
    ]);
    rows.push(vec![
        "unreplicated engine, 1 MiB sequential".into(),
        "-".into(),
        format!("{:.1} MiB/s", u.seq_engine_mib_s),
        format!("FileDisk {:.1} MiB/s", u.seq_raw_mib_s),
        format!("{:+.1} % time", u.seq_overhead_pct),
        format!("< {} %", u.goal_max_pct),
    ]);
    let m = &r.memory;
    rows.push(vec![
        format!("memory, {} written, replica away", mib(m.written_bytes)),
        "-".into(),
        format!(
            "RSS +{} peak, +{} at the end",
            mib(m.rss_peak_growth_bytes),
            mib(m.rss_end_growth_bytes)
        ),
        format!(
            "journal limit {} (peak {}), dirty bits {} B",
            mib(m.journal_limit),
            mib(m.journal_peak_bytes),
            m.dirty_bits_bytes
        ),
        "-".into(),
        "bounded".into(),
    ]);
    let mut text = table(
        &[
            "figure",
            "RTT",
            "measured",
            "compared with",
            "ratio",
            "goal",
        ],
        rows,
    );
    let windows: Vec<String> = r
        .rtts
        .iter()
        .map(|t| {
            let a = &t.throughput;
            format!(
                "{:.0} ms → ≤ {:.1} MiB/s, limited by {}; measured {} requests of {:.2} MiB, \
                 {:.0} ms each (replica {:.0} ms), {:.0} ms between",
                t.rtt_ms,
                a.window_bound_mib_s,
                a.limited_by,
                a.requests,
                a.request_mib_avg,
                a.request_ms_avg,
                a.replica_ms_avg,
                a.gap_ms_avg
            )
        })
        .collect();
    text.push_str(&format!(
        "\nasync throughput: one request in flight per replica, at most {} per message, so at \
         most one message per RTT + its transfer time: {}",
        mib(r.max_message),
        windows.join("; ")
    ));
    text.push_str(&match m.spilled_at_bytes {
        Some(at) => format!(
            "\nmemory: journal spills to dirty-block tracking at {} written (journal limit {}); \
             then one bit per {} KiB chunk",
            mib(at),
            mib(m.journal_limit),
            r.chunk / 1024
        ),
        None => format!(
            "\nmemory: the journal did not spill within {} (journal limit {})",
            mib(m.written_bytes),
            mib(m.journal_limit)
        ),
    });
    text.push_str(&format!(
        "\nlink: {:.0} Mbit/s each way = {:.2} MiB/s; {} build{}",
        r.rate_bps as f64 / 1e6,
        r.link_mib_s,
        r.build,
        if r.build == "debug" {
            " — quote figures from a release build"
        } else {
            ""
        }
    ));
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::replication::{
        Local, Memory, Overhead, Resync, RttFigures, SyncLatency, Throughput,
    };

    fn resync(path: &str) -> Resync {
        Resync {
            path: path.into(),
            journal_limit: 64 << 20,
            changed_bytes: 16 << 20,
            link_bytes: 16 << 20,
            wire_bytes: 17 << 20,
            ratio: 1.0,
            wire_ratio: 1.06,
            goal_max: 1.05,
            seconds: 1.5,
        }
    }

    fn report(spilled_at: Option<u64>) -> Report {
        Report {
            build: "release",
            work_dir: "/x".into(),
            rate_bps: 200_000_000,
            link_mib_s: 23.84,
            max_message: 4 << 20,
            chunk: 65536,
            local: Local {
                fua_4k_p50_ms: 1.0,
                fua_4k_p99_ms: 2.0,
                seq_mib_s: 300.0,
            },
            rtts: vec![RttFigures {
                rtt_ms: 40.0,
                measured_rtt_ms: 40.5,
                sync: SyncLatency {
                    writes: 300,
                    p50_ms: 42.0,
                    p99_ms: 45.0,
                    reference_ms: 41.5,
                    ratio: 1.012,
                    goal_max: 1.1,
                },
                throughput: Throughput {
                    bytes: 64 << 20,
                    seconds: 3.0,
                    mib_s: 21.3,
                    reference_mib_s: 23.84,
                    ratio: 0.89,
                    goal_min: 0.9,
                    window_bound_mib_s: 19.25,
                    limited_by: "one request in flight, 4 MiB per RTT + transfer".into(),
                    journal_spilled: true,
                    requests: 16,
                    request_mib_avg: 4.0,
                    request_ms_avg: 210.0,
                    replica_ms_avg: 30.0,
                    gap_ms_avg: 2.0,
                },
                resync: vec![resync("journal replay"), resync("dirty chunks")],
            }],
            unreplicated: Overhead {
                fua_4k_p50_raw_ms: 1.0,
                fua_4k_p50_engine_ms: 1.01,
                fua_overhead_pct: 1.0,
                seq_raw_mib_s: 300.0,
                seq_engine_mib_s: 297.0,
                seq_overhead_pct: 1.0,
                goal_max_pct: 3.0,
            },
            memory: Memory {
                written_bytes: 512 << 20,
                journal_limit: 64 << 20,
                spilled_at_bytes: spilled_at,
                journal_peak_bytes: 64 << 20,
                dirty_bits_bytes: 1024,
                rss_before_bytes: 100 << 20,
                rss_peak_growth_bytes: 70 << 20,
                rss_end_growth_bytes: 3 << 20,
            },
        }
    }

    #[test]
    fn every_figure_has_a_row_and_the_notes_name_the_limits() {
        let text = replication_bench(&report(Some(64 << 20)));
        for row in [
            "sync 4 KiB FUA write p50",
            "async 1 MiB sequential writes",
            "resync, journal replay",
            "resync, dirty chunks",
            "unreplicated engine, 4 KiB FUA p50",
            "unreplicated engine, 1 MiB sequential",
            "memory, 512.0 MiB written, replica away",
            "1.01×",
            "0.89×",
            "19.2 MiB/s, limited by one request in flight",
            "16 requests of 4.00 MiB, 210 ms each (replica 30 ms), 2 ms between",
            "journal spills to dirty-block tracking at 64.0 MiB written",
            "release build",
        ] {
            assert!(text.contains(row), "{row:?} missing from\n{text}");
        }
        assert!(!text.contains("quote figures from a release build"));
        let text = replication_bench(&report(None));
        assert!(text.contains("did not spill within 512.0 MiB"), "{text}");
    }
}
