//! What an operator watches: counters of this process (queries made and served, refusals by
//! code, governance events, log appends) and gauges read at scrape time (log size, witness lag,
//! budget spent, charter version), in Prometheus' text format at `GET /metrics`.
//!
//! Invariant: no label holds personal data or SQL; labels are codes, member ids and dataset
//! names, which the charter and the catalog already show.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use super::Node;
use crate::NodeError;

/// Counters since the node started.
#[derive(Debug, Default)]
pub struct Metrics {
    queries_made: AtomicU64,
    query_errors: Mutex<BTreeMap<&'static str, u64>>,
    served: AtomicU64,
    catalogs_served: AtomicU64,
    peer_connections: Mutex<BTreeMap<&'static str, u64>>,
    refused: Mutex<BTreeMap<&'static str, u64>>,
    governance: Mutex<BTreeMap<&'static str, u64>>,
}

/// A governance event counted by `concord_governance_events_total`.
#[derive(Clone, Copy, Debug)]
pub enum GovernanceEvent {
    /// A proposal taken in and logged (this member's or a peer's).
    Proposal,
    /// A vote counted and logged.
    Vote,
    /// A new charter version adopted.
    Adoption,
    /// Evidence of a member's second yes on one base version, newly kept and logged.
    Equivocation,
}

impl GovernanceEvent {
    fn as_str(self) -> &'static str {
        match self {
            Self::Proposal => "proposal",
            Self::Vote => "vote",
            Self::Adoption => "adoption",
            Self::Equivocation => "equivocation",
        }
    }
}

fn bump(map: &Mutex<BTreeMap<&'static str, u64>>, key: &'static str) {
    *map.lock().unwrap_or_else(std::sync::PoisonError::into_inner).entry(key).or_default() += 1;
}

fn snapshot(map: &Mutex<BTreeMap<&'static str, u64>>) -> BTreeMap<&'static str, u64> {
    map.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
}

impl Metrics {
    /// An analyst's query answered (`code` None) or failed with `code`.
    pub fn query_made(&self, code: Option<&'static str>) {
        match code {
            None => {
                self.queries_made.fetch_add(1, Ordering::Relaxed);
            }
            Some(c) => bump(&self.query_errors, c),
        }
    }

    /// A peer's sub-query released.
    pub fn served(&self) {
        self.served.fetch_add(1, Ordering::Relaxed);
    }

    /// A peer's read of this node's catalog answered.
    pub fn catalog_served(&self) {
        self.catalogs_served.fetch_add(1, Ordering::Relaxed);
    }

    /// A peer's mutual-TLS connection accepted, speaking `protocol` (`h2` or `http/1.1`).
    pub fn peer_connection(&self, protocol: &'static str) {
        bump(&self.peer_connections, protocol);
    }

    /// A peer's request refused with `code`.
    pub fn refused(&self, code: &'static str) {
        bump(&self.refused, code);
    }

    /// A governance event taken in, counted by kind.
    pub fn governance(&self, event: GovernanceEvent) {
        bump(&self.governance, event.as_str());
    }
}

/// A label value, escaped as the text format wants.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

struct Text(String);

impl Text {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{}\"", label(v))).collect();
        if labels.is_empty() {
            let _ = writeln!(self.0, "{name} {value}");
        } else {
            let _ = writeln!(self.0, "{name}{{{}}} {value}", labels.join(","));
        }
    }
}

impl Node {
    /// The node's metrics in Prometheus' text format 0.0.4.
    pub fn metrics_text(&self) -> Result<String, NodeError> {
        let mut t = Text(String::new());
        self.counters(&mut t);
        self.gauges(&mut t)?;
        Ok(t.0)
    }

    /// The counters since the node started.
    fn counters(&self, t: &mut Text) {
        let m = &self.metrics;
        let member = self.cfg.member.as_str();
        t.family("concord_queries_made_total", "counter", "Analysts' queries this node answered.");
        t.sample("concord_queries_made_total", &[("member", member)], m.queries_made.load(Ordering::Relaxed));
        t.family("concord_query_errors_total", "counter", "Analysts' queries that failed, by error code.");
        for (code, n) in snapshot(&m.query_errors) {
            t.sample("concord_query_errors_total", &[("member", member), ("code", code)], n);
        }
        t.family("concord_queries_served_total", "counter", "Peers' sub-queries this node released.");
        t.sample("concord_queries_served_total", &[("member", member)], m.served.load(Ordering::Relaxed));
        t.family("concord_refusals_total", "counter", "Peers' requests this node refused, by error code.");
        for (code, n) in snapshot(&m.refused) {
            t.sample("concord_refusals_total", &[("member", member), ("code", code)], n);
        }
        t.family(
            "concord_governance_events_total",
            "counter",
            "Proposals, votes, adoptions and equivocations taken in.",
        );
        for (kind, n) in snapshot(&m.governance) {
            t.sample("concord_governance_events_total", &[("member", member), ("event", kind)], n);
        }
        t.family(
            "concord_peer_connections_total",
            "counter",
            "Peers' mutual-TLS connections accepted, by protocol (h2 connections carry many calls).",
        );
        for (protocol, n) in snapshot(&m.peer_connections) {
            t.sample("concord_peer_connections_total", &[("member", member), ("protocol", protocol)], n);
        }
        t.family("concord_catalogs_served_total", "counter", "Peers' reads of this node's catalog answered.");
        t.sample(
            "concord_catalogs_served_total",
            &[("member", member)],
            m.catalogs_served.load(Ordering::Relaxed),
        );
    }

    /// The gauges, read now: log size, witness lag, append latency, budget spent, version.
    fn gauges(&self, t: &mut Text) -> Result<(), NodeError> {
        let member = self.cfg.member.as_str();
        let size = self.log.size()?;
        let published = self.log.published_checkpoint()?.map_or(0, |(s, _)| s);
        t.family("concord_log_entries", "gauge", "Entries in this node's transparency log.");
        t.sample("concord_log_entries", &[("member", member)], size);
        t.family(
            "concord_witness_lag_entries",
            "gauge",
            "Entries not yet in a checkpoint its witnesses cosigned.",
        );
        t.sample("concord_witness_lag_entries", &[("member", member)], size.saturating_sub(published));
        let (count, nanos) = self.log.append_stats();
        t.family(
            "concord_log_append_seconds",
            "summary",
            "Time from an append's request to its entry on disk.",
        );
        t.sample("concord_log_append_seconds_sum", &[("member", member)], nanos as f64 / 1e9);
        t.sample("concord_log_append_seconds_count", &[("member", member)], count);
        t.family(
            "concord_budget_spent",
            "gauge",
            "Privacy budget charged on each of this node's datasets (rho or epsilon).",
        );
        for (dataset, spent) in self.state.budget_spent()? {
            t.sample("concord_budget_spent", &[("member", member), ("dataset", &dataset)], spent);
        }
        t.family("concord_charter_version", "gauge", "The charter version in force.");
        t.sample("concord_charter_version", &[("member", member)], self.charter_version());
        Ok(())
    }
}
