//! The drill timeline as one self-contained SVG picture: time runs left to right; below the
//! marker labels come the owner lane, one probe lane per vantage and one DNS lane per vantage;
//! the measures and the verdicts are printed underneath.
//!
//! Invariant: the output is well-formed XML for any report — every piece of text from the report
//! goes through [`escape`], and times that are not finite are left out rather than drawn, so a
//! broken report still renders instead of panicking.
//!
//! It does not scale the picture to the number of probes (a 10-minute drill at 10 probes a second
//! gives a few thousand marks per lane) and loads no fonts, scripts or styles from outside.

use std::fmt::Write as _;

use crate::report::{MarkerKind, Report, answer_text, number, seconds, with_unit};

const WIDTH: f64 = 1280.0;
/// Left edge of the plot; lane names go to its left.
const PLOT_X0: f64 = 150.0;
/// Right edge of the plot; room for marker labels that lean right.
const PLOT_X1: f64 = WIDTH - 110.0;
const OWNER_LANE_H: f64 = 26.0;
const PROBE_LANE_H: f64 = 30.0;
const DNS_LANE_H: f64 = 22.0;
const LANE_GAP: f64 = 6.0;
/// Height reserved above the lanes for the rotated marker labels.
const MARKER_LABEL_H: f64 = 100.0;
/// Average glyph width at font-size 11, used to decide what fits.
const CHAR_W: f64 = 6.2;

const FAIL_RED: &str = "#d62728";
const HEAL_GREEN: &str = "#2ca02c";
const OPERATION_BLUE: &str = "#1f77b4";
const UNKNOWN_GREY: &str = "#9e9e9e";
/// Site colours; red is kept for failures.
const PALETTE: [&str; 10] = [
    "#1f77b4", "#ff7f0e", "#17becf", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#2ca02c",
    "#393b79", "#7f7f7f",
];

/// Renders the report's timeline as an SVG document.
pub fn timeline(report: &Report) -> String {
    let scale = Scale::new(report);
    let vantages = report.vantages();
    let colors = SiteColors::new(&report.sites);
    let mut svg = String::new();
    let mut body = String::new();

    // Title and legend.
    let (verdict, verdict_color) = if report.passed {
        ("PASS", HEAL_GREEN)
    } else {
        ("FAIL", FAIL_RED)
    };
    let _ = write!(
        body,
        r#"<text x="16" y="28" font-size="18" font-weight="bold">drill {} — <tspan fill="{verdict_color}">{verdict}</tspan></text>"#,
        escape(&report.scenario)
    );
    let subtitle = format!(
        "seed {} · {} s · service {}{}{}",
        report.seed,
        number(report.duration_s),
        report.service,
        if report.description.trim().is_empty() {
            ""
        } else {
            " · "
        },
        report.description.trim()
    );
    let _ = write!(
        body,
        r##"<text x="16" y="46" fill="#555">{}</text>"##,
        escape(&truncate(&subtitle, 190))
    );
    let legend_bottom = legend(&mut body, report, &colors, 62.0);

    let lanes_top = legend_bottom + MARKER_LABEL_H;
    let mut y = lanes_top;

    // Owner lane.
    lane_frame(&mut body, "owner", "owner-lane", "", y, OWNER_LANE_H);
    owner_bands(&mut body, report, &scale, &colors, y);
    y += OWNER_LANE_H + LANE_GAP;

    // One lane per copy of the service's volume: its state over time.
    for (site, runs) in report.replica_runs() {
        lane_frame(
            &mut body,
            &format!("copy {site}"),
            "copy-lane",
            &site,
            y,
            DNS_LANE_H,
        );
        copy_bands(&mut body, &runs, &scale, y);
        y += DNS_LANE_H + LANE_GAP;
    }

    // One probe lane per vantage.
    for v in &vantages {
        lane_frame(&mut body, v, "probe-lane", v, y, PROBE_LANE_H);
        probe_marks(&mut body, report, v, &scale, &colors, y);
        y += PROBE_LANE_H + LANE_GAP;
    }

    // One DNS lane per vantage.
    for v in &vantages {
        lane_frame(&mut body, &format!("DNS {v}"), "dns-lane", v, y, DNS_LANE_H);
        dns_labels(&mut body, report, v, &scale, y);
        y += DNS_LANE_H + LANE_GAP;
    }
    let lanes_bottom = y - LANE_GAP;
    // Say so rather than leave the picture silently empty: in the first probe lane, or in the
    // owner lane when there are no lanes and no owner bands to cover.
    let note_y = if vantages.is_empty() {
        report
            .owners
            .is_empty()
            .then_some(lanes_top + OWNER_LANE_H / 2.0 + 4.0)
    } else {
        Some(lanes_top + OWNER_LANE_H + LANE_GAP + PROBE_LANE_H / 2.0 + 4.0)
    };
    if let (true, Some(note_y)) = (report.probes.is_empty(), note_y) {
        let _ = write!(
            body,
            r##"<text x="{}" y="{note_y}" fill="#888">no probes recorded</text>"##,
            PLOT_X0 + 8.0,
        );
    }

    axis(&mut body, &scale, lanes_top, lanes_bottom);
    markers(&mut body, report, &scale, lanes_top, lanes_bottom);

    // Measures and verdicts underneath.
    let mut y = lanes_bottom + 48.0;
    for m in &report.measures {
        let value = m
            .value
            .map_or_else(|| "not measured".into(), |v| with_unit(v, &m.unit));
        let bound = m
            .bound
            .map(|b| format!(" (bound {})", with_unit(b, &m.unit)))
            .unwrap_or_default();
        let how = if m.how.is_empty() {
            String::new()
        } else {
            format!(" — {}", m.how)
        };
        let _ = write!(
            body,
            r#"<text x="16" y="{y}" class="measure"><tspan font-weight="bold">{}: {}</tspan>{}</text>"#,
            escape(&m.name),
            escape(&value),
            escape(&truncate(&format!("{bound}{how}"), 170)),
        );
        y += 16.0;
    }
    for e in &report.expectations {
        let (mark, color) = if e.pass {
            ("PASS", HEAL_GREEN)
        } else {
            ("FAIL", FAIL_RED)
        };
        let detail = if e.detail.is_empty() {
            String::new()
        } else {
            format!(" — {}", e.detail)
        };
        let _ = write!(
            body,
            r#"<text x="16" y="{y}" class="expectation"><tspan fill="{color}" font-weight="bold">{mark}</tspan> {}</text>"#,
            escape(&truncate(
                &format!(
                    "{}: expected {}, measured {}{detail}",
                    e.name, e.expected, e.measured
                ),
                180
            )),
        );
        y += 16.0;
    }
    let height = y + 8.0;

    let _ = write!(
        svg,
        r#"<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="11">
<title>drill {} — {verdict}</title>
<rect x="0" y="0" width="{WIDTH}" height="{height}" fill="white"/>
"#,
        escape(&report.scenario)
    );
    svg.push_str(&body);
    svg.push_str("\n</svg>\n");
    svg
}

