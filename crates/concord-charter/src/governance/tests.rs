use concord_log::NoteSigner;
use proptest::prelude::*;

use super::*;
use crate::{ColumnType, SchemaColumn};

const FED: &str = "fed";
const NOW: u64 = 1_800_000_000;

fn card(id: &str, n: u8) -> (MemberCard, NoteSigner) {
    crate::tests::card(FED, id, (b'A' + n) as char)
}

fn federation(n: usize) -> (Charter, Vec<(String, NoteSigner)>) {
    let mut cards = Vec::new();
    let mut keys = Vec::new();
    for i in 0..n {
        let id = format!("m{i:02}");
        let (c, k) = card(&id, i as u8);
        cards.push(c);
        keys.push((id, k));
    }
    let schema = SharedSchema {
        name: "cases".into(),
        version: 1,
        columns: vec![SchemaColumn { name: "region".into(), ty: ColumnType::Utf8, personal: false }],
        privacy_unit: None,
    };
    (Charter::genesis(FED, cards, vec![schema]).expect("genesis"), keys)
}

fn proposal(base: &Charter, proposer: &str, changes: Vec<Change>) -> Proposal {
    Proposal {
        federation: FED.into(),
        base_version: base.version,
        base_digest: base.digest(),
        proposer: proposer.into(),
        expires: NOW + 3600,
        changes,
    }
}

fn yes(keys: &[(String, NoteSigner)], i: usize, p: &Proposal, body: &Charter) -> SignedVote {
    SignedVote::cast(&keys[i].1, &keys[i].0, p, body, Ballot::Yes, "").expect("vote")
}

#[test]
fn changes_apply_and_bad_ones_are_refused() {
    let (base, _) = federation(5);
    let (golf, _) = card("golf", 9);
    let next = apply(&base, &[Change::AddMember { card: golf.clone() }]).expect("adds");
    assert_eq!(next.version, 2);
    assert_eq!(next.previous.as_deref(), Some(base.digest().as_str()));
    assert_eq!(next.members.len(), 6);
    assert_eq!(next.threshold, 4, "two thirds of six, rounded up");
    let fewer = apply(&base, &[Change::RemoveMember { id: "m04".into() }]).expect("removes");
    assert_eq!((fewer.members.len(), fewer.threshold), (4, 3));
    // A threshold the federation chose stays when a member leaves (within the new size).
    let unanimous = apply(&base, &[Change::Threshold { threshold: 5 }]).expect("unanimity");
    let after = apply(&unanimous, &[Change::RemoveMember { id: "m04".into() }]).expect("removes");
    assert_eq!(after.threshold, 4, "still every member");
    let refused = |changes: Vec<Change>, needle: &str| {
        let e = apply(&base, &changes).expect_err(needle).to_string();
        assert!(e.contains(needle), "{e}");
    };
    refused(vec![], "changes nothing");
    refused(vec![Change::AddMember { card: base.members[0].clone() }], "already a member");
    refused(vec![Change::RemoveMember { id: "nobody".into() }], "not a member");
    refused(vec![Change::Threshold { threshold: 2 }], "not a majority");
    refused((0..5).map(|i| Change::RemoveMember { id: format!("m{i:02}") }).collect(), "without members");
    refused(vec![Change::SetSchema { schema: base.schemas[0].clone() }], "needs a higher version");
    refused(vec![Change::MinGroupSize { size: 0 }], "at least 1");
    refused(vec![Change::ChangeEndpoint { id: "m00".into(), endpoint: " bad".into() }], "peer endpoint");
}

#[test]
fn proposals_and_votes_round_trip_as_canonical_text() {
    let (base, keys) = federation(3);
    let p =
        proposal(&base, "m00", vec![Change::MinGroupSize { size: 12 }, Change::Threshold { threshold: 3 }]);
    assert_eq!(Proposal::from_text(&p.to_text()).expect("parses"), p);
    assert!(matches!(
        Proposal::from_text(&p.to_text().replace("expires", "expires  ")),
        Err(CharterError::NotCanonical | CharterError::Malformed { .. })
    ));
    let body = apply(&base, &p.changes).expect("applies");
    let v = SignedVote::cast(&keys[1].1, "m01", &p, &body, Ballot::No, "too strict").expect("vote");
    let back = SignedVote::parse(&v.note.to_bytes(), None).expect("parses");
    assert_eq!(back, v);
    let y = yes(&keys, 2, &p, &body);
    let line = y.body_signature_line().expect("a yes has a body signature");
    assert_eq!(SignedVote::parse(&y.note.to_bytes(), Some(&line)).expect("parses"), y);
}

