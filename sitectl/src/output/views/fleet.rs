//! `sitectl bench fleet`'s table: one row per lab (small, then big), per agent figures, and the
//! ratios between them.

use crate::bench::fleet::FleetReport;
use crate::output::table;

/// The whole report as text.
pub fn fleet_bench(r: &FleetReport) -> String {
    let rows: Vec<Vec<String>> = r
        .rows
        .iter()
        .map(|row| {
            let by_channel = row
                .requests_per_sec
                .iter()
                .map(|(c, n)| format!("{c} {n:.0}"))
                .collect::<Vec<_>>()
                .join(", ");
            vec![
                format!("{} x {}", row.sites, row.hosts_per_site),
                row.agents.to_string(),
                format!("{:.1}", row.requests_per_sec_total),
                by_channel,
                format!("{:.1}", row.requests_per_sec_per_agent),
                format!("{:.1}", row.swim_per_sec_per_agent),
                format!("{:.1}", row.datagrams_per_sec_per_agent),
                format!("{:.1}", row.read_rounds_per_sec),
                format!("{:.1}", row.cpu_percent),
                format!("{:.2}", row.cpu_percent_per_agent),
                format!("{:.1}", row.cpu_percent_max),
            ]
        })
        .collect();
    let mut out = table(
        &[
            "sites x hosts",
            "agents",
            "WAN requests/s (all)",
            "by channel",
            "per agent",
            "SWIM msgs/s per agent",
            "QUIC datagrams/s per agent",
            "read rounds/s (leader)",
            "CPU % (all)",
            "CPU % per agent",
            "busiest agent CPU %",
        ],
        rows,
    );
    for row in &r.rows {
        let kinds = row
            .packets_per_sec_per_agent
            .iter()
            .map(|(k, n)| format!("{k} {n:.1}"))
            .collect::<Vec<_>>()
            .join(", ");
        out.push_str(&format!(
            "\n{} agents, per agent per second: {kinds}",
            row.agents
        ));
    }
    out.push_str(&format!(
        "\n\nper agent, big lab / small lab: CPU {:.2}x, WAN requests {:.2}x (flat is 1x; quadratic grows with the fleet)\ngoal: idle CPU per agent <= 0.5 % of a core in the 60-agent lab\n",
        r.cpu_ratio, r.requests_ratio
    ));
    out
}
