//! The chaos suite's checker, in the style of Jepsen's queue checker: it classifies every
//! publish the workload attempted, and checks what each node stored, what each subscriber
//! saw and what each session replica holds. Pure: it reads the recorded history only.
//!
//! ```text
//!  publish ops (id, channel, sent, ack?) ─┐
//!  each node's history per channel ───────┼─► classify ─► ok / lost / duplicated / reordered / unknown
//!  each subscriber's deliveries ──────────┤              + divergence, gaps, session mismatches
//!  each node's session documents ─────────┘
//! ```

use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};

/// One publish the workload attempted (with retries under one idempotency key).
#[derive(Debug, Clone, Serialize)]
pub struct PublishOp {
    /// Unique id, also the idempotency key and the event's `id` field.
    pub id: String,
    pub channel: String,
    /// When the first attempt was sent (µs since the run began).
    pub sent_us: u64,
    /// The acknowledgement, if one came.
    pub ack: Option<Ack>,
    /// The last error, when no acknowledgement came.
    pub error: Option<String>,
}

/// An acknowledgement: the offset the cluster said the event got.
#[derive(Debug, Clone, Serialize)]
pub struct Ack {
    pub at_us: u64,
    pub offset: u64,
}

/// A stored or delivered event: (offset, id).
pub type Entry = (u64, String);

/// Collaborative-session operations one worker attempted: increments of its counter and
/// appends of ids to the session's log.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SessionWorkerLog {
    pub session: String,
    pub worker: String,
    pub increments_acked: u64,
    pub increments_unknown: u64,
    pub appends_acked: Vec<String>,
    pub appends_unknown: Vec<String>,
}

/// Everything the checker reads.
#[derive(Debug, Default, Serialize)]
pub struct History {
    pub ops: Vec<PublishOp>,
    /// node → channel → stored entries in offset order.
    pub stored: BTreeMap<u64, BTreeMap<String, Vec<Entry>>>,
    /// subscriber name → channel → delivered entries in arrival order.
    pub delivered: BTreeMap<String, BTreeMap<String, Vec<Entry>>>,
    /// node → session → (version, document).
    pub sessions: BTreeMap<u64, BTreeMap<String, (u64, Value)>>,
    pub session_workers: Vec<SessionWorkerLog>,
}

/// The classification and every problem found.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub ok: usize,
    pub lost: usize,
    pub duplicated: usize,
    pub reordered: usize,
    pub unknown: usize,
    /// Unknown publishes that turned out committed (once).
    pub unknown_committed: usize,
    pub stored_events: usize,
    pub delivered_events: usize,
    pub session_ops_acked: u64,
    /// Problems other than the classification: diverging nodes, subscriber gaps, sessions.
    pub other_problems: usize,
    /// Up to a few examples of each kind of problem, for the failure message.
    pub problems: Vec<String>,
    #[serde(skip)]
    listed: BTreeMap<Kind, usize>,
}

/// What a problem is about; examples are listed per kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Lost,
    Duplicated,
    Reordered,
    Stored,
    Delivered,
    Session,
}

impl Report {
    /// True when no acknowledged write was lost, duplicated or reordered and every other
    /// check held.
    pub fn valid(&self) -> bool {
        self.lost == 0 && self.duplicated == 0 && self.reordered == 0 && self.other_problems == 0
    }

    /// The one-line classification.
    pub fn summary(&self) -> String {
        format!(
            "ok {} · lost {} · duplicated {} · reordered {} · unknown {} ({} of them committed) · {} events stored · {} deliveries checked · {} session ops acked · {} other problems",
            self.ok,
            self.lost,
            self.duplicated,
            self.reordered,
            self.unknown,
            self.unknown_committed,
            self.stored_events,
            self.delivered_events,
            self.session_ops_acked,
            self.other_problems
        )
    }
}

/// Examples listed per kind of problem.
const EXAMPLES_PER_KIND: usize = 5;

fn note(report: &mut Report, kind: Kind, problem: String) {
    if !matches!(kind, Kind::Lost | Kind::Duplicated | Kind::Reordered) {
        report.other_problems += 1;
    }
    let listed = report.listed.entry(kind).or_default();
    *listed += 1;
    if *listed <= EXAMPLES_PER_KIND {
        report.problems.push(problem);
    } else if *listed == EXAMPLES_PER_KIND + 1 {
        report
            .problems
            .push(format!("... (more {kind:?} problems not listed)"));
    }
}