/// Maps drill time to x; the span covers the drill and everything recorded in it.
struct Scale {
    span: f64,
}

impl Scale {
    fn new(report: &Report) -> Scale {
        let times = report
            .probes
            .iter()
            .map(|p| p.t)
            .chain(report.markers.iter().map(|m| m.t))
            .chain(report.owners.iter().map(|o| o.t))
            .chain(report.dns.iter().map(|d| d.t))
            .chain(std::iter::once(report.duration_s));
        let span = times.filter(|t| t.is_finite()).fold(0.0_f64, f64::max);
        Scale {
            span: if span > 0.0 { span } else { 1.0 },
        }
    }

    /// x of time `t`, clamped into the plot; `None` for times that are not finite.
    fn x(&self, t: f64) -> Option<f64> {
        t.is_finite().then(|| {
            let x = PLOT_X0 + (t / self.span) * (PLOT_X1 - PLOT_X0);
            round1(x.clamp(PLOT_X0, PLOT_X1))
        })
    }

    /// A 1-2-5 tick step giving about ten ticks.
    fn step(&self) -> f64 {
        let raw = self.span / 10.0;
        let magnitude = 10f64.powf(raw.log10().floor());
        let norm = raw / magnitude;
        let nice = if norm <= 1.0 {
            1.0
        } else if norm <= 2.0 {
            2.0
        } else if norm <= 5.0 {
            5.0
        } else {
            10.0
        };
        nice * magnitude
    }
}

/// Colours per site: the report's sites by position, any other name by a stable hash.
struct SiteColors<'a> {
    sites: &'a [String],
}

impl SiteColors<'_> {
    fn new(sites: &[String]) -> SiteColors<'_> {
        SiteColors { sites }
    }

    fn of(&self, site: Option<&str>) -> &'static str {
        let Some(site) = site else {
            return UNKNOWN_GREY;
        };
        let index = match self.sites.iter().position(|s| s == site) {
            Some(i) => i,
            // FNV-1a: stable across runs and Rust versions, unlike the std hasher.
            None => site.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
            }) as usize,
        };
        PALETTE[index % PALETTE.len()]
    }
}

