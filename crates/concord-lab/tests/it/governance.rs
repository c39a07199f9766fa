//! Charter versions adopted by running nodes: verified from the version before, in effect for
//! the next request, without a restart.

use concord_charter::governance::{Ballot, Change, Proposal, Round, SignedVote, VoteOutcome};
use concord_lab::demo::api_query;
use concord_node::store::config::NodeDir;

use crate::support::three_members;

/// The proposal `id` as `node` holds it.
fn proposal_of(node: &concord_node::node::Node, id: &str) -> Proposal {
    node.acts()
        .expect("acts")
        .proposals
        .iter()
        .filter_map(|n| concord_log::Note::parse(n.as_bytes()).ok())
        .filter_map(|n| Proposal::from_text(n.text()).ok())
        .find(|p| p.id() == id)
        .expect("proposal held")
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_member_is_out_at_once_on_every_node_that_adopts_the_version() {
    let fed = three_members().await;
    let base = fed.nodes[0].node.charter().charter.clone();
    assert_eq!(base.version, 1);
    let signer = |id: &str| {
        let nd = NodeDir::new(&fed.member(id).dir);
        nd.load_signer(&nd.load_config().expect("config")).expect("key")
    };
    let proposal = Proposal {
        federation: base.federation.clone(),
        base_version: 1,
        base_digest: base.digest(),
        proposer: "alpha".into(),
        expires: now() + 3600,
        changes: vec![Change::RemoveMember { id: "charlie".into() }],
    };
    let mut round = Round::new(base.clone());
    let id = round.propose(&proposal.sign(&signer("alpha")).expect("signs"), now()).expect("accepted");
    let body = round.proposals[&id].body.clone();
    let vote = |m: &str| SignedVote::cast(&signer(m), m, &proposal, &body, Ballot::Yes, "").expect("vote");
    assert!(matches!(round.vote(vote("alpha"), now()), Ok(VoteOutcome::Counted)));
    let Ok(VoteOutcome::Adopted(next)) = round.vote(vote("bravo"), now()) else {
        panic!("two of three is the threshold")
    };

    // Before: alpha's query reaches charlie.
    let a = fed.member("alpha");
    let before =
        api_query(&a.local_url, &a.analyst_token, "SELECT count(*) AS n FROM cases").await.expect("runs");
    assert!(before.provenance.iter().any(|c| c.member == "charlie"));

    // A version that does not follow is refused, and nothing changes.
    let mut skipped = (*next).clone();
    skipped.charter.version = 3;
    let skipped = concord_charter::SignedCharter::unsigned(skipped.charter).expect("note");
    assert!(fed.nodes[0].node.adopt(skipped).await.is_err());
    assert_eq!(fed.nodes[0].node.charter_version(), 1);

    for n in &fed.nodes[..2] {
        n.node.adopt((*next).clone()).await.expect("adopted");
        assert_eq!(n.node.charter_version(), 2);
    }
    // After: alpha's query asks alpha and bravo only, and charlie is refused at bravo's door.
    let after =
        api_query(&a.local_url, &a.analyst_token, "SELECT count(*) AS n FROM cases").await.expect("runs");
    let members: Vec<&str> = after.provenance.iter().map(|c| c.member.as_str()).collect();
    assert!(!members.contains(&"charlie"), "{members:?}");
    let c = fed.member("charlie");
    let refused = api_query(&c.local_url, &c.analyst_token, "SELECT count(*) AS n FROM bravo.cases").await;
    assert!(refused.is_err(), "bravo no longer serves charlie: {:?}", refused.map(|r| r.provenance));

    // The version is stored: a restarted node starts from it.
    let dir = fed.stop().await;
    let nd = NodeDir::new(dir.path().join("alpha").join("node"));
    let node = concord_node::node::Node::open(&nd).await.expect("reopens");
    assert_eq!(node.charter_version(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proposals_and_votes_spread_and_every_node_adopts_the_version() {
    let fed = three_members().await;
    let (alpha, bravo, charlie) = (&fed.nodes[0].node, &fed.nodes[1].node, &fed.nodes[2].node);
    let ttl = std::time::Duration::from_secs(3600);
    let p1 = alpha.propose(vec![Change::MinGroupSize { size: 12 }], ttl).await.expect("proposed");
    let p2 = charlie.propose(vec![Change::MinGroupSize { size: 15 }], ttl).await.expect("proposed");
    // Pushed to every member.
    for n in [alpha, bravo, charlie] {
        let ids: Vec<String> = n.proposals().expect("proposals").into_iter().map(|p| p.id).collect();
        assert!(ids.contains(&p1) && ids.contains(&p2), "{ids:?}");
    }
    // A replayed proposal is refused as already known.
    let report = bravo.cast_vote(&p1, Ballot::Yes, "fine").await.expect("counted");
    assert_eq!(report.outcome, "counted");
    assert!(bravo.cast_vote(&p1, Ballot::Yes, "").await.is_err(), "a duplicate vote");
    // Bravo's node never signs a second yes on one version.
    let e = bravo.cast_vote(&p2, Ballot::Yes, "").await.expect_err("one yes per version");
    assert!(e.to_string().contains("one yes per version"), "{e}");
    // A second yes signed with bravo's key elsewhere is equivocation: refused, evidence kept and
    // logged once, however often it is sent again.
    let nd = NodeDir::new(&fed.member("bravo").dir);
    let key = nd.load_signer(&nd.load_config().expect("config")).expect("key");
    let second = proposal_of(alpha, &p2);
    let body = concord_charter::governance::apply(&alpha.charter().charter, &second.changes).expect("body");
    let forged = SignedVote::cast(&key, "bravo", &second, &body, Ballot::Yes, "").expect("vote");
    let wire = concord_node::node::governance::VoteWire {
        note: forged.note.to_string(),
        body_signature: forged.body_signature_line(),
    };
    for _ in 0..3 {
        let e = alpha.take_vote(&wire).await.expect_err("equivocation");
        assert!(e.to_string().contains("equivocation"), "{e}");
    }
    let evidence = alpha.state.governance_acts(1).expect("acts");
    assert_eq!(evidence.iter().filter(|(k, _, _)| k == "evidence").count(), 1);
    // Alpha's yes reaches the threshold of two: every node adopts version 2.
    let report = alpha.cast_vote(&p1, Ballot::Yes, "").await.expect("adopted");
    assert_eq!((report.outcome.as_str(), report.version), ("adopted", 2));
    for n in [alpha, bravo, charlie] {
        assert_eq!(n.charter_version(), 2);
        assert_eq!(n.baseline().min_group_size, 12, "the baseline follows the version");
    }
    // A vote on the old base is refused.
    assert!(charlie.cast_vote(&p2, Ballot::Yes, "").await.is_err());
    fed.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_down_during_a_vote_catches_up_when_it_starts() {
    let mut fed = three_members().await;
    let charlie = fed.nodes.remove(2);
    charlie.stop().await;
    let (alpha, bravo) = (fed.nodes[0].node.clone(), fed.nodes[1].node.clone());
    let ttl = std::time::Duration::from_secs(3600);
    let p = alpha.propose(vec![Change::MinGroupSize { size: 20 }], ttl).await.expect("proposed");
    bravo.cast_vote(&p, Ballot::Yes, "").await.expect("counted");
    let report = alpha.cast_vote(&p, Ballot::Yes, "").await.expect("adopted");
    assert_eq!(report.version, 2);
    // Charlie starts again: it pulls version 2 from the others and verifies it from version 1.
    let restarted =
        concord_node::run::start(&NodeDir::new(&fed.member("charlie").dir)).await.expect("starts");
    let node = restarted.node.clone();
    crate::support::eventually("charlie adopts version 2", || {
        let node = node.clone();
        async move { node.charter_version() == 2 }
    })
    .await;
    assert_eq!(node.baseline().min_group_size, 20);
    fed.nodes.push(restarted);
    fed.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_leaves_without_anyone_voting() {
    let fed = three_members().await;
    let charlie = fed.nodes[2].node.clone();
    let report = charlie.leave(std::time::Duration::from_secs(3600)).await.expect("exit signed");
    // Charlie's yes and the others' own yes: the version without charlie, on every node that stays.
    crate::support::eventually("alpha and bravo adopt the version without charlie", || {
        let (a, b) = (fed.nodes[0].node.clone(), fed.nodes[1].node.clone());
        async move { a.charter_version() == 2 && b.charter_version() == 2 }
    })
    .await;
    for n in &fed.nodes[..2] {
        assert!(n.node.charter().charter.member("charlie").is_none());
    }
    let _ = report;
    // Charlie is refused at once: its queries reach no one.
    let c = fed.member("charlie");
    assert!(
        api_query(&c.local_url, &c.analyst_token, "SELECT count(*) AS n FROM alpha.cases").await.is_err()
    );
    fed.stop().await;
}
