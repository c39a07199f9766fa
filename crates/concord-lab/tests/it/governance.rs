//! Charter versions adopted by running nodes: verified from the version before, in effect for
//! the next request, without a restart.

use concord_charter::governance::{Ballot, Change, Proposal, Round, SignedVote, VoteOutcome};
use concord_lab::demo::api_query;
use concord_node::net::local::LocalClient;
use concord_node::store::config::NodeDir;
use concord_node::wire::{self, EvidenceKind};

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
    assert_eq!(report.outcome, wire::VoteOutcome::Counted);
    assert_eq!((report.yes, report.threshold, report.needed()), (1, 2, 1), "bravo's yes, one more needed");
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
    let wire = wire::VoteWire { note: forged.note.to_string(), body_signature: forged.body_signature_line() };
    for _ in 0..3 {
        let e = alpha.take_vote(&wire).await.expect_err("equivocation");
        assert!(e.to_string().contains("equivocation"), "{e}");
    }
    let evidence = alpha.state.governance_acts(1).expect("acts");
    assert_eq!(evidence.iter().filter(|(k, _, _)| k == "evidence").count(), 1);
    // The local API shows it, both signed votes, to alpha's delegates and auditors.
    let a = fed.member("alpha");
    let shown = LocalClient::new(&a.local_url, &a.auditor_token).evidence(None).await.expect("answers");
    assert_eq!(shown.evidence.len(), 1, "{shown:?}");
    assert_eq!(shown.evidence[0].kind, EvidenceKind::Equivocation);
    let votes = shown.evidence[0].equivocation.as_ref().expect("both votes");
    assert_eq!(votes.second.vote, wire);
    assert_eq!(shown.next, None);
    // Alpha's yes reaches the threshold of two: every node adopts version 2.
    let report = alpha.cast_vote(&p1, Ballot::Yes, "").await.expect("adopted");
    assert_eq!((report.outcome, report.version), (wire::VoteOutcome::Adopted, 2));
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

const FIVE: [&str; 5] = ["alpha", "bravo", "charlie", "delta", "echo"];

/// Every node of `nodes` runs charter version `v`.
async fn all_at(what: &str, nodes: Vec<std::sync::Arc<concord_node::node::Node>>, v: u64) {
    crate::support::eventually(what, || {
        let nodes = nodes.clone();
        async move { nodes.iter().all(|n| n.charter_version() == v) }
    })
    .await;
}

/// Runs `node`'s checkpoint rounds until a checkpoint of at least `size` entries is published.
async fn published_through(what: &str, node: &std::sync::Arc<concord_node::node::Node>, size: u64) {
    crate::support::eventually(what, || {
        let node = node.clone();
        async move {
            let _ = concord_node::node::witness::publish_once(&node).await;
            node.log.published_checkpoint().ok().flatten().is_some_and(|(s, _)| s >= size)
        }
    })
    .await;
}

/// Delta's running node.
fn delta_node(fed: &crate::support::Fed) -> std::sync::Arc<concord_node::node::Node> {
    fed.nodes.iter().find(|n| n.node.cfg.member == "delta").expect("delta").node.clone()
}

/// `voters` vote yes on `id`, each on its own node.
async fn yes_from(fed: &crate::support::Fed, voters: &[&str], id: &str) {
    for v in voters {
        let n = &fed.nodes.iter().find(|n| n.node.cfg.member == *v).expect("running").node;
        n.cast_vote(id, Ballot::Yes, "").await.expect("vote taken");
    }
}

