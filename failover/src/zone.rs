//! The fabric zone's answer logic: given the zone's configuration, the agent's current view of
//! the zone and one question, what an authoritative server says.
//!
//! Owns: [`ZoneConfig`] (documented config data), [`Zone`] (the validated form of it),
//! [`ZoneSnapshot`] (what the agent publishes: SOA serial and each name's current addresses) and
//! [`answer`], a pure function from those plus a question to an [`Answer`].
//!
//! Invariant: the answer depends only on its arguments. An in-zone question is answered
//! authoritatively (AA) from the snapshot when the server may vouch for it, and with SERVFAIL
//! (never stale data) when it may not; a question outside the zone is always REFUSED. No record
//! carries a TTL past the time the server may still vouch for it (the lease time left, rounded
//! down to whole seconds), so no resolver caches an answer past the holder's deadline.
//!
//! It does not do I/O, parse or encode packets, hold state between questions, support wildcards,
//! CNAMEs, delegations or zone transfers, or sign anything (no DNSSEC); `dns` moves the bytes.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use hickory_proto::ProtoError;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, AAAA, NS, SOA};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// TTL of answers when the config does not say, in seconds. Short, because the point of this
/// zone is to move clients to another site quickly after a failover.
pub const DEFAULT_TTL: u32 = 30;

// SOA timers only matter to secondaries, and this zone has none: every site answers from its own
// replicated copy. They are conventional values so that zone checkers do not complain.
const SOA_REFRESH: i32 = 3600;
const SOA_RETRY: i32 = 600;
const SOA_EXPIRE: i32 = 86_400;

/// The agent's current view of the zone, handed to the server whenever it changes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ZoneSnapshot {
    /// SOA serial; the agent bumps it whenever the zone content changes.
    pub serial: u32,
    /// Owner names relative to the origin ("web", "api.v2"), lowercase, without a trailing dot,
    /// with the service's current addresses (IPv4 and/or IPv6). A name present with an empty list
    /// exists but has no address right now (answered NOERROR/NODATA). The apex is not a key here:
    /// it answers SOA and NS only.
    pub names: BTreeMap<String, Vec<IpAddr>>,
    /// The revision of the state the agent built it from, handed back to the vouch callback
    /// with the snapshot being answered from (so the two never come from different zones).
    pub revision: u64,
    /// The agent's digest of `names`, handed back the same way.
    pub digest: u64,
}

impl ZoneSnapshot {
    /// An empty zone at `serial`.
    pub fn new(serial: u32) -> Self {
        Self {
            serial,
            ..Self::default()
        }
    }

    /// Adds (or replaces) `name`, normalised to the key form [`ZoneSnapshot::names`] expects:
    /// lowercase, no trailing dot.
    pub fn with_name(mut self, name: &str, addrs: impl IntoIterator<Item = IpAddr>) -> Self {
        let key = name.trim_end_matches('.').to_ascii_lowercase();
        self.names.insert(key, addrs.into_iter().collect());
        self
    }
}

/// Configuration of the authoritative zone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZoneConfig {
    /// The zone origin, e.g. `"fabric.test."`. Always taken as absolute; the trailing dot is
    /// optional. Must not be the root.
    pub origin: String,
    /// TTL of every record served, in seconds; also the SOA minimum, so negative answers are
    /// cached for as long as positive ones.
    #[serde(default = "default_ttl")]
    pub ttl: u32,
    /// The zone's nameservers, served as the apex NS set; the first is the SOA MNAME. Names
    /// without a trailing dot are relative to the origin. Empty means `["ns"]`, i.e.
    /// `ns.<origin>`. An in-zone nameserver needs an address in the snapshot to be reachable.
    #[serde(default)]
    pub nameservers: Vec<String>,
    /// The SOA RNAME (responsible mailbox, in DNS form). Relative to the origin unless it ends
    /// with a dot. Default: `hostmaster.<origin>`.
    #[serde(default)]
    pub hostmaster: Option<String>,
}

fn default_ttl() -> u32 {
    DEFAULT_TTL
}

impl ZoneConfig {
    /// A config for `origin` with every other field at its default.
    pub fn new(origin: impl Into<String>) -> Self {
        Self {
            origin: origin.into(),
            ttl: DEFAULT_TTL,
            nameservers: Vec::new(),
            hostmaster: None,
        }
    }
}