#[test]
fn a_threshold_of_yes_votes_makes_the_next_version() {
    let (base, keys) = federation(5);
    let mut round = Round::new(base.clone());
    let p = proposal(&base, "m00", vec![Change::MinGroupSize { size: 12 }]);
    let id = round.propose(&p.sign(&keys[0].1).expect("signs"), NOW).expect("accepted");
    let body = round.proposals[&id].body.clone();
    for i in 0..3 {
        assert!(matches!(round.vote(yes(&keys, i, &p, &body), NOW), Ok(VoteOutcome::Counted)));
    }
    let Ok(VoteOutcome::Adopted(next)) = round.vote(yes(&keys, 3, &p, &body), NOW) else {
        panic!("the fourth yes of five reaches the threshold")
    };
    next.verify_successor(&base).expect("every node verifies it alone");
    assert_eq!(next.charter.min_group_size, 12);
    assert_eq!(round.status(&id, NOW), Some(Status::Adopted));
}

#[test]
fn the_cross_borders_rule_is_written_only_when_changed_and_reads_back() {
    let (base, _) = federation(3);
    assert!(!base.to_text().contains("cross-borders"), "versions from before the rule render as signed");
    let next =
        apply(&base, &[Change::CrossBorders { ceiling: crate::CrossBorders::General }]).expect("applies");
    let text = next.to_text();
    assert!(text.contains("\ncross-borders general\n"), "{text}");
    let back = SignedCharter::unsigned(next.clone()).expect("note");
    let parsed = SignedCharter::parse(&back.to_bytes()).expect("parses");
    assert_eq!(parsed.charter, next);
    let bad = text.replace("cross-borders general", "cross-borders core");
    let e = Charter::from_text(&bad).expect_err("core never crosses");
    assert!(e.to_string().contains("not public, general or important"), "{e}");
}