fn legend(body: &mut String, report: &Report, colors: &SiteColors<'_>, top: f64) -> f64 {
    let mut items: Vec<(String, String)> = report
        .sites
        .iter()
        .map(|s| {
            (
                format!(
                    r#"<rect x="0" y="-8" width="10" height="10" fill="{}"/>"#,
                    colors.of(Some(s))
                ),
                format!("served by {s}"),
            )
        })
        .collect();
    items.push((cross(5.0, -3.0, FAIL_RED), "failed probe".into()));
    for (kind, color) in [
        (MarkerKind::Fault, FAIL_RED),
        (MarkerKind::Heal, HEAL_GREEN),
        (MarkerKind::Operation, OPERATION_BLUE),
    ] {
        items.push((
            format!(
                r#"<line x1="5" y1="-10" x2="5" y2="3" stroke="{color}" stroke-width="1.5" stroke-dasharray="3,2"/>"#
            ),
            kind.as_str().into(),
        ));
    }
    let (mut x, mut y) = (16.0, top + 10.0);
    for (swatch, text) in items {
        let w = 18.0 + text.chars().count() as f64 * CHAR_W + 16.0;
        if x + w > WIDTH - 16.0 && x > 16.0 {
            x = 16.0;
            y += 16.0;
        }
        let _ = write!(
            body,
            r#"<g class="legend" transform="translate({x} {y})">{swatch}<text x="16" y="1">{}</text></g>"#,
            escape(&text)
        );
        x += w;
    }
    y + 6.0
}

fn lane_frame(body: &mut String, name: &str, class: &str, vantage: &str, y: f64, h: f64) {
    let _ = write!(
        body,
        "\n<g class=\"lane {class}\" data-vantage=\"{}\"><rect x=\"{PLOT_X0}\" y=\"{y}\" width=\"{}\" height=\"{h}\" fill=\"#f7f7f7\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text></g>",
        escape(vantage),
        PLOT_X1 - PLOT_X0,
        PLOT_X0 - 8.0,
        y + h / 2.0 + 4.0,
        escape(&truncate(name, 22)),
    );
}

fn owner_bands(body: &mut String, report: &Report, scale: &Scale, colors: &SiteColors<'_>, y: f64) {
    let mut owners: Vec<_> = report.owners.iter().filter(|o| o.t.is_finite()).collect();
    owners.sort_by(|a, b| a.t.total_cmp(&b.t));
    for (i, o) in owners.iter().enumerate() {
        let end = owners.get(i + 1).map_or(scale.span, |next| next.t);
        let (Some(x0), Some(x1)) = (scale.x(o.t), scale.x(end)) else {
            continue;
        };
        let w = round1((x1 - x0).max(1.0));
        let site = o.site.as_deref();
        let name = site.unwrap_or("none");
        let fill = if site.is_some() {
            colors.of(site)
        } else {
            "#e0e0e0"
        };
        let label = format!("{name} · epoch {}", o.epoch);
        let _ = write!(
            body,
            r#"<rect class="owner" x="{x0}" y="{}" width="{w}" height="{}" fill="{fill}" fill-opacity="0.55"><title>{} from {} s</title></rect>"#,
            y + 2.0,
            OWNER_LANE_H - 4.0,
            escape(&label),
            seconds(o.t),
        );
        let fits = fit_chars(w - 6.0);
        let text = if label.chars().count() <= fits {
            label
        } else {
            format!("e{}", o.epoch)
        };
        if text.chars().count() <= fits {
            let _ = write!(
                body,
                r#"<text x="{}" y="{}">{}</text>"#,
                x0 + 3.0,
                y + OWNER_LANE_H / 2.0 + 4.0,
                escape(&text)
            );
        }
    }
}

/// A copy's states as bands: primary blue, in sync green, lagging or resyncing orange,
/// outdated red, unknown grey.
fn copy_bands(body: &mut String, runs: &[crate::report::StateRun], scale: &Scale, y: f64) {
    for (from, to, state) in runs {
        let (Some(x0), Some(x1)) = (scale.x(*from), scale.x(to.unwrap_or(scale.span))) else {
            continue;
        };
        let w = round1((x1 - x0).max(1.0));
        let fill = match state.as_str() {
            "primary" => OPERATION_BLUE,
            "in-sync" => HEAL_GREEN,
            "lagging" | "resyncing" => "#ff7f0e",
            "outdated" => FAIL_RED,
            _ => UNKNOWN_GREY,
        };
        let _ = write!(
            body,
            r#"<rect class="copy" x="{x0}" y="{}" width="{w}" height="{}" fill="{fill}" fill-opacity="0.5"><title>{} from {} s</title></rect>"#,
            y + 2.0,
            DNS_LANE_H - 4.0,
            escape(state),
            seconds(*from),
        );
        if state.chars().count() <= fit_chars(w - 6.0) {
            let _ = write!(
                body,
                r#"<text x="{}" y="{}">{}</text>"#,
                x0 + 3.0,
                y + DNS_LANE_H / 2.0 + 4.0,
                escape(state)
            );
        }
    }
}