/// Why a [`ZoneConfig`] cannot be served.
#[derive(Debug, Error)]
pub enum ZoneError {
    #[error("zone origin {origin:?} is not a valid domain name")]
    InvalidOrigin {
        origin: String,
        #[source]
        source: ProtoError,
    },
    #[error("zone origin {origin:?} is the root; the fabric zone must be below it")]
    RootOrigin { origin: String },
    #[error("{field} {name:?} is not a valid domain name")]
    InvalidName {
        /// Which config field held it (`nameservers`, `hostmaster`).
        field: &'static str,
        name: String,
        #[source]
        source: ProtoError,
    },
}

/// A validated [`ZoneConfig`]: names parsed, lowercased and absolute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Zone {
    origin: Name,
    origin_labels: usize,
    ttl: u32,
    nameservers: Vec<Name>,
    hostmaster: Name,
}

impl Zone {
    /// Validates `config`.
    pub fn new(config: &ZoneConfig) -> Result<Self, ZoneError> {
        let mut origin =
            Name::from_ascii(&config.origin).map_err(|source| ZoneError::InvalidOrigin {
                origin: config.origin.clone(),
                source,
            })?;
        origin.set_fqdn(true);
        let origin = origin.to_lowercase();
        let origin_labels = origin.iter().count();
        if origin_labels == 0 {
            return Err(ZoneError::RootOrigin {
                origin: config.origin.clone(),
            });
        }

        let nameservers = if config.nameservers.is_empty() {
            vec![absolute("nameservers", "ns", &origin)?]
        } else {
            config
                .nameservers
                .iter()
                .map(|ns| absolute("nameservers", ns, &origin))
                .collect::<Result<_, _>>()?
        };
        let hostmaster = absolute(
            "hostmaster",
            config.hostmaster.as_deref().unwrap_or("hostmaster"),
            &origin,
        )?;

        Ok(Self {
            origin,
            origin_labels,
            ttl: config.ttl,
            nameservers,
            hostmaster,
        })
    }

    /// The zone origin, lowercase and absolute.
    pub fn origin(&self) -> &Name {
        &self.origin
    }

    /// TTL of every record served, and the SOA minimum.
    pub fn ttl(&self) -> u32 {
        self.ttl
    }

    /// The zone's SOA record at `serial`.
    pub fn soa(&self, serial: u32) -> Record {
        let mname = self
            .nameservers
            .first()
            .cloned()
            .unwrap_or_else(|| self.origin.clone());
        let soa = SOA::new(
            mname,
            self.hostmaster.clone(),
            serial,
            SOA_REFRESH,
            SOA_RETRY,
            SOA_EXPIRE,
            self.ttl,
        );
        Record::from_rdata(self.origin.clone(), self.ttl, RData::SOA(soa))
    }

    fn ns_records(&self) -> Vec<Record> {
        self.nameservers
            .iter()
            .map(|ns| Record::from_rdata(self.origin.clone(), self.ttl, RData::NS(NS(ns.clone()))))
            .collect()
    }

    /// Where `qname` sits relative to this zone; `None` when it is outside.
    fn locate(&self, qname: &Name) -> Option<Owner> {
        if !self.origin.zone_of(qname) {
            return None;
        }
        let labels: Vec<&[u8]> = qname.iter().collect();
        let below = labels.len().checked_sub(self.origin_labels)?;
        if below == 0 {
            return Some(Owner::Apex);
        }
        let mut key = String::new();
        for label in &labels[..below] {
            // A label holding a dot (escaped on the wire) or non-UTF-8 bytes cannot be a snapshot
            // key, so such a name is simply absent from the zone.
            match std::str::from_utf8(label) {
                Ok(text) if !text.contains('.') && !text.is_empty() => {
                    if !key.is_empty() {
                        key.push('.');
                    }
                    key.push_str(&text.to_ascii_lowercase());
                }
                _ => return Some(Owner::Unrepresentable),
            }
        }
        Some(Owner::Name(key))
    }
}

/// A name inside the zone.
enum Owner {
    Apex,
    /// Relative, lowercase key into [`ZoneSnapshot::names`].
    Name(String),
    /// In the zone by its suffix, but not something a snapshot key can spell.
    Unrepresentable,
}

/// What to reply to one question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub rcode: ResponseCode,
    /// The AA bit: set on every answer from zone data (including NXDOMAIN and NODATA), clear on
    /// REFUSED and SERVFAIL.
    pub authoritative: bool,
    pub answers: Vec<Record>,
    /// The authority section: the SOA on negative answers, so resolvers can cache them.
    pub authority: Vec<Record>,
}