#[test]
fn attacks_and_bad_votes_are_refused_with_their_reason() {
    let (base, keys) = federation(5);
    let mut round = Round::new(base.clone());
    let p1 = proposal(&base, "m00", vec![Change::MinGroupSize { size: 12 }]);
    let p2 = proposal(&base, "m01", vec![Change::MinGroupSize { size: 15 }]);
    let note1 = p1.sign(&keys[0].1).expect("signs");
    let id1 = round.propose(&note1, NOW).expect("accepted");
    let id2 = round.propose(&p2.sign(&keys[1].1).expect("signs"), NOW).expect("accepted");
    let (b1, b2) = (round.proposals[&id1].body.clone(), round.proposals[&id2].body.clone());
    let err = |r: Result<VoteOutcome, GovernanceError>| r.expect_err("refused").to_string();

    // A replayed proposal, a proposal on a stale base, an expired one, one by an outsider.
    assert!(matches!(round.propose(&note1, NOW), Err(GovernanceError::Duplicate(_))));
    let mut stale = proposal(&base, "m00", vec![Change::MinGroupSize { size: 13 }]);
    stale.base_version = 0;
    let e = round.propose(&stale.sign(&keys[0].1).expect("signs"), NOW).expect_err("stale");
    assert!(e.to_string().contains("current version is 1"), "{e}");
    let e = round.propose(&p1.sign(&keys[0].1).expect("signs"), NOW + 7200);
    assert!(e.is_err());
    let late = proposal(&base, "m00", vec![Change::MinGroupSize { size: 14 }]);
    let e = round.propose(&late.sign(&keys[0].1).expect("signs"), NOW + 7200).expect_err("expired");
    assert!(e.to_string().contains("expired"), "{e}");
    let (_, outsider) = card("mallory", 30);
    let mut forged = proposal(&base, "mallory", vec![Change::MinGroupSize { size: 1 }]);
    let e = round.propose(&forged.sign(&outsider).expect("signs"), NOW).expect_err("outsider");
    assert!(e.to_string().contains("not a member"), "{e}");
    forged.proposer = "m02".into();
    let e = round.propose(&forged.sign(&outsider).expect("signs"), NOW).expect_err("forged");
    assert!(e.to_string().contains("not signed by m02"), "{e}");

    // A forged vote (another key), a non-member's vote, a yes over another body.
    let mut v = SignedVote::cast(&outsider, "m03", &p1, &b1, Ballot::Yes, "").expect("vote");
    assert!(err(round.vote(v.clone(), NOW)).contains("not signed by m03"));
    v = SignedVote::cast(&outsider, "mallory", &p1, &b1, Ballot::Yes, "").expect("vote");
    assert!(err(round.vote(v, NOW)).contains("not a member"));
    let mut wrong = yes(&keys, 3, &p1, &b2);
    assert!(err(round.vote(wrong.clone(), NOW)).contains("not a signature over the proposal's body"));
    wrong.body_signature = None;
    assert!(err(round.vote(wrong, NOW)).contains("carries a signature"));

    // A duplicate vote, then equivocation: both signatures kept.
    round.vote(yes(&keys, 3, &p1, &b1), NOW).expect("counted");
    assert!(matches!(round.vote(yes(&keys, 3, &p1, &b1), NOW), Err(GovernanceError::Duplicate(_))));
    let e = err(round.vote(yes(&keys, 3, &p2, &b2), NOW));
    assert!(e.contains("equivocation"), "{e}");
    assert_eq!(round.evidence.len(), 1);
    let ev = &round.evidence[0];
    assert_eq!(
        (ev.voter.as_str(), ev.first.0.as_str(), ev.second.0.as_str()),
        ("m03", id1.as_str(), id2.as_str())
    );

    // A vote on a proposal this round does not know (a stale base).
    let other = proposal(&base, "m04", vec![Change::MinGroupSize { size: 20 }]);
    let ob = apply(&base, &other.changes).expect("applies");
    assert!(err(round.vote(yes(&keys, 4, &other, &ob), NOW)).contains("unknown"));

    // Enough no votes kill a proposal: 5 members, threshold 4, two no votes.
    let no = |i: usize| SignedVote::cast(&keys[i].1, &keys[i].0, &p2, &b2, Ballot::No, "").expect("vote");
    assert!(matches!(round.vote(no(0), NOW), Ok(VoteOutcome::Counted)));
    assert!(matches!(round.vote(no(2), NOW), Ok(VoteOutcome::Dead)));
    assert!(err(round.vote(yes(&keys, 4, &p2, &b2), NOW)).contains("dead"));
    // Its voters are free again: m03's yes on p1 stands, and p1 is still live.
    assert_eq!(round.status(&id1, NOW), Some(Status::Live));
    // An expired proposal takes no votes.
    assert!(err(round.vote(yes(&keys, 0, &p1, &b1), NOW + 7200)).contains("expired"));
}

#[test]
fn a_minority_cannot_push_a_version_nor_skip_a_number() {
    let (base, keys) = federation(5);
    let p = proposal(&base, "m00", vec![Change::Threshold { threshold: 3 }]);
    let body = apply(&base, &p.changes).expect("applies");
    let mut sc = SignedCharter::unsigned(body.clone()).expect("note");
    for (_, k) in keys.iter().take(3) {
        sc.note.sign(k);
    }
    let e = sc.verify_successor(&base).expect_err("three of five is under the threshold of four");
    assert!(e.to_string().contains("threshold is 4"), "{e}");
    let mut skip = body;
    skip.version = 3;
    let mut sc = SignedCharter::unsigned(skip).expect("note");
    for (_, k) in &keys {
        sc.note.sign(k);
    }
    assert!(sc.verify_successor(&base).expect_err("skips").to_string().contains("increase by one"));
}