/// The members whose parts a query from `m` drew on.
async fn members_asked(m: &concord_lab::demo::DemoMember, sql: &str) -> Vec<String> {
    let r = api_query(&m.local_url, &m.analyst_token, sql).await.expect("query runs");
    r.provenance.iter().map(|c| c.member.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_members_take_in_a_sixth_rotate_a_key_and_remove_one() {
    let mut fed = crate::support::members_with(&FIVE, |_, _| {}).await;
    let alpha = fed.nodes[0].node.clone();
    let ttl = std::time::Duration::from_secs(3600);
    let genesis = concord_charter::SignedCharter::parse(&alpha.charter_note(1).expect("v1"))
        .expect("parses")
        .charter
        .digest();

    let (fox_dir, fox, card, port) = foxtrot_initialised(&fed, &genesis).await;
    let id = alpha.propose(vec![Change::AddMember { card: card.clone() }], ttl).await.expect("proposed");
    yes_from(&fed, &["alpha", "bravo", "charlie", "delta"], &id).await;
    all_at("every node adopts version 2", fed.nodes.iter().map(|n| n.node.clone()).collect(), 2).await;
    foxtrot_joins_the_chain(&fed, &alpha, &fox, &genesis).await;
    foxtrot_queries_and_is_queried(&mut fed, &fox, &fox_dir, &card, port).await;
    let (echo_dir, new_card) = echo_rotates_its_keys(&fed, &alpha, ttl).await;
    echo_serves_with_its_new_keys(&fed, &echo_dir, &new_card).await;
    delta_removed_everywhere(&fed, &alpha, ttl).await;
    delta_finds_no_witness(&fed, &alpha).await;
    fed.stop().await;
}

/// Foxtrot's node folder and card; before any version names it, joining says what is missing.
async fn foxtrot_initialised(
    fed: &crate::support::Fed,
    genesis: &str,
) -> (std::path::PathBuf, NodeDir, concord_charter::MemberCard, u16) {
    // A candidate makes its node folder; its card carries the address others dial.
    let port = crate::support::free_ports(2);
    let fox_dir = fed.dir.path().join("foxtrot").join("node");
    let card = concord_node::store::config::init(
        &fox_dir,
        &concord_node::store::config::InitOptions {
            member: "foxtrot".into(),
            federation: "test".into(),
            name: None,
            jurisdiction: Some("FOXTROT".into()),
            peer_listen: format!("127.0.0.1:{}", port + 1),
            local_listen: format!("127.0.0.1:{port}"),
            flight_listen: None,
            advertise: None,
        },
    )
    .expect("init");
    let fox = NodeDir::new(&fox_dir);
    // Before any version names it, joining says what is missing.
    let e = concord_node::node::governance::join(&fox, &fed.member("bravo").peer_url, genesis, None)
        .await
        .expect_err("not a member yet");
    assert!(e.to_string().contains("--add-member"), "{e}");
    (fox_dir, fox, card, port)
}

/// A wrong genesis or a head the chain does not end at is refused; the true head is joined.
async fn foxtrot_joins_the_chain(
    fed: &crate::support::Fed,
    alpha: &concord_node::node::Node,
    fox: &NodeDir,
    genesis: &str,
) {
    // A wrong genesis digest is refused, and nothing is stored.
    let wrong = "0".repeat(64);
    let e = concord_node::node::governance::join(fox, &fed.member("bravo").peer_url, &wrong, None)
        .await
        .expect_err("another federation's chain");
    assert!(e.to_string().contains("not the"), "{e}");
    assert!(fox.open_state().expect("state").latest_charter().expect("reads").is_none());
    // A head the chain does not end at (a stale or forked server, as the candidate's trusted
    // member reads it) is refused; the one it ends at is joined.
    let e = concord_node::node::governance::join(fox, &fed.member("bravo").peer_url, genesis, Some(genesis))
        .await
        .expect_err("the chain ends at version 2");
    assert!(e.to_string().contains("another history"), "{e}");
    let head = alpha.charter().charter.digest();
    let joined =
        concord_node::node::governance::join(fox, &fed.member("bravo").peer_url, genesis, Some(&head))
            .await
            .expect("joins");
    assert_eq!(joined.charter.version, 2);
}

/// Foxtrot's dataset, token and node: the sixth member queries every other, and is queried.
async fn foxtrot_queries_and_is_queried(
    fed: &mut crate::support::Fed,
    fox: &NodeDir,
    fox_dir: &std::path::Path,
    card: &concord_charter::MemberCard,
    port: u16,
) {
    let rows = [("north", Some(9)), ("east", Some(2))];
    let file = crate::support::write_cases(fed.dir.path(), "foxtrot", &rows);
    concord_node::node::admin::dataset_add(fox, "cases", &file, Some("cases"), Some("*"))
        .await
        .expect("dataset");
    let fox_token = concord_node::node::admin::token_create(fox, "analyst").expect("token");
    fed.nodes.push(concord_node::run::start(fox).await.expect("foxtrot starts"));
    let fox_member = concord_lab::demo::DemoMember {
        id: "foxtrot".into(),
        local_url: format!("http://127.0.0.1:{port}"),
        peer_url: format!("https://127.0.0.1:{}", port + 1),
        flight_sql_url: String::new(),
        analyst_token: fox_token,
        auditor_token: String::new(),
        steward_token: String::new(),
        delegate_token: String::new(),
        operator_token: String::new(),
        log_url: String::new(),
        vkey: card.vkey.clone(),
        dir: fox_dir.to_path_buf(),
    };
    // The sixth member queries every other, and is queried by them.
    let mut asked = members_asked(&fox_member, "SELECT count(*) AS n FROM cases").await;
    asked.sort();
    assert_eq!(asked, ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot"]);
    let asked = members_asked(fed.member("alpha"), "SELECT count(*) AS n FROM foxtrot.cases").await;
    assert_eq!(asked, ["foxtrot"]);
}

/// Echo rotates its keys, adopted at version 3; its old TLS and signing keys are refused.
async fn echo_rotates_its_keys(
    fed: &crate::support::Fed,
    alpha: &concord_node::node::Node,
    ttl: std::time::Duration,
) -> (NodeDir, concord_charter::MemberCard) {
    // Echo rotates its keys: new ones made beside the running node, proposed, adopted.
    let echo_dir = NodeDir::new(&fed.member("echo").dir);
    let old_signer = echo_dir.load_signer(&echo_dir.load_config().expect("config")).expect("key");
    let old_tls = echo_dir.load_tls().expect("tls");
    let new_card = concord_node::store::config::rotate_keys(&echo_dir).expect("new keys");
    assert!(concord_node::store::config::rotate_keys(&echo_dir).is_err(), "one rotation at a time");
    let echo = fed.nodes[4].node.clone();
    let id = echo.propose(vec![Change::RotateKey { card: new_card.clone() }], ttl).await.expect("proposed");
    // Six members: four yes adopt it.
    yes_from(fed, &["alpha", "bravo", "charlie", "echo"], &id).await;
    all_at("every node adopts version 3", fed.nodes.iter().map(|n| n.node.clone()).collect(), 3).await;
    // The old keys are refused: a call with the old TLS key gets no answer, and a proposal
    // signed with the old signing key is refused.
    let alpha_card = alpha.charter().charter.member("alpha").expect("alpha").clone();
    let old_call = concord_node::net::client::peer_call_with(
        &old_tls,
        &alpha_card,
        "GET",
        "/v1/catalog",
        Vec::new(),
        concord_node::net::client::Budget::default(),
    )
    .await;
    assert!(old_call.is_err(), "alpha answered echo's old TLS key: {:?}", old_call.map(|r| r.status));
    let c3 = alpha.charter().charter.clone();
    let stale = Proposal {
        federation: "test".into(),
        base_version: 3,
        base_digest: c3.digest(),
        proposer: "echo".into(),
        expires: now() + 3600,
        changes: vec![Change::MinGroupSize { size: 11 }],
    };
    let e = alpha
        .take_proposal(stale.sign(&old_signer).expect("signs").to_string().as_bytes())
        .await
        .expect_err("old signing key");
    assert!(e.to_string().contains("not signed by echo"), "{e}");
    (echo_dir, new_card)
}

/// Echo's running node took its new keys without a restart, and is served with them.
async fn echo_serves_with_its_new_keys(
    fed: &crate::support::Fed,
    echo_dir: &NodeDir,
    new_card: &concord_charter::MemberCard,
) {
    let echo = &fed.nodes[4].node;
    // Echo's running node took its new keys into use with the version, without a restart,
    // and is served with them.
    assert_eq!(echo.keys().tls.pin, new_card.tls_pin);
    assert_eq!(echo.keys().signer.vkey(), new_card.vkey);
    assert!(!echo_dir.next_keys().exists(), "the pending keys moved into place");
    let asked = members_asked(fed.member("echo"), "SELECT count(*) AS n FROM alpha.cases").await;
    assert_eq!(asked, ["alpha"]);
    let asked = members_asked(fed.member("alpha"), "SELECT count(*) AS n FROM echo.cases").await;
    assert_eq!(asked, ["echo"]);
}

/// Delta is removed at version 4: no remaining member serves its queries.
async fn delta_removed_everywhere(
    fed: &crate::support::Fed,
    alpha: &concord_node::node::Node,
    ttl: std::time::Duration,
) {
    // Delta is removed: every node refuses it, on queries and on witnessing.
    let id = alpha.propose(vec![Change::RemoveMember { id: "delta".into() }], ttl).await.expect("proposed");
    yes_from(fed, &["alpha", "bravo", "charlie", "echo"], &id).await;
    let staying: Vec<_> =
        fed.nodes.iter().filter(|n| n.node.cfg.member != "delta").map(|n| n.node.clone()).collect();
    all_at("every remaining node adopts version 4", staying, 4).await;
    let delta = fed.member("delta");
    for m in ["alpha", "bravo", "charlie", "echo", "foxtrot"] {
        let r = api_query(
            &delta.local_url,
            &delta.analyst_token,
            &format!("SELECT count(*) AS n FROM {m}.cases"),
        )
        .await;
        assert!(r.is_err(), "{m} still serves delta");
    }
}

/// Delta's next checkpoint finds no witness, no query asks it, and every history has 4 versions.
async fn delta_finds_no_witness(fed: &crate::support::Fed, alpha: &concord_node::node::Node) {
    let delta_node = fed.nodes[3].node.clone();
    // Delta's next checkpoint finds no witness.
    delta_node.log.append(b"after removal".to_vec()).await.expect("appends");
    concord_node::node::witness::publish_once(&delta_node).await.expect("runs");
    let (_, note) = delta_node.log.latest_checkpoint().expect("reads").expect("a checkpoint");
    for card in &alpha.charter().charter.members {
        let v = card.witness_verifier().expect("verifier");
        assert!(
            v.verify(&note).ok().flatten().is_none(),
            "{} cosigned a removed member's checkpoint",
            card.id
        );
    }
    let asked = members_asked(fed.member("alpha"), "SELECT count(*) AS n FROM cases").await;
    assert!(!asked.contains(&"delta".to_string()), "{asked:?}");
    // Every act is in every remaining node's log and history.
    for n in fed.nodes.iter().filter(|n| n.node.cfg.member != "delta") {
        assert_eq!(n.node.state.charter_history().expect("history").len(), 4, "{}", n.node.cfg.member);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_members_move_an_endpoint_change_the_witness_quorum_catch_up_let_one_leave_and_bound_witnesses()
{
    let mut fed = crate::support::members_with(&FIVE, |_, _| {}).await;
    let ttl = std::time::Duration::from_secs(3600);
    // Delta is down during the vote.
    let delta = fed.nodes.remove(3);
    delta.stop().await;
    // The tables alpha's analysts may name: delta's are missing, and the list says so.
    let list = fed.nodes[0].node.tables().await.expect("tables");
    assert!(
        list.warnings.iter().any(|w| w.contains("delta's catalog could not be read")),
        "{:?}",
        list.warnings
    );
    assert_eq!(list.warnings.len(), 1, "{:?}", list.warnings);
    let names: Vec<&str> = list.tables.iter().map(|t| t.name.as_str()).collect();
    assert!(names.contains(&"echo.cases") && !names.contains(&"delta.cases"), "{names:?}");
    let charlie = fed.nodes[2].node.clone();
    let new_port = crate::support::free_ports(1);
    let moved = format!("127.0.0.1:{new_port}");
    let id = charlie
        .propose(
            vec![
                Change::ChangeEndpoint { id: "charlie".into(), endpoint: moved.clone() },
                Change::WitnessQuorum { quorum: 4 },
            ],
            ttl,
        )
        .await
        .expect("proposed");
    yes_from(&fed, &["alpha", "bravo", "charlie", "echo"], &id).await;
    all_at("the four running nodes adopt version 2", fed.nodes.iter().map(|n| n.node.clone()).collect(), 2)
        .await;

    // Charlie moves its listener; the others dial the endpoint of version 2.
    let charlie_dir = NodeDir::new(&fed.member("charlie").dir);
    fed.nodes.remove(2).stop().await;
    let mut cfg = charlie_dir.load_config().expect("config");
    cfg.peer_listen = moved.clone();
    cfg.peer_endpoint = moved.clone();
    charlie_dir.save_config(&cfg).expect("saved");
    fed.nodes.insert(2, concord_node::run::start(&charlie_dir).await.expect("charlie restarts"));
    let asked = members_asked(fed.member("alpha"), "SELECT count(*) AS n FROM charlie.cases").await;
    assert_eq!(asked, ["charlie"]);

    // Delta starts again: it pulls version 2, verifies it from version 1, and finds charlie.
    let delta = concord_node::run::start(&NodeDir::new(&fed.member("delta").dir)).await.expect("starts");
    all_at("delta catches up", vec![delta.node.clone()], 2).await;
    fed.nodes.insert(3, delta);
    let asked = members_asked(fed.member("delta"), "SELECT count(*) AS n FROM charlie.cases").await;
    assert_eq!(asked, ["charlie"]);

    // The witness quorum of version 2 is all four other members: with echo down, alpha's new
    // checkpoint is not published; with echo back, it is.
    crate::support::settle(&fed).await;
    let echo = fed.nodes.remove(4);
    echo.stop().await;
    let alpha = fed.nodes[0].node.clone();
    alpha.log.append(b"needs four witnesses".to_vec()).await.expect("appends");
    concord_node::node::witness::publish_once(&alpha).await.expect("runs");
    let size = alpha.log.size().expect("size");
    let published = alpha.log.published_checkpoint().expect("reads").map_or(0, |(s, _)| s);
    assert!(published < size, "published with three of the four witnesses the version asks for");
    fed.nodes
        .insert(4, concord_node::run::start(&NodeDir::new(&fed.member("echo").dir)).await.expect("echo"));
    published_through("alpha's checkpoint published once echo cosigns", &alpha, size).await;

    // Bravo leaves; no one votes by hand.
    let bravo = fed.nodes[1].node.clone();
    bravo.leave(ttl).await.expect("exit signed");
    let staying: Vec<_> =
        fed.nodes.iter().filter(|n| n.node.cfg.member != "bravo").map(|n| n.node.clone()).collect();
    all_at("every other node adopts the version without bravo", staying.clone(), 3).await;
    for n in &staying {
        assert!(n.charter().charter.member("bravo").is_none());
    }
    let b = fed.member("bravo");
    assert!(
        api_query(&b.local_url, &b.analyst_token, "SELECT count(*) AS n FROM alpha.cases").await.is_err()
    );
    // The others' votes reach bravo too: its node records its own exit, and does not start as a
    // member again, saying why.
    all_at("bravo records the version without it", vec![bravo.clone()], 3).await;

    // One witness per log: alpha's log is witnessed by charlie alone (the member after it), and
    // delta refuses to witness it.
    let id = alpha.propose(vec![Change::WitnessesPerLog { count: Some(1) }], ttl).await.expect("proposed");
    yes_from(&fed, &["alpha", "charlie", "delta"], &id).await;
    all_at("every member adopts one witness per log", staying.clone(), 4).await;
    let v4 = alpha.charter();
    assert_eq!((v4.charter.witnesses_of_each_log(), v4.charter.witness_quorum), (1, 1));
    alpha.log.append(b"one witness".to_vec()).await.expect("appends");
    let size = alpha.log.size().expect("size");
    published_through("alpha's checkpoint published with charlie's cosignature", &alpha, size).await;
    let (_, note) = alpha.log.published_checkpoint().expect("reads").expect("published");
    let cosigners: Vec<&str> = v4
        .charter
        .members
        .iter()
        .filter(|m| m.witness_verifier().expect("key").verify(&note).ok().flatten().is_some())
        .map(|m| m.id.as_str())
        .collect();
    assert_eq!(cosigners, ["charlie"]);
    // Delta's audit of alpha's log counts charlie's cosignature, the quorum of one.
    let report =
        concord_node::node::audit::audit(&delta_node(&fed), &["alpha".into()]).await.expect("audits");
    let alpha_report = report.members.iter().find(|m| m.member == "alpha").expect("alpha audited");
    assert_eq!(alpha_report.cosigners, ["charlie"], "{alpha_report:?}");
    // (The raw test entries appended above are named as strange; the quorum is met.)
    assert!(!alpha_report.problems.iter().any(|p| p.contains("quorum")), "{alpha_report:?}");
    let delta = delta_node(&fed);
    let mut body = b"old 0\n\n".to_vec();
    body.extend_from_slice(&note.to_bytes());
    let refused = concord_node::node::witness::add_checkpoint(&delta, &body).await.expect("answers");
    assert_eq!(refused.status, 404, "{}", refused.body);
    assert!(refused.body.contains("does not witness"), "{}", refused.body);
    let dir = fed.stop().await;
    let nd = NodeDir::new(dir.path().join("bravo").join("node"));
    let e = concord_node::node::Node::open(&nd).await.err().expect("bravo is out");
    assert!(e.to_string().contains("no longer takes part"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_down_while_its_keys_were_rotated_catches_up_with_the_new_keys() {
    let mut fed = three_members().await;
    let charlie_dir = NodeDir::new(&fed.member("charlie").dir);
    let new_card = concord_node::store::config::rotate_keys(&charlie_dir).expect("new keys");
    fed.nodes.remove(2).stop().await;
    let alpha = fed.nodes[0].node.clone();
    let id = alpha
        .propose(vec![Change::RotateKey { card: new_card.clone() }], std::time::Duration::from_secs(3600))
        .await
        .expect("proposed");
    yes_from(&fed, &["alpha", "bravo"], &id).await;
    all_at("alpha and bravo adopt version 2", fed.nodes.iter().map(|n| n.node.clone()).collect(), 2).await;
    // Charlie starts with the keys of version 1, which the others refuse now; it pulls with the
    // pending keys, adopts version 2 and takes them into use.
    let charlie = concord_node::run::start(&charlie_dir).await.expect("starts");
    all_at("charlie catches up", vec![charlie.node.clone()], 2).await;
    // Version 2 is in force as soon as it is stored; the keys it lists are taken into use
    // right after (their files moved and synced).
    crate::support::eventually("charlie uses the keys version 2 lists", || {
        let (node, pin) = (charlie.node.clone(), new_card.tls_pin.clone());
        async move { node.keys().tls.pin == pin }
    })
    .await;
    fed.nodes.push(charlie);
    let asked = members_asked(fed.member("charlie"), "SELECT count(*) AS n FROM alpha.cases").await;
    assert_eq!(asked, ["alpha"]);
    fed.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cross_borders_baseline_binds_every_dataset_and_every_grant() {
    let fed = three_members().await;
    let file = fed.dir.path().join("important.toml");
    std::fs::write(&file, crate::policy::IMPORTANT).expect("policy");
    concord_node::node::admin::policy_set(&NodeDir::new(&fed.member("bravo").dir), "cases", &file)
        .expect("policy set");
    let alpha = fed.nodes[0].node.clone();
    let ceiling = concord_charter::CrossBorders::General;
    let id = alpha
        .propose(vec![Change::CrossBorders { ceiling }], std::time::Duration::from_secs(3600))
        .await
        .expect("proposed");
    yes_from(&fed, &["alpha", "bravo"], &id).await;
    all_at("every node adopts version 2", fed.nodes.iter().map(|n| n.node.clone()).collect(), 2).await;
    assert_eq!(fed.nodes[1].node.charter().charter.cross_borders, ceiling);
    // Bravo's important dataset no longer crosses, and its steward cannot sign a grant for it.
    let a = fed.member("alpha");
    let e = api_query(&a.local_url, &a.analyst_token, "SELECT count(*) AS n FROM bravo.cases")
        .await
        .expect_err("important stays home");
    assert!(e.to_string().contains("up to general"), "{e}");
    let ask = serde_json::json!({
        "dataset": "bravo.cases", "actions": ["aggregate"], "purpose": "analysis",
        "legal_basis": "public health act", "days": 30
    });
    let r = concord_node::net::client::local_call(
        &a.local_url,
        "POST",
        "/v1/access/requests",
        Some(&a.analyst_token),
        Some(&ask),
    )
    .await
    .expect("sent");
    assert_eq!(r.status, 200, "{:?}", r.error_parts());
    let filed: serde_json::Value = serde_json::from_slice(&r.body).expect("json");
    let rid = filed["id"].as_str().expect("id");
    let (status, answer) = crate::policy::steward(
        &fed,
        "bravo",
        "POST",
        &format!("/v1/access/requests/{rid}/approve"),
        serde_json::json!({"days": 7}),
    )
    .await;
    assert_eq!(status, 409, "{answer}");
    assert!(
        answer.to_string().contains("no grant can release") && answer.to_string().contains("up to general"),
        "{answer}"
    );
    // General data still crosses.
    let asked = members_asked(a, "SELECT count(*) AS n FROM charlie.cases").await;
    assert_eq!(asked, ["charlie"]);
    fed.stop().await;
}

#[test]
fn a_key_rotation_interrupted_halfway_is_finished_and_a_foreign_one_is_not_taken() {
    let dir = tempfile::tempdir().expect("tmp");
    let init = |name: &str| {
        let root = dir.path().join(name);
        concord_node::store::config::init(
            &root,
            &concord_node::store::config::InitOptions {
                member: "alpha".into(),
                federation: "test".into(),
                name: None,
                jurisdiction: None,
                peer_listen: "127.0.0.1:7101".into(),
                local_listen: "127.0.0.1:7100".into(),
                flight_listen: None,
                advertise: None,
            },
        )
        .expect("init");
        NodeDir::new(root)
    };
    let nd = init("alpha");
    let card = concord_node::store::config::rotate_keys(&nd).expect("new keys");
    // Another folder's pending keys are not the ones the card lists.
    let other = init("other");
    let other_card = concord_node::store::config::rotate_keys(&other).expect("new keys");
    assert!(!concord_node::store::config::rotation_listed(&nd, &other_card).expect("reads"));
    // A crash after two of the four files moved: still judged listed, and finished.
    for name in ["member.key", "tls.key"] {
        std::fs::rename(nd.next_keys().join(name), nd.root.join("keys").join(name)).expect("moved");
    }
    assert!(concord_node::store::config::rotation_listed(&nd, &card).expect("reads"));
    concord_node::store::config::finish_rotation(&nd, &card).expect("finished");
    assert!(!nd.next_keys().exists() && !nd.next_card().exists());
    let cfg = nd.load_config().expect("config");
    assert_eq!(nd.load_signer(&cfg).expect("key").vkey(), card.vkey);
    assert_eq!(nd.load_witness(&cfg).expect("key").verifier().to_vkey(), card.witness_vkey);
    assert_eq!(nd.load_tls().expect("tls").pin, card.tls_pin);
    assert_eq!(nd.load_card().expect("card"), card);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_schema_added_by_a_version_is_used_at_once() {
    let fed = three_members().await;
    let visits = concord_charter::SharedSchema {
        name: "visits".into(),
        version: 1,
        columns: vec![
            concord_charter::SchemaColumn {
                name: "region".into(),
                ty: concord_charter::ColumnType::Utf8,
                personal: false,
            },
            concord_charter::SchemaColumn {
                name: "n".into(),
                ty: concord_charter::ColumnType::Int64,
                personal: false,
            },
        ],
        privacy_unit: None,
    };
    let add = |m: &str, rows: &str| {
        let path = fed.dir.path().join(format!("{m}-visits.csv"));
        std::fs::write(&path, format!("region,n\n{rows}")).expect("csv");
        let nd = NodeDir::new(&fed.member(m).dir);
        async move {
            concord_node::node::admin::dataset_add(&nd, "visits", &path, Some("visits"), Some("*")).await
        }
    };
    let e = add("alpha", "north,3\n").await.expect_err("no such schema yet");
    assert!(e.to_string().contains("visits"), "{e}");
    let alpha = fed.nodes[0].node.clone();
    let id = alpha
        .propose(vec![Change::SetSchema { schema: visits }], std::time::Duration::from_secs(3600))
        .await
        .expect("proposed");
    yes_from(&fed, &["alpha", "bravo"], &id).await;
    all_at("every node adopts version 2", fed.nodes.iter().map(|n| n.node.clone()).collect(), 2).await;
    add("alpha", "north,3\nsouth,4\n").await.expect("conforms");
    add("bravo", "north,10\n").await.expect("conforms");
    let c = fed.member("charlie");
    let r = api_query(&c.local_url, &c.analyst_token, "SELECT sum(n) AS n FROM visits").await.expect("runs");
    let mut asked: Vec<String> = r.provenance.iter().map(|p| p.member.clone()).collect();
    asked.sort();
    assert_eq!(asked, ["alpha", "bravo"]);
    let n = r.batches[0]
        .column(0)
        .as_any()
        .downcast_ref::<datafusion::arrow::array::Int64Array>()
        .expect("int64")
        .value(0);
    assert_eq!(n, 17);
    fed.stop().await;
}