fn probe_marks(
    body: &mut String,
    report: &Report,
    vantage: &str,
    scale: &Scale,
    colors: &SiteColors<'_>,
    y: f64,
) {
    let mid = y + PROBE_LANE_H / 2.0;
    // Failure windows behind the marks, so an outage reads as one block.
    for (a, b) in report.failure_windows(vantage) {
        if let (Some(x0), Some(x1)) = (scale.x(a), scale.x(b)) {
            let _ = write!(
                body,
                r#"<rect class="outage" x="{x0}" y="{}" width="{}" height="{}" fill="{FAIL_RED}" fill-opacity="0.12"><title>{} failing {}–{} s</title></rect>"#,
                y + 1.0,
                round1((x1 - x0).max(1.0)),
                PROBE_LANE_H - 2.0,
                escape(vantage),
                seconds(a),
                seconds(b),
            );
        }
    }
    for p in report.probes_from(vantage) {
        let Some(x) = scale.x(p.t) else { continue };
        if p.ok {
            let _ = write!(
                body,
                r#"<rect class="probe ok" x="{}" y="{}" width="3" height="10" fill="{}"/>"#,
                round1(x - 1.5),
                mid - 5.0,
                colors.of(p.served_by.as_deref()),
            );
        } else {
            let why = p.error.as_deref().unwrap_or("failed");
            let _ = write!(
                body,
                r#"<g class="probe failed">{}<title>{} s: {}</title></g>"#,
                cross(x, mid, FAIL_RED),
                seconds(p.t),
                escape(&truncate(why, 200)),
            );
        }
    }
}

fn dns_labels(body: &mut String, report: &Report, vantage: &str, scale: &Scale, y: f64) {
    let mut changes: Vec<_> = report
        .dns
        .iter()
        .filter(|d| d.vantage == vantage && d.t.is_finite())
        .collect();
    changes.sort_by(|a, b| a.t.total_cmp(&b.t));
    for (i, d) in changes.iter().enumerate() {
        let Some(x) = scale.x(d.t) else { continue };
        let next_x = changes
            .get(i + 1)
            .and_then(|n| scale.x(n.t))
            .unwrap_or(PLOT_X1 + 100.0);
        let answer = answer_text(&d.answer);
        let failed = d.answer.is_empty()
            || d.answer
                .iter()
                .any(|a| a.chars().all(|c| c.is_ascii_uppercase() || c == '_'));
        let color = if failed { FAIL_RED } else { "#333" };
        let _ = write!(
            body,
            r#"<g class="dns"><line x1="{x}" y1="{}" x2="{x}" y2="{}" stroke="{color}"/><title>{} s: {}</title>"#,
            y + 2.0,
            y + DNS_LANE_H - 2.0,
            seconds(d.t),
            escape(&truncate(&answer, 300)),
        );
        let room = fit_chars(next_x - x - 6.0);
        if room >= 3 {
            let _ = write!(
                body,
                r#"<text x="{}" y="{}" font-size="10" fill="{color}">{}</text>"#,
                round1(x + 3.0),
                y + DNS_LANE_H / 2.0 + 4.0,
                escape(&truncate(&answer, room)),
            );
        }
        body.push_str("</g>");
    }
}