/// A simple deterministic shuffle.
fn shuffled<T>(mut v: Vec<T>, mut seed: u64) -> Vec<T> {
    for i in (1..v.len()).rev() {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        v.swap(i, (seed >> 33) as usize % (i + 1));
    }
    v
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Two conflicting proposals on one base, voters below a third of the members equivocating
    /// (yes on both), the others voting as they like, every node seeing the votes in its own
    /// order: no two nodes adopt different bodies for the next version, and no one can assemble
    /// both from every signature there is.
    #[test]
    fn two_proposals_on_one_base_never_make_two_versions(
        n in 3usize..10,
        choices in proptest::collection::vec(0u8..3, 10),
        orders in proptest::collection::vec(any::<u64>(), 4),
    ) {
        let (base, keys) = federation(n);
        let liars = n.div_ceil(3) - 1;
        let p1 = proposal(&base, "m00", vec![Change::MinGroupSize { size: 11 }]);
        let p2 = proposal(&base, &keys[n - 1].0, vec![Change::MinGroupSize { size: 12 }]);
        let (b1, b2) = (apply(&base, &p1.changes).expect("applies"), apply(&base, &p2.changes).expect("applies"));
        let mut votes = Vec::new();
        for i in 0..n {
            if i < liars {
                votes.push(yes(&keys, i, &p1, &b1));
                votes.push(yes(&keys, i, &p2, &b2));
                continue;
            }
            match choices[i] {
                0 => votes.push(yes(&keys, i, &p1, &b1)),
                1 => votes.push(yes(&keys, i, &p2, &b2)),
                _ => {
                    for (p, b) in [(&p1, &b1), (&p2, &b2)] {
                        votes.push(SignedVote::cast(&keys[i].1, &keys[i].0, p, b, Ballot::No, "").expect("vote"));
                    }
                }
            }
        }
        let mut adopted = std::collections::BTreeSet::new();
        for seed in &orders {
            let mut round = Round::new(base.clone());
            round.propose(&p1.sign(&keys[0].1).expect("signs"), NOW).expect("accepted");
            round.propose(&p2.sign(&keys[n - 1].1).expect("signs"), NOW).expect("accepted");
            for v in shuffled(votes.clone(), *seed) {
                if let Ok(VoteOutcome::Adopted(next)) = round.vote(v, NOW) {
                    adopted.insert(next.charter.to_text());
                }
            }
        }
        prop_assert!(adopted.len() <= 1, "two bodies adopted for version 2");
        // Whoever holds every signature cannot make both versions.
        let mut made = 0;
        for (b, pid) in [(&b1, p1.id()), (&b2, p2.id())] {
            let mut sc = SignedCharter::unsigned(b.clone()).expect("note");
            for v in votes.iter().filter(|v| v.vote.proposal == pid) {
                if let Some(sig) = &v.body_signature {
                    sc.note.add_signature(sig.clone());
                }
            }
            if sc.verify_successor(&base).is_ok() {
                made += 1;
            }
        }
        prop_assert!(made <= 1);
    }
}

#[test]
fn proposals_are_bounded_per_member_in_time_and_size() {
    let (base, keys) = federation(3);
    let mut round = Round::new(base.clone());
    let mut p = proposal(&base, "m00", vec![Change::MinGroupSize { size: 12 }]);
    p.expires = NOW + MAX_PROPOSAL_TTL + 10;
    let e = round.propose(&p.sign(&keys[0].1).expect("signs"), NOW).expect_err("too long");
    assert!(e.to_string().contains("days from now"), "{e}");
    for size in 0..MAX_LIVE_PROPOSALS as u64 {
        let p = proposal(&base, "m00", vec![Change::MinGroupSize { size: 20 + size }]);
        round.propose(&p.sign(&keys[0].1).expect("signs"), NOW).expect("accepted");
    }
    let p = proposal(&base, "m00", vec![Change::MinGroupSize { size: 99 }]);
    let e = round.propose(&p.sign(&keys[0].1).expect("signs"), NOW).expect_err("too many");
    assert!(e.to_string().contains("live proposals"), "{e}");
    // Another member still may.
    let p = proposal(&base, "m01", vec![Change::MinGroupSize { size: 99 }]);
    round.propose(&p.sign(&keys[1].1).expect("signs"), NOW).expect("accepted");
}

