//! The verdict of each chaos invariant a drill asks for, as expectation lines with their
//! evidence (the first violations, or what held).
//!
//! Invariant: pure; an invariant not asked for gives no line, and one that could not be
//! judged (no direct answer at all, volumes unread) fails rather than passes.
//!
//! It does not compute the evidence: [`super`]'s functions do, the runner's measures collect it.

use super::{Outage, WriteAccount};
use crate::report::ExpectationResult;
use crate::scenario::Expect;

/// What the invariants are judged on (filled by the runner's measures).
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// Rounds of direct probes, and answers they got.
    pub direct_rounds: u64,
    pub direct_answers: usize,
    /// Rounds answered by more than one instance of the same site (not a split brain between
    /// sites, but two instances of one site at once; shown, not failed).
    pub same_site_doubles: usize,
    pub instances_split: Option<String>,
    pub epoch_regressions: Vec<String>,
    pub served_at_end: Vec<(String, Result<String, String>)>,
    pub outages: Vec<Outage>,
    /// Outages longer than this (seconds) need an event (the RTO bound).
    pub outage_bound: f64,
    /// `None` when the volumes were not read.
    pub writes: Option<WriteAccount>,
}

/// The verdict of each invariant `expect` asks for.
pub fn evaluate(expect: &Expect, o: &Observed) -> Vec<ExpectationResult> {
    let mut out = Vec::new();
    let result = |name: &str, expected: &str, pass: bool, measured: String, detail: String| {
        ExpectationResult {
            name: name.into(),
            expected: expected.into(),
            measured,
            pass,
            detail,
        }
    };
    if expect.instances_one_site {
        let pass = o.instances_split.is_none() && o.direct_answers > 0;
        out.push(result(
            "instances_one_site",
            "probing every instance address directly, never two sites answering at once",
            pass,
            format!(
                "{} answers in {} rounds, {} rounds with two instances of one site",
                o.direct_answers, o.direct_rounds, o.same_site_doubles
            ),
            match (&o.instances_split, o.direct_answers) {
                (Some(s), _) => s.clone(),
                (None, 0) => "no instance ever answered a direct probe".into(),
                (None, _) => String::new(),
            },
        ));
    }
    if expect.epochs_only_go_up {
        out.push(result(
            "epochs_only_go_up",
            "per probe stream, in the owner record and across streams in time",
            o.epoch_regressions.is_empty(),
            format!("{} regressions", o.epoch_regressions.len()),
            o.epoch_regressions.join("; "),
        ));
    }
    if expect.served_at_end {
        let failed: Vec<String> = o
            .served_at_end
            .iter()
            .filter_map(|(v, r)| r.as_ref().err().map(|e| format!("{v}: {e}")))
            .collect();
        let all: Vec<String> = o
            .served_at_end
            .iter()
            .map(|(v, r)| match r {
                Ok(s) => format!("{v}: {s}"),
                Err(e) => format!("{v}: {e}"),
            })
            .collect();
        out.push(result(
            "served_at_end",
            "every vantage's last probe served",
            failed.is_empty() && !o.served_at_end.is_empty(),
            format!(
                "{} of {} vantages served",
                o.served_at_end.len() - failed.len(),
                o.served_at_end.len()
            ),
            all.join("; "),
        ));
    }
    if expect.outages_explained {
        let long: Vec<&Outage> = o
            .outages
            .iter()
            .filter(|w| w.length() > o.outage_bound)
            .collect();
        let unexplained: Vec<String> = long
            .iter()
            .filter(|w| w.events.is_empty())
            .map(|w| {
                format!(
                    "{:.2}–{:.2} s ({:.2} s{}) with no event",
                    w.from,
                    w.to,
                    w.length(),
                    if w.open { ", never ended" } else { "" }
                )
            })
            .collect();
        let explained: Vec<String> = long
            .iter()
            .filter(|w| !w.events.is_empty())
            .map(|w| {
                format!(
                    "{:.2}–{:.2} s explained by {}",
                    w.from,
                    w.to,
                    w.events.join(" | ")
                )
            })
            .collect();
        out.push(result(
            "outages_explained",
            &format!(
                "every outage over {:.2} s has an event of the fabric",
                o.outage_bound
            ),
            unexplained.is_empty(),
            format!(
                "{} over the bound (longest {:.2} s), {} unexplained",
                long.len(),
                o.outages.iter().map(Outage::length).fold(0.0, f64::max),
                unexplained.len()
            ),
            unexplained
                .into_iter()
                .chain(explained)
                .collect::<Vec<_>>()
                .join("; "),
        ));
    }
    if expect.writes_where_acked {
        out.push(match &o.writes {
            Some(w) => {
                let by_site: Vec<String> = w
                    .acked_by_site
                    .iter()
                    .map(|(s, n)| format!("{n} acknowledged by {s}"))
                    .collect();
                let missing: Vec<String> = w
                    .misplaced
                    .iter()
                    .take(10)
                    .map(|(seq, site)| format!("write {seq} (acknowledged by {site})"))
                    .collect();
                result(
                    "writes_where_acked",
                    "every acknowledged write is on the volume of the site that acknowledged it",
                    w.misplaced.is_empty(),
                    format!("{} missing", w.misplaced.len()),
                    if missing.is_empty() {
                        by_site.join(", ")
                    } else {
                        format!("missing: {}", missing.join(", "))
                    },
                )
            }
            None => result(
                "writes_where_acked",
                "every acknowledged write is on the volume of the site that acknowledged it",
                false,
                "unknown".into(),
                "the volumes could not be read".into(),
            ),
        });
    }
    out
}