/// Checks everything; the first node's history is the reference the others must equal.
pub fn check(history: &History) -> Report {
    let mut report = Report::default();
    let Some((reference_node, reference)) = history.stored.iter().next() else {
        note(&mut report, Kind::Stored, "no node's history was read".into());
        return report;
    };
    check_stored(history, *reference_node, reference, &mut report);
    classify_publishes(history, reference, &mut report);
    check_deliveries(history, reference, &mut report);
    check_sessions(history, &mut report);
    report
}

/// Offsets gapless and increasing, no event nobody sent, every node equal to the reference.
fn check_stored(
    history: &History,
    reference_node: u64,
    reference: &BTreeMap<String, Vec<Entry>>,
    report: &mut Report,
) {
    let sent: HashMap<&str, &str> = history
        .ops
        .iter()
        .map(|op| (op.id.as_str(), op.channel.as_str()))
        .collect();
    for (channel, entries) in reference {
        report.stored_events += entries.len();
        for pair in entries.windows(2) {
            if pair[1].0 != pair[0].0 + 1 {
                note(
                    report,
                    Kind::Stored,
                    format!(
                        "node {reference_node} {channel}: offset {} follows {}",
                        pair[1].0, pair[0].0
                    ),
                );
            }
        }
        for (offset, id) in entries {
            if sent.get(id.as_str()) != Some(&channel.as_str()) {
                note(
                    report,
                    Kind::Stored,
                    format!(
                        "node {reference_node} {channel}@{offset}: event {id:?} was never published to it"
                    ),
                );
            }
        }
    }
    for (node, channels) in &history.stored {
        for (channel, entries) in reference {
            let theirs = channels.get(channel).map(Vec::as_slice).unwrap_or_default();
            if theirs != entries.as_slice() {
                let at = entries
                    .iter()
                    .zip(theirs)
                    .position(|(a, b)| a != b)
                    .unwrap_or(entries.len().min(theirs.len()));
                note(
                    report,
                    Kind::Stored,
                    format!(
                        "node {node} {channel} differs from node {reference_node}: {} vs {} events, first difference at index {at}: {:?} vs {:?}",
                        theirs.len(),
                        entries.len(),
                        theirs.get(at),
                        entries.get(at)
                    ),
                );
            }
        }
    }
}

/// ok / lost / duplicated / reordered / unknown, per publish.
fn classify_publishes(history: &History, reference: &BTreeMap<String, Vec<Entry>>, report: &mut Report) {
    let mut positions: HashMap<(&str, &str), Vec<u64>> = HashMap::new();
    for (channel, entries) in reference {
        for (offset, id) in entries {
            positions
                .entry((channel.as_str(), id.as_str()))
                .or_default()
                .push(*offset);
        }
    }
    let reordered = reordered_ids(history, reference);
    for op in &history.ops {
        let found = positions
            .get(&(op.channel.as_str(), op.id.as_str()))
            .map(Vec::as_slice)
            .unwrap_or_default();
        match (&op.ack, found) {
            (None, []) => report.unknown += 1,
            (None, [_]) => {
                report.unknown += 1;
                report.unknown_committed += 1;
            }
            (_, [_, _, ..]) => {
                report.duplicated += 1;
                note(
                    report,
                    Kind::Duplicated,
                    format!("duplicated: {} in {} at offsets {found:?}", op.id, op.channel),
                );
            }
            (Some(ack), []) => {
                report.lost += 1;
                note(
                    report,
                    Kind::Lost,
                    format!(
                        "lost: {} in {} (acknowledged at offset {})",
                        op.id, op.channel, ack.offset
                    ),
                );
            }
            (Some(ack), [offset]) if ack.offset != *offset => {
                report.reordered += 1;
                note(
                    report,
                    Kind::Reordered,
                    format!(
                        "reordered: {} acknowledged at {}@{} but stored at offset {offset}",
                        op.id, op.channel, ack.offset
                    ),
                );
            }
            (Some(_), [_]) if reordered.contains_key(op.id.as_str()) => {
                report.reordered += 1;
                note(report, Kind::Reordered, reordered[op.id.as_str()].clone());
            }
            (Some(_), [_]) => report.ok += 1,
        }
    }
}