#[test]
fn each_log_has_a_bounded_set_of_witnesses_that_follows_the_members() {
    // Small federations: every other member witnesses each log, and the text is as before.
    let (small, _) = federation(5);
    assert_eq!(small.witnesses_per_log, None);
    assert_eq!((small.witnesses_of_each_log(), small.witness_quorum), (4, 3));
    assert!(!small.to_text().contains("witnesses-per-log"));
    // Beyond nine members: eight witnesses per log, the members after the owner in id order.
    let (base, _) = federation(12);
    assert_eq!(base.witnesses_per_log, Some(crate::DEFAULT_WITNESSES_PER_LOG));
    assert_eq!(base.witness_quorum, 5, "a majority of eight");
    let ids =
        |owner: &str| -> Vec<String> { base.witnesses_of(owner).iter().map(|m| m.id.clone()).collect() };
    assert_eq!(ids("m00"), (1..=8).map(|i| format!("m{i:02}")).collect::<Vec<_>>());
    assert_eq!(ids("m10"), ["m11", "m00", "m01", "m02", "m03", "m04", "m05", "m06"]);
    assert!(ids("nobody").is_empty());
    assert!(base.is_witness_of("m03", "m00") && !base.is_witness_of("m09", "m00"));
    assert!(!base.is_witness_of("m00", "m00"), "no member witnesses its own log");
    for m in &base.members {
        let logs = base.members.iter().filter(|o| base.is_witness_of(&m.id, &o.id)).count();
        assert_eq!(logs, 8, "{} witnesses as many logs as each log has witnesses", m.id);
    }
    assert!(base.to_text().contains("\nwitnesses-per-log 8\n"));
    assert_eq!(Charter::from_text(&base.to_text()).expect("parses"), base);

    // The default follows the members: down to nine, every other member again.
    let fewer =
        apply(&base, &(9..12).map(|i| Change::RemoveMember { id: format!("m{i:02}") }).collect::<Vec<_>>())
            .expect("three leave");
    assert_eq!((fewer.witnesses_per_log, fewer.witness_quorum), (None, 5));
    // A chosen count stays through a change of members, and the quorum moves with it.
    let three = apply(&base, &[Change::WitnessesPerLog { count: Some(3) }]).expect("three witnesses");
    assert_eq!((three.witnesses_of_each_log(), three.witness_quorum), (3, 2));
    assert_eq!(diff(&base, &three), ["witnesses per log 3", "witness quorum 2"]);
    let (golf, _) = card("m12", 12);
    let grown = apply(&three, &[Change::AddMember { card: golf }]).expect("adds");
    assert_eq!((grown.witnesses_per_log, grown.witness_quorum), (Some(3), 2));
    // A quorum the federation chose stays while the witnesses of each log stay as many.
    let strict = apply(&base, &[Change::WitnessQuorum { quorum: 8 }]).expect("all eight");
    let (hotel, _) = card("m13", 13);
    assert_eq!(apply(&strict, &[Change::AddMember { card: hotel }]).expect("adds").witness_quorum, 8);
    let all = apply(&three, &[Change::WitnessesPerLog { count: None }]).expect("every member");
    assert_eq!((all.witnesses_of_each_log(), all.witness_quorum), (11, 6));

    let refused = |changes: Vec<Change>, needle: &str| {
        let e = apply(&base, &changes).expect_err(needle).to_string();
        assert!(e.contains(needle), "{e}");
    };
    refused(vec![Change::WitnessesPerLog { count: Some(0) }], "at least one witness");
    refused(vec![Change::WitnessQuorum { quorum: 0 }], "at least 1 where a log has witnesses");
    refused(
        vec![Change::WitnessesPerLog { count: Some(3) }, Change::WitnessQuorum { quorum: 4 }],
        "more than the 3 witnesses of each log",
    );
    let zero = base.to_text().replace("witnesses-per-log 8", "witnesses-per-log 0");
    assert!(Charter::from_text(&zero).is_err(), "a charter text with no witnesses per log is refused");
}