impl Answer {
    fn error(rcode: ResponseCode) -> Self {
        Self {
            rcode,
            authoritative: false,
            answers: Vec::new(),
            authority: Vec::new(),
        }
    }

    fn records(answers: Vec<Record>) -> Self {
        Self {
            rcode: ResponseCode::NoError,
            authoritative: true,
            answers,
            authority: Vec::new(),
        }
    }

    fn negative(rcode: ResponseCode, soa: Record) -> Self {
        Self {
            rcode,
            authoritative: true,
            answers: Vec::new(),
            authority: vec![soa],
        }
    }
}

/// Whether a server may vouch for its zone data, and for how much longer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vouched {
    /// It may not (its site is fenced or its lease ran out): SERVFAIL.
    No,
    /// It may, for this long (the lease time left); TTLs are capped to it.
    For(Duration),
}

impl Vouched {
    /// The TTL a record may carry: `ttl`, or the whole seconds left if fewer.
    fn cap(self, ttl: u32) -> u32 {
        match self {
            Vouched::No => 0,
            Vouched::For(left) => ttl.min(u32::try_from(left.as_secs()).unwrap_or(u32::MAX)),
        }
    }
}

/// Computes the reply to the question (`qname`, `qtype`, class IN).
///
/// `vouched` says whether this server may still vouch for its data; when it may not every
/// in-zone question gets SERVFAIL so that resolvers try another site's server, and when it may
/// every record's TTL is capped by the time it may still vouch.
pub fn answer(
    zone: &Zone,
    snapshot: &ZoneSnapshot,
    qname: &Name,
    qtype: RecordType,
    vouched: Vouched,
) -> Answer {
    let mut answer = answer_uncapped(zone, snapshot, qname, qtype, vouched);
    for record in answer.answers.iter_mut().chain(answer.authority.iter_mut()) {
        record.ttl = vouched.cap(record.ttl);
    }
    answer
}

fn answer_uncapped(
    zone: &Zone,
    snapshot: &ZoneSnapshot,
    qname: &Name,
    qtype: RecordType,
    vouched: Vouched,
) -> Answer {
    let Some(owner) = zone.locate(qname) else {
        return Answer::error(ResponseCode::Refused);
    };
    if matches!(qtype, RecordType::AXFR | RecordType::IXFR) {
        // The zone has no secondaries; every site serves its own replicated copy.
        return Answer::error(ResponseCode::Refused);
    }
    if vouched == Vouched::No {
        return Answer::error(ResponseCode::ServFail);
    }

    let soa = zone.soa(snapshot.serial);
    let records = match owner {
        Owner::Apex => match qtype {
            RecordType::SOA => vec![soa.clone()],
            RecordType::NS => zone.ns_records(),
            RecordType::ANY => {
                let mut all = vec![soa.clone()];
                all.extend(zone.ns_records());
                all
            }
            _ => Vec::new(),
        },
        Owner::Name(key) => match snapshot.names.get(&key) {
            Some(addrs) => address_records(qname, zone.ttl, addrs, qtype),
            None if is_empty_non_terminal(snapshot, &key) => Vec::new(),
            None => return Answer::negative(ResponseCode::NXDomain, soa),
        },
        Owner::Unrepresentable => return Answer::negative(ResponseCode::NXDomain, soa),
    };

    if records.is_empty() {
        Answer::negative(ResponseCode::NoError, soa)
    } else {
        Answer::records(records)
    }
}

/// The A/AAAA records of `addrs` that answer `qtype`, each address once, in the agent's order.
fn address_records(qname: &Name, ttl: u32, addrs: &[IpAddr], qtype: RecordType) -> Vec<Record> {
    let mut seen: Vec<IpAddr> = Vec::with_capacity(addrs.len());
    let mut records = Vec::new();
    for &addr in addrs {
        if seen.contains(&addr) {
            continue;
        }
        seen.push(addr);
        let rdata = match (addr, qtype) {
            (IpAddr::V4(v4), RecordType::A | RecordType::ANY) => RData::A(A(v4)),
            (IpAddr::V6(v6), RecordType::AAAA | RecordType::ANY) => RData::AAAA(AAAA(v6)),
            _ => continue,
        };
        records.push(Record::from_rdata(qname.clone(), ttl, rdata));
    }
    records
}

