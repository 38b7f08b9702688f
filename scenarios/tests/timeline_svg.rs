//! The SVG timeline is well-formed XML for any report and shows what the drill did.

mod common;

use scenarios::report::{Marker, MarkerKind, OwnerChange, ProbeSample};
use scenarios::svg::timeline;

fn parse(svg: &str) -> roxmltree::Document<'_> {
    roxmltree::Document::parse(svg).unwrap_or_else(|e| panic!("not well-formed: {e}\n{svg}"))
}

fn lanes<'a>(doc: &'a roxmltree::Document<'a>, class: &str) -> Vec<&'a str> {
    doc.descendants()
        .filter(|n| {
            n.has_tag_name("g")
                && n.attribute("class")
                    .is_some_and(|c| c.split(' ').any(|w| w == class))
        })
        .filter_map(|n| n.attribute("data-vantage"))
        .collect()
}

#[test]
fn timeline_of_a_failover_is_well_formed_with_one_probe_and_dns_lane_per_site() {
    let report = common::failover_drill();
    let svg = timeline(&report);
    let doc = parse(&svg);
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    assert_eq!(lanes(&doc, "probe-lane"), common::SITES);
    assert_eq!(lanes(&doc, "dns-lane"), common::SITES);
    assert_eq!(lanes(&doc, "owner-lane").len(), 1);
    let width: f64 = doc
        .root_element()
        .attribute("width")
        .and_then(|w| w.parse().ok())
        .expect("numeric width");
    assert!((1000.0..=1400.0).contains(&width), "{width}");
}

#[test]
fn timeline_escapes_marker_labels_and_keeps_their_text() {
    let report = common::failover_drill();
    let svg = timeline(&report);
    assert!(
        svg.contains("kill &lt;east&gt; &amp; &quot;friends&quot;"),
        "label not escaped"
    );
    let doc = parse(&svg);
    // The full label survives in the marker's tooltip once parsed back.
    assert!(
        doc.descendants()
            .any(|n| n.text().is_some_and(|t| t.contains(common::NASTY_LABEL))),
        "label lost"
    );
}

#[test]
fn timeline_shows_title_verdict_owner_epochs_failures_and_measures() {
    let report = common::failover_drill();
    let svg = timeline(&report);
    let doc = parse(&svg);
    let text: String = doc
        .descendants()
        .filter_map(|n| n.text())
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        text.contains("site-loss") && text.contains("FAIL"),
        "{text}"
    );
    assert!(text.contains("west · epoch 2"), "{text}");
    assert!(text.contains("rto: 6 s"), "{text}");
    assert!(text.contains("SERVFAIL"), "{text}");
    let failed = doc
        .descendants()
        .filter(|n| n.attribute("class") == Some("probe failed"))
        .count();
    assert_eq!(failed, 3 * 12);
    let ok = doc
        .descendants()
        .filter(|n| n.attribute("class") == Some("probe ok"))
        .count();
    assert_eq!(ok, 3 * 68);
}

#[test]
fn timeline_of_an_empty_report_renders() {
    let svg = timeline(&common::empty_drill());
    let doc = parse(&svg);
    assert!(lanes(&doc, "probe-lane").is_empty());
    assert_eq!(lanes(&doc, "owner-lane").len(), 1);
}

#[test]
fn timeline_survives_huge_negative_and_non_finite_times() {
    let mut report = common::failover_drill();
    report.duration_s = 1e15;
    report.markers.push(Marker {
        t: 9e14,
        kind: MarkerKind::Note,
        label: "much later".into(),
    });
    report.markers.push(Marker {
        t: f64::NAN,
        kind: MarkerKind::Fault,
        label: "never".into(),
    });
    report.owners.push(OwnerChange {
        t: -5.0,
        site: Some("elsewhere".into()),
        epoch: 9,
    });
    report.probes.push(ProbeSample {
        t: f64::INFINITY,
        vantage: "mars\u{1}<".into(),
        ok: false,
        served_by: None,
        host: None,
        epoch: None,
        write_seq: None,
        latency_ms: None,
        error: Some("\u{0}bad".into()),
    });
    let svg = timeline(&report);
    let doc = parse(&svg);
    // The unknown vantage gets a lane of its own after the sites.
    assert_eq!(lanes(&doc, "probe-lane").len(), 4);
    let ticks = doc
        .descendants()
        .filter(|n| n.attribute("text-anchor") == Some("middle") && n.has_tag_name("text"))
        .count();
    assert!((5..=15).contains(&ticks), "{ticks} tick labels");
}

#[test]
fn timeline_for_a_ten_minute_drill_has_about_ten_ticks() {
    let mut report = common::failover_drill();
    report.duration_s = 600.0;
    let doc_text = timeline(&report);
    let doc = parse(&doc_text);
    let labels: Vec<&str> = doc
        .descendants()
        .filter(|n| n.has_tag_name("text") && n.attribute("text-anchor") == Some("middle"))
        .filter_map(|n| n.text())
        .collect();
    assert!(
        labels.contains(&"0") && labels.contains(&"600"),
        "{labels:?}"
    );
}