/// Real-time order per channel: an acknowledged publish A must be stored before every
/// publish of its channel that was first sent after A's acknowledgement. Returns the ids of
/// the acknowledged publishes stored too late, with why.
fn reordered_ids<'a>(
    history: &'a History,
    reference: &BTreeMap<String, Vec<Entry>>,
) -> HashMap<&'a str, String> {
    let by_id: HashMap<&str, &PublishOp> = history.ops.iter().map(|op| (op.id.as_str(), op)).collect();
    let mut reordered = HashMap::new();
    for (channel, entries) in reference {
        // Walking in offset order, remember the latest first-send time seen so far: an
        // acknowledged event acknowledged before that send was stored too late.
        let mut latest_send: Option<(u64, &str)> = None;
        for (offset, id) in entries {
            let Some(op) = by_id.get(id.as_str()) else {
                continue;
            };
            if let (Some(ack), Some((sent, earlier))) = (&op.ack, latest_send)
                && ack.at_us < sent
            {
                reordered.insert(
                    op.id.as_str(),
                    format!(
                        "reordered: {id} in {channel} was acknowledged at {} µs but is stored at offset {offset}, after {earlier}, first sent at {sent} µs",
                        ack.at_us
                    ),
                );
            }
            if latest_send.is_none_or(|(t, _)| op.sent_us > t) {
                latest_send = Some((op.sent_us, op.id.as_str()));
            }
        }
    }
    reordered
}

/// Every subscriber saw every stored event of its channels, in order, exactly once.
fn check_deliveries(history: &History, reference: &BTreeMap<String, Vec<Entry>>, report: &mut Report) {
    for (subscriber, channels) in &history.delivered {
        for (channel, entries) in reference {
            let got = channels.get(channel).map(Vec::as_slice).unwrap_or_default();
            report.delivered_events += got.len();
            if got != entries.as_slice() {
                let at = entries
                    .iter()
                    .zip(got)
                    .position(|(a, b)| a != b)
                    .unwrap_or(entries.len().min(got.len()));
                note(
                    report,
                    Kind::Delivered,
                    format!(
                        "subscriber {subscriber} {channel}: got {} events, stored {}; first difference at index {at}: got {:?}, stored {:?}",
                        got.len(),
                        entries.len(),
                        got.get(at),
                        entries.get(at)
                    ),
                );
            }
        }
    }
}