/// Whether `key` has no entry of its own but some name below it does ("v2" when "api.v2"
/// exists): such a name exists (RFC 8020), so it gets NODATA, not NXDOMAIN.
fn is_empty_non_terminal(snapshot: &ZoneSnapshot, key: &str) -> bool {
    snapshot.names.keys().any(|name| {
        name.len() > key.len()
            && name.ends_with(key)
            && name[..name.len() - key.len()].ends_with('.')
    })
}

/// `name` as an absolute lowercase name, relative to `origin` unless it ends with a dot.
fn absolute(field: &'static str, name: &str, origin: &Name) -> Result<Name, ZoneError> {
    let invalid = |source| ZoneError::InvalidName {
        field,
        name: name.to_owned(),
        source,
    };
    let parsed = Name::from_ascii(name).map_err(invalid)?;
    let parsed = if parsed.is_fqdn() {
        parsed
    } else {
        parsed.append_domain(origin).map_err(invalid)?
    };
    Ok(parsed.to_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    /// Vouched for far longer than any TTL here.
    const FOR_LONG: Vouched = Vouched::For(Duration::from_secs(3600));

    const V4: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10));
    const V4B: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 11));
    const V6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 10));

    fn zone() -> Zone {
        let mut config = ZoneConfig::new("fabric.test.");
        config.ttl = 15;
        Zone::new(&config).expect("valid config")
    }

    fn snapshot() -> ZoneSnapshot {
        ZoneSnapshot::new(7)
            .with_name("web", [V4, V4B])
            .with_name("dual", [V6, V4])
            .with_name("v6only", [V6])
            .with_name("drained", [])
            .with_name("api.v2", [V4])
    }

    fn name(s: &str) -> Name {
        Name::from_ascii(s).expect("test name")
    }

    fn ask(qname: &str, qtype: RecordType) -> Answer {
        answer(&zone(), &snapshot(), &name(qname), qtype, FOR_LONG)
    }

    fn soa_of(record: &Record) -> &SOA {
        match &record.data {
            RData::SOA(soa) => soa,
            other => panic!("expected SOA, got {other:?}"),
        }
    }

    fn assert_negative(a: &Answer, rcode: ResponseCode, serial: u32) {
        assert_eq!(a.rcode, rcode);
        assert!(a.authoritative);
        assert!(a.answers.is_empty(), "{:?}", a.answers);
        assert_eq!(a.authority.len(), 1);
        let soa = soa_of(&a.authority[0]);
        assert_eq!(soa.serial, serial);
        assert_eq!(soa.minimum, 15, "negative-caching TTL is the zone TTL");
        assert_eq!(a.authority[0].name, name("fabric.test."));
    }

    #[test]
    fn a_query_returns_every_ipv4_address_authoritatively_with_the_zone_ttl() {
        let a = ask("web.fabric.test.", RecordType::A);
        assert_eq!(a.rcode, ResponseCode::NoError);
        assert!(a.authoritative);
        assert!(a.authority.is_empty());
        let data: Vec<_> = a.answers.iter().map(|r| r.data.clone()).collect();
        assert_eq!(
            data,
            vec![
                RData::A(A(Ipv4Addr::new(192, 0, 2, 10))),
                RData::A(A(Ipv4Addr::new(192, 0, 2, 11)))
            ]
        );
        assert!(a.answers.iter().all(|r| r.ttl == 15));
        assert!(a.answers.iter().all(|r| r.name == name("web.fabric.test.")));
    }

    #[test]
    fn dual_stack_name_answers_a_and_aaaa_each_with_its_own_family() {
        let a = ask("dual.fabric.test.", RecordType::A);
        assert_eq!(a.answers.len(), 1);
        assert_eq!(a.answers[0].data, RData::A(A(Ipv4Addr::new(192, 0, 2, 10))));

        let aaaa = ask("dual.fabric.test.", RecordType::AAAA);
        assert_eq!(aaaa.rcode, ResponseCode::NoError);
        assert_eq!(aaaa.answers.len(), 1);
        assert_eq!(
            aaaa.answers[0].data,
            RData::AAAA(AAAA(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 10)))
        );
    }

    #[test]
    fn any_query_returns_both_families() {
        let a = ask("dual.fabric.test.", RecordType::ANY);
        assert_eq!(a.answers.len(), 2);
    }

    #[test]
    fn duplicate_addresses_are_answered_once() {
        let snapshot = ZoneSnapshot::new(1).with_name("web", [V4, V4, V4B]);
        let a = answer(
            &zone(),
            &snapshot,
            &name("web.fabric.test."),
            RecordType::A,
            FOR_LONG,
        );
        assert_eq!(a.answers.len(), 2);
    }

    #[test]
    fn name_without_address_of_the_asked_family_is_nodata_with_soa() {
        assert_negative(
            &ask("v6only.fabric.test.", RecordType::A),
            ResponseCode::NoError,
            7,
        );
        assert_negative(
            &ask("web.fabric.test.", RecordType::AAAA),
            ResponseCode::NoError,
            7,
        );
    }

    #[test]
    fn other_record_types_on_an_existing_name_are_nodata() {
        for qtype in [RecordType::MX, RecordType::TXT, RecordType::CNAME] {
            assert_negative(&ask("web.fabric.test.", qtype), ResponseCode::NoError, 7);
        }
    }

    #[test]
    fn name_present_with_no_addresses_is_nodata_not_nxdomain() {
        assert_negative(
            &ask("drained.fabric.test.", RecordType::A),
            ResponseCode::NoError,
            7,
        );
    }

    #[test]
    fn unknown_name_in_zone_is_nxdomain_with_soa() {
        assert_negative(
            &ask("nope.fabric.test.", RecordType::A),
            ResponseCode::NXDomain,
            7,
        );
        assert_negative(
            &ask("deep.web.fabric.test.", RecordType::A),
            ResponseCode::NXDomain,
            7,
        );
    }

    #[test]
    fn empty_non_terminal_is_nodata_and_multi_label_names_resolve() {
        assert_negative(
            &ask("v2.fabric.test.", RecordType::A),
            ResponseCode::NoError,
            7,
        );
        assert_eq!(ask("api.v2.fabric.test.", RecordType::A).answers.len(), 1);
        // "2" is a suffix of "api.v2" as a string, not as labels.
        assert_negative(
            &ask("2.fabric.test.", RecordType::A),
            ResponseCode::NXDomain,
            7,
        );
    }

    #[test]
    fn apex_soa_carries_the_snapshot_serial() {
        let a = ask("fabric.test.", RecordType::SOA);
        assert_eq!(a.rcode, ResponseCode::NoError);
        assert!(a.authoritative);
        assert_eq!(a.answers.len(), 1);
        let soa = soa_of(&a.answers[0]);
        assert_eq!(soa.serial, 7);
        assert_eq!(soa.mname, name("ns.fabric.test."));
        assert_eq!(soa.rname, name("hostmaster.fabric.test."));

        let later = ZoneSnapshot {
            serial: 8,
            ..snapshot()
        };
        let a = answer(
            &zone(),
            &later,
            &name("fabric.test."),
            RecordType::SOA,
            FOR_LONG,
        );
        assert_eq!(soa_of(&a.answers[0]).serial, 8);
    }

    #[test]
    fn apex_ns_lists_the_configured_nameservers() {
        let mut config = ZoneConfig::new("fabric.test");
        config.nameservers = vec!["ns1".into(), "ns2.elsewhere.test.".into()];
        let zone = Zone::new(&config).expect("valid config");
        let a = answer(
            &zone,
            &snapshot(),
            &name("fabric.test."),
            RecordType::NS,
            FOR_LONG,
        );
        assert_eq!(a.rcode, ResponseCode::NoError);
        assert!(a.authoritative);
        let targets: Vec<_> = a.answers.iter().map(|r| r.data.clone()).collect();
        assert_eq!(
            targets,
            vec![
                RData::NS(NS(name("ns1.fabric.test."))),
                RData::NS(NS(name("ns2.elsewhere.test.")))
            ]
        );
    }

    #[test]
    fn apex_address_query_is_nodata() {
        for qtype in [RecordType::A, RecordType::AAAA, RecordType::MX] {
            assert_negative(&ask("fabric.test.", qtype), ResponseCode::NoError, 7);
        }
    }

    #[test]
    fn names_outside_the_zone_are_refused_without_aa() {
        for qname in [
            "example.com.",
            "test.",
            ".",
            "notfabric.test.",
            "fabric.test.evil.",
        ] {
            let a = ask(qname, RecordType::A);
            assert_eq!(a.rcode, ResponseCode::Refused, "{qname}");
            assert!(!a.authoritative);
            assert!(a.answers.is_empty() && a.authority.is_empty());
        }
    }

    #[test]
    fn ttls_are_capped_by_the_lease_time_left_rounded_down() {
        let zone = zone();
        assert_eq!(zone.ttl(), 15);
        let left = Vouched::For(Duration::from_millis(1500));
        let a = answer(
            &zone,
            &snapshot(),
            &name("web.fabric.test."),
            RecordType::A,
            left,
        );
        assert_eq!(a.rcode, ResponseCode::NoError);
        assert!(!a.answers.is_empty());
        assert!(a.answers.iter().all(|r| r.ttl == 1), "{:?}", a.answers);
        // Negative answers too: the SOA a resolver caches the NXDOMAIN by.
        let nx = answer(
            &zone,
            &snapshot(),
            &name("nope.fabric.test."),
            RecordType::A,
            left,
        );
        assert_eq!(nx.rcode, ResponseCode::NXDomain);
        assert!(
            nx.authority.iter().all(|r| r.ttl == 1),
            "{:?}",
            nx.authority
        );
        // Under a second left: TTL 0, answered but not cacheable.
        let brief = Vouched::For(Duration::from_millis(999));
        let a = answer(
            &zone,
            &snapshot(),
            &name("web.fabric.test."),
            RecordType::A,
            brief,
        );
        assert!(a.answers.iter().all(|r| r.ttl == 0), "{:?}", a.answers);
    }

    #[test]
    fn unvouched_server_answers_servfail_for_every_in_zone_question() {
        for (qname, qtype) in [
            ("web.fabric.test.", RecordType::A),
            ("nope.fabric.test.", RecordType::A),
            ("fabric.test.", RecordType::SOA),
            ("fabric.test.", RecordType::NS),
        ] {
            let a = answer(&zone(), &snapshot(), &name(qname), qtype, Vouched::No);
            assert_eq!(a.rcode, ResponseCode::ServFail, "{qname} {qtype}");
            assert!(!a.authoritative);
            assert!(a.answers.is_empty() && a.authority.is_empty());
        }
    }

    #[test]
    fn unvouched_server_still_refuses_names_outside_the_zone() {
        let a = answer(
            &zone(),
            &snapshot(),
            &name("example.com."),
            RecordType::A,
            Vouched::No,
        );
        assert_eq!(a.rcode, ResponseCode::Refused);
    }

    #[test]
    fn names_match_case_insensitively() {
        let a = ask("WeB.FaBrIc.TeSt.", RecordType::A);
        assert_eq!(a.rcode, ResponseCode::NoError);
        assert_eq!(a.answers.len(), 2);

        let upper_origin = Zone::new(&ZoneConfig::new("FABRIC.Test")).expect("valid config");
        let a = answer(
            &upper_origin,
            &snapshot(),
            &name("web.fabric.test."),
            RecordType::A,
            FOR_LONG,
        );
        assert_eq!(a.answers.len(), 2);
    }

    #[test]
    fn zone_transfers_are_refused() {
        for qtype in [RecordType::AXFR, RecordType::IXFR] {
            assert_eq!(ask("fabric.test.", qtype).rcode, ResponseCode::Refused);
        }
    }

    #[test]
    fn snapshot_with_name_normalises_keys() {
        let s = ZoneSnapshot::new(1).with_name("Web.", [V4]);
        assert!(s.names.contains_key("web"));
    }

    #[test]
    fn root_or_malformed_origin_is_rejected() {
        assert!(matches!(
            Zone::new(&ZoneConfig::new(".")),
            Err(ZoneError::RootOrigin { .. })
        ));
        assert!(matches!(
            Zone::new(&ZoneConfig::new("bad..name")),
            Err(ZoneError::InvalidOrigin { .. })
        ));
        let mut config = ZoneConfig::new("fabric.test.");
        config.hostmaster = Some("a..b".into());
        assert!(matches!(
            Zone::new(&config),
            Err(ZoneError::InvalidName {
                field: "hostmaster",
                ..
            })
        ));
    }

    #[test]
    fn config_parses_with_defaults_and_rejects_unknown_fields() {
        let config: ZoneConfig = toml::from_str(r#"origin = "fabric.test.""#).expect("parses");
        assert_eq!(config, ZoneConfig::new("fabric.test."));
        assert_eq!(config.ttl, DEFAULT_TTL);

        let full: ZoneConfig = toml::from_str(
            r#"
            origin = "fabric.test."
            ttl = 5
            nameservers = ["ns1", "ns2"]
            hostmaster = "ops.example.org."
            "#,
        )
        .expect("parses");
        assert_eq!(full.ttl, 5);
        assert!(Zone::new(&full).is_ok());

        assert!(toml::from_str::<ZoneConfig>("origin = \"x.\"\nttls = 5").is_err());
    }
}
