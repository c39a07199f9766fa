use concord_log::NoteSigner;
use concord_log::checkpoint::CosignatureSigner;

use super::*;

pub(crate) fn card(fed: &str, id: &str, pin_byte: char) -> (MemberCard, NoteSigner) {
    let signer = NoteSigner::generate(&format!("{fed}/{id}")).expect("key");
    let witness = CosignatureSigner::generate(&format!("{fed}/{id}/witness")).expect("key");
    let card = MemberCard {
        id: id.into(),
        name: format!("Member {id}"),
        jurisdiction: "XX".into(),
        vkey: signer.vkey(),
        witness_vkey: witness.verifier().to_vkey(),
        tls_pin: format!("sha256/{}=", pin_byte.to_string().repeat(43)),
        peer_endpoint: "127.0.0.1:7000".into(),
    };
    (card, signer)
}

fn schema() -> SharedSchema {
    SharedSchema {
        name: "health_cases".into(),
        version: 1,
        columns: vec![
            SchemaColumn { name: "case_id".into(), ty: ColumnType::Int64, personal: true },
            SchemaColumn { name: "region".into(), ty: ColumnType::Utf8, personal: false },
        ],
        privacy_unit: None,
    }
}

#[test]
fn genesis_needs_every_founder_and_round_trips() {
    let (a, ka) = card("fed", "alpha", 'A');
    let (b, kb) = card("fed", "bravo", 'B');
    let (c, kc) = card("fed", "charlie", 'C');
    // Order of cards does not change the bytes.
    let one = Charter::genesis("fed", vec![c.clone(), a.clone(), b.clone()], vec![schema()]).expect("valid");
    let two = Charter::genesis("fed", vec![a, b, c], vec![schema()]).expect("valid");
    assert_eq!(one.to_text(), two.to_text());
    assert_eq!(one.threshold, 2);
    assert_eq!(one.witness_quorum, 2, "a majority of each log's two witnesses");
    assert_eq!(Charter::from_text(&one.to_text()).expect("parses"), one);

    let mut sc = SignedCharter::unsigned(one).expect("note");
    let reparsed = SignedCharter::parse(&sc.to_bytes()).expect("unsigned file parses");
    assert!(
        matches!(reparsed.verify_genesis(), Err(CharterError::MissingSignatures { missing, .. }) if missing.len() == 3)
    );
    sc.note.sign(&ka);
    sc.note.sign(&kc);
    let partly = SignedCharter::parse(&sc.to_bytes()).expect("parses");
    assert!(
        matches!(partly.verify_genesis(), Err(CharterError::MissingSignatures { missing, .. }) if missing == ["bravo"])
    );
    sc.note.sign(&kb);
    SignedCharter::parse(&sc.to_bytes()).expect("parses").verify_genesis().expect("all founders signed");

    // An outsider's signature does not count, a tampered text fails.
    let tampered = String::from_utf8(sc.to_bytes()).expect("utf8").replace("Member bravo", "Member brav0");
    assert!(SignedCharter::parse(tampered.as_bytes()).expect("parses").verify_genesis().is_err());
}

#[test]
fn non_canonical_and_malformed_texts_are_refused() {
    let (a, _) = card("fed", "alpha", 'A');
    let c = Charter::genesis("fed", vec![a.clone()], vec![]).expect("valid");
    let text = c.to_text();
    assert!(Charter::from_text(&text.replace("member alpha", "member  alpha")).is_err());
    assert!(matches!(
        Charter::from_text(&format!("{text}extra line\n")),
        Err(CharterError::Malformed { .. })
    ));
    assert!(Charter::from_text("concord/charter/v2\n").is_err());
    let mut dup = a.clone();
    dup.tls_pin = "sha256/Z".into();
    assert!(Charter::genesis("fed", vec![dup], vec![]).is_err(), "bad pin");
    assert!(Charter::genesis("Fed Name", vec![a.clone()], vec![]).is_err(), "bad federation name");
    assert!(Charter::genesis("fed", vec![a.clone(), a], vec![]).is_err(), "duplicate member");
    assert!(
        check_member_id("a").is_err()
            && check_member_id("Alpha").is_err()
            && check_member_id("alpha-2").is_ok()
    );
}

#[test]
fn successor_needs_the_threshold_of_the_base() {
    let (a, ka) = card("fed", "alpha", 'A');
    let (b, kb) = card("fed", "bravo", 'B');
    let (c, _) = card("fed", "charlie", 'C');
    let base = Charter::genesis("fed", vec![a, b, c], vec![]).expect("valid");
    let mut next = base.clone();
    next.version = 2;
    next.previous = Some(base.digest());
    next.schemas.push(schema());
    let mut sc = SignedCharter::unsigned(next).expect("note");
    sc.note.sign(&ka);
    assert!(matches!(sc.verify_successor(&base), Err(CharterError::NotSuccessor { .. })), "1 of 3 < 2");
    sc.note.sign(&kb);
    sc.verify_successor(&base).expect("2 of 3 reach the threshold");
}

#[test]
fn a_privacy_unit_and_public_access_notes_are_written_only_when_set() {
    let (a, _) = card("fed", "alpha", 'A');
    let plain = Charter::genesis("fed", vec![a.clone()], vec![schema()]).expect("valid");
    let text = plain.to_text();
    assert!(!text.contains("privacy-unit") && !text.contains("access-notes"), "{text}");
    let mut s = schema();
    s.privacy_unit = Some("case_id".into());
    assert!(s.is_personal());
    assert_eq!(s.personal_columns(), ["case_id"]);
    let mut c = Charter::genesis("fed", vec![a], vec![s.clone()]).expect("valid");
    c.access_notes = AccessNotes::Public;
    let text = c.to_text();
    assert!(
        text.contains("\n  privacy-unit case_id\n") && text.contains("\naccess-notes public\n"),
        "{text}"
    );
    assert_eq!(Charter::from_text(&text).expect("parses"), c);
    // A unit that is not a column is refused.
    s.privacy_unit = Some("person".into());
    assert!(s.validate().is_err());
    // The setting changes by a proposal like any other.
    let next =
        governance::apply(&plain, &[governance::Change::AccessNotes { visibility: AccessNotes::Public }])
            .expect("applies");
    assert_eq!(next.access_notes, AccessNotes::Public);
    let json = serde_json::to_string(&governance::Change::AccessNotes { visibility: AccessNotes::Public })
        .expect("json");
    assert!(json.contains("\"access-notes\"") && json.contains("\"public\""), "{json}");
}