/// Every replica holds the same document and version; counters and logs agree with what was
/// acknowledged.
fn check_sessions(history: &History, report: &mut Report) {
    let Some((first_node, reference)) = history.sessions.iter().next() else {
        if !history.session_workers.is_empty() {
            note(report, Kind::Session, "no node's sessions were read".into());
        }
        return;
    };
    for (node, sessions) in &history.sessions {
        if sessions != reference {
            note(
                report,
                Kind::Session,
                format!(
                    "node {node}'s session replicas differ from node {first_node}'s: {sessions:?} vs {reference:?}"
                ),
            );
        }
    }
    for worker in &history.session_workers {
        report.session_ops_acked += worker.increments_acked + worker.appends_acked.len() as u64;
        let Some((_, document)) = reference.get(&worker.session) else {
            note(
                report,
                Kind::Session,
                format!("session {} was not read", worker.session),
            );
            continue;
        };
        let counter = document["counters"][&worker.worker].as_u64().unwrap_or(0);
        let (low, high) = (
            worker.increments_acked,
            worker.increments_acked + worker.increments_unknown,
        );
        if counter < low || counter > high {
            note(
                report,
                Kind::Session,
                format!(
                    "session {} counter {}: {counter}, but {low} increments were acknowledged and {} unknown",
                    worker.session, worker.worker, worker.increments_unknown
                ),
            );
        }
        let log: Vec<&str> = document["log"]
            .as_array()
            .map(|l| l.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for id in &log {
            *counts.entry(id).or_default() += 1;
        }
        for id in &worker.appends_acked {
            match counts.get(id.as_str()) {
                Some(1) => {}
                n => note(
                    report,
                    Kind::Session,
                    format!(
                        "session {} log: acknowledged append {id} is there {} times",
                        worker.session,
                        n.copied().unwrap_or(0)
                    ),
                ),
            }
        }
        for id in &worker.appends_unknown {
            if counts.get(id.as_str()).is_some_and(|n| *n > 1) {
                note(
                    report,
                    Kind::Session,
                    format!(
                        "session {} log: append {id} is there more than once",
                        worker.session
                    ),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn op(id: &str, channel: &str, sent: u64, ack: Option<(u64, u64)>) -> PublishOp {
        PublishOp {
            id: id.into(),
            channel: channel.into(),
            sent_us: sent,
            ack: ack.map(|(at_us, offset)| Ack { at_us, offset }),
            error: ack.is_none().then(|| "timeout".into()),
        }
    }

    fn entries(ids: &[&str]) -> Vec<Entry> {
        ids.iter()
            .enumerate()
            .map(|(i, id)| (i as u64 + 1, id.to_string()))
            .collect()
    }

    /// Three publishes on one channel, b's outcome unknown; stored a, b, c on two nodes and
    /// delivered the same to one subscriber.
    fn healthy() -> History {
        let stored: BTreeMap<String, Vec<Entry>> = [("c".to_string(), entries(&["a", "b", "c"]))].into();
        History {
            ops: vec![
                op("a", "c", 0, Some((10, 1))),
                op("b", "c", 5, None),
                op("c", "c", 20, Some((30, 3))),
            ],
            stored: [(1, stored.clone()), (2, stored.clone())].into(),
            delivered: [("sub1".to_string(), stored)].into(),
            ..History::default()
        }
    }

    #[test]
    fn a_healthy_history_is_valid() {
        let report = check(&healthy());
        assert!(report.valid(), "{report:?}");
        assert_eq!((report.ok, report.unknown, report.unknown_committed), (2, 1, 1));
    }

    #[test]
    fn a_missing_acknowledged_event_is_lost() {
        let mut h = healthy();
        for node in h.stored.values_mut() {
            node.insert("c".into(), entries(&["b", "c"]));
        }
        let report = check(&h);
        assert_eq!(report.lost, 1, "{report:?}");
        assert!(!report.valid());
    }

    #[test]
    fn an_event_stored_twice_is_duplicated() {
        let mut h = healthy();
        for node in h.stored.values_mut() {
            node.insert("c".into(), entries(&["a", "b", "c", "a"]));
        }
        assert_eq!(check(&h).duplicated, 1);
    }

    #[test]
    fn an_event_stored_before_one_acknowledged_earlier_is_reordered() {
        let mut h = healthy();
        // c was first sent at 20 µs, after a's ack at 10 µs, yet is stored first.
        h.ops[0].ack = Some(Ack { at_us: 10, offset: 3 });
        h.ops[2].ack = Some(Ack { at_us: 30, offset: 1 });
        for node in h.stored.values_mut() {
            node.insert("c".into(), entries(&["c", "b", "a"]));
        }
        h.delivered.clear();
        let report = check(&h);
        assert_eq!(report.reordered, 1, "{report:?}");
        assert_eq!(report.ok, 1);
    }

    #[test]
    fn a_wrong_acknowledged_offset_is_reordered() {
        let mut h = healthy();
        h.ops[2].ack = Some(Ack { at_us: 30, offset: 2 });
        assert_eq!(check(&h).reordered, 1);
    }

    #[test]
    fn diverging_nodes_and_subscriber_gaps_are_problems() {
        let mut h = healthy();
        h.stored
            .get_mut(&2)
            .unwrap()
            .insert("c".into(), entries(&["a", "b"]));
        h.delivered
            .get_mut("sub1")
            .unwrap()
            .insert("c".into(), vec![(1, "a".into()), (3, "c".into())]);
        let report = check(&h);
        assert_eq!(report.other_problems, 2, "{report:?}");
        assert!(!report.valid());
    }

    #[test]
    fn sessions_must_match_across_nodes_and_acknowledged_operations() {
        let mut h = healthy();
        let doc = json!({"counters": {"w1": 2}, "log": ["x1", "x2"]});
        h.sessions = [
            (1, [("s".to_string(), (4, doc.clone()))].into()),
            (2, [("s".to_string(), (4, doc))].into()),
        ]
        .into();
        h.session_workers = vec![SessionWorkerLog {
            session: "s".into(),
            worker: "w1".into(),
            increments_acked: 2,
            increments_unknown: 0,
            appends_acked: vec!["x1".into(), "x2".into()],
            appends_unknown: vec![],
        }];
        assert!(check(&h).valid());
        h.session_workers[0].increments_acked = 3;
        assert!(!check(&h).valid());
        h.session_workers[0].increments_acked = 2;
        h.sessions.get_mut(&2).unwrap().get_mut("s").unwrap().0 = 5;
        assert!(!check(&h).valid());
    }
}