fn axis(body: &mut String, scale: &Scale, top: f64, bottom: f64) {
    let step = scale.step();
    let decimals = if step >= 1.0 {
        0
    } else {
        (-step.log10()).ceil() as usize
    };
    let axis_y = bottom + 4.0;
    let _ = write!(
        body,
        "\n<g class=\"axis\"><line x1=\"{PLOT_X0}\" y1=\"{axis_y}\" x2=\"{PLOT_X1}\" y2=\"{axis_y}\" stroke=\"#333\"/>"
    );
    // Bounded: a 1-2-5 step over the span gives at most ~11 ticks; the cap guards rounding.
    for i in 0..=50u32 {
        let t = f64::from(i) * step;
        if t > scale.span * (1.0 + 1e-9) {
            break;
        }
        let Some(x) = scale.x(t) else { break };
        let label = if t.abs() >= 1e7 {
            format!("{t:.1e}")
        } else {
            format!("{t:.decimals$}")
        };
        let _ = write!(
            body,
            "<line x1=\"{x}\" y1=\"{top}\" x2=\"{x}\" y2=\"{bottom}\" stroke=\"#000\" stroke-opacity=\"0.07\"/><line x1=\"{x}\" y1=\"{axis_y}\" x2=\"{x}\" y2=\"{}\" stroke=\"#333\"/><text x=\"{x}\" y=\"{}\" text-anchor=\"middle\">{label}</text>",
            axis_y + 4.0,
            axis_y + 16.0,
        );
    }
    let _ = write!(
        body,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" fill=\"#555\">seconds since the drill started</text></g>",
        (PLOT_X0 + PLOT_X1) / 2.0,
        axis_y + 30.0,
    );
}

fn markers(body: &mut String, report: &Report, scale: &Scale, top: f64, bottom: f64) {
    // Rotated labels of markers close in time would print over each other: each label starts at
    // least this far right of the previous one.
    const LABEL_GAP: f64 = 18.0;
    let mut last_label_x = f64::NEG_INFINITY;
    let mut markers: Vec<_> = report.markers.iter().collect();
    markers.sort_by(|a, b| a.t.total_cmp(&b.t));
    for m in markers {
        let Some(x) = scale.x(m.t) else { continue };
        let label_x = x.max(last_label_x + LABEL_GAP);
        last_label_x = label_x;
        let (color, width, dash) = match m.kind {
            MarkerKind::Fault => (FAIL_RED, 1.5, "5,3"),
            MarkerKind::Heal => (HEAL_GREEN, 1.5, "5,3"),
            MarkerKind::Operation => (OPERATION_BLUE, 1.5, "5,3"),
            MarkerKind::Wait | MarkerKind::Note => ("#888", 1.0, "2,3"),
        };
        let label_y = top - 6.0;
        let _ = write!(
            body,
            "\n<g class=\"marker {}\"><title>{} s {}: {}</title><line x1=\"{x}\" y1=\"{}\" x2=\"{x}\" y2=\"{bottom}\" stroke=\"{color}\" stroke-width=\"{width}\" stroke-dasharray=\"{dash}\"/><text x=\"{}\" y=\"{label_y}\" fill=\"{color}\" transform=\"rotate(-40 {label_x} {label_y})\">{}</text></g>",
            m.kind,
            seconds(m.t),
            m.kind,
            escape(&m.label),
            top - 4.0,
            label_x + 2.0,
            escape(&truncate(&m.label, 24)),
        );
    }
}

fn cross(x: f64, y: f64, color: &str) -> String {
    let (x0, x1, y0, y1) = (round1(x - 3.5), round1(x + 3.5), y - 3.5, y + 3.5);
    format!(
        r#"<path d="M{x0} {y0}L{x1} {y1}M{x0} {y1}L{x1} {y0}" stroke="{color}" stroke-width="1.6"/>"#
    )
}

/// How many characters fit in `px`.
fn fit_chars(px: f64) -> usize {
    if px.is_finite() && px > 0.0 {
        (px / CHAR_W) as usize
    } else {
        0
    }
}

/// At most `max` characters, with an ellipsis when cut.
fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

/// Text safe inside an XML element or a double- or single-quoted attribute: markup characters
/// become entities and characters XML 1.0 forbids (most control characters) become U+FFFD.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_turns_markup_into_entities_and_drops_forbidden_characters() {
        assert_eq!(escape(r#"a<b>&"c'"#), "a&lt;b&gt;&amp;&quot;c&apos;");
        assert_eq!(escape("x\u{1}y"), "x\u{FFFD}y");
    }

    #[test]
    fn truncate_counts_characters_not_bytes() {
        assert_eq!(truncate("ééééé", 3), "éé…");
        assert_eq!(truncate("abc", 3), "abc");
    }

    #[test]
    fn tick_steps_are_1_2_5_and_about_ten_per_span() {
        for (span, step) in [
            (10.0, 1.0),
            (60.0, 10.0),
            (600.0, 100.0),
            (0.5, 0.05),
            (45.0, 5.0),
        ] {
            let s = Scale { span }.step();
            assert!(
                (s - step).abs() < 1e-9,
                "span {span}: step {s}, expected {step}"
            );
        }
    }
}
