//! Manifests (`patronus_proto::manifest`, as patronusctl reads and writes
//! them) against the example in `data/production.yaml`.

use patronus_controlplane::manifest::*;
use patronus_proto::v1 as pb;

const EXAMPLE: &str = include_str!("data/production.yaml");

#[test]
fn parses_several_documents_and_round_trips() {
    let docs = parse(EXAMPLE).unwrap();
    assert_eq!(docs.len(), 3);
    let Document::Site(s) = &docs[0] else {
        panic!()
    };
    assert_eq!(site_doc(&site(s)), *s);
    let Document::Peer(p) = &docs[1] else {
        panic!()
    };
    let api = peer(p);
    let bfd = api.spec.as_ref().unwrap().bfd.unwrap();
    assert_eq!(
        (
            bfd.desired_min_tx_ms,
            bfd.required_min_rx_ms,
            bfd.detect_multiplier
        ),
        (100, 0, 5),
        "an unset timer is 0 in the API: the default"
    );
    assert_eq!(peer_doc(&api), *p);
    let Document::Policy(p) = &docs[2] else {
        panic!()
    };
    let api = policy(p).unwrap();
    assert_eq!(
        api.spec.as_ref().unwrap().rules[0].action,
        pb::RuleAction::Route as i32
    );
    assert_eq!(policy_doc(&api), *p);
}

#[test]
fn errors_name_the_field() {
    let bad = EXAMPLE.replace("strategy: lowest-latency", "strategy: fastest");
    let Document::Policy(p) = &parse(&bad).unwrap()[2] else {
        panic!()
    };
    let e = policy(p).unwrap_err();
    assert_eq!(e.field, "spec.rules[0].pathSelection.strategy");
    let e = parse(&EXAMPLE.replace("region:", "regoin:")).unwrap_err();
    assert!(e.to_string().contains("regoin"), "{e}");
    let e = parse(&EXAMPLE.replace("patronus.io/v1\nkind: Site", "v2\nkind: Site")).unwrap_err();
    assert!(e.to_string().contains("apiVersion"), "{e}");
}
