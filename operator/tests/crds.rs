//! The CRDs: what the chart ships is what the code generates, the examples
//! validate against the generated schemas (and are documents patronusctl
//! applies too), and invalid resources are refused by the schema.

use std::path::{Path, PathBuf};

use patronus_operator::crds;
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn the_chart_ships_the_generated_crds() {
    let dir = root().join("helm/patronus-operator/crds");
    for (file, generated) in crds() {
        let committed = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
        assert!(
            committed == generated,
            "{file} differs from the generated CRD: run `cargo run -p patronus-operator --bin crdgen`"
        );
    }
    let shipped = std::fs::read_dir(&dir).unwrap().count();
    assert_eq!(shipped, crds().len(), "no stale CRDs in {}", dir.display());
}

/// The openAPIV3Schema of a kind's CRD.
fn schema(kind: &str) -> Value {
    let (_, yaml) = crds()
        .into_iter()
        .find(|(file, _)| file.starts_with(&format!("{}.", plural(kind))))
        .unwrap_or_else(|| panic!("no CRD for {kind}"));
    let crd: Value = serde_yaml_ng::from_str(&yaml).unwrap();
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

fn plural(kind: &str) -> String {
    match kind {
        "Policy" => "policies".into(),
        k => format!("{}s", k.to_lowercase()),
    }
}

/// The schema's complaints about a document (empty: valid), as the API
/// server makes them on create: the OpenAPI schema, the CEL rules
/// (`x-kubernetes-validations`), and strict field validation (kubectl's
/// default), which refuses fields the schema does not name instead of
/// pruning them.
fn complaints(doc: &Value) -> Vec<String> {
    let kind = doc["kind"].as_str().expect("a kind");
    let schema = schema(kind);
    let validator = jsonschema::validator_for(&schema).expect("the schema compiles");
    let mut found: Vec<String> = validator
        .iter_errors(doc)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    // The API server knows these of every object.
    let mut body = doc.clone();
    for implicit in ["apiVersion", "kind", "metadata"] {
        body.as_object_mut().map(|o| o.remove(implicit));
    }
    check_fields(&body, &schema, "", &mut found);
    found
}

/// The CEL rules of `schema` that `doc` breaks, and the fields of `doc`
/// that `schema` does not name where it names its fields.
fn check_fields(doc: &Value, schema: &Value, at: &str, found: &mut Vec<String>) {
    for rule in schema["x-kubernetes-validations"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let text = rule["rule"].as_str().expect("a rule");
        if text.contains("oldSelf") {
            continue; // a transition rule: only on update
        }
        match cel_holds(text, doc) {
            Ok(true) => {}
            Ok(false) => {
                let message = rule["message"].as_str().unwrap_or(text);
                found.push(format!("{message} at {at}"));
            }
            // As the API server: a rule that cannot be evaluated refuses.
            Err(e) => found.push(format!("{text}: {e} at {at}")),
        }
    }
    match doc {
        Value::Object(fields) => {
            let Some(known) = schema["properties"].as_object() else {
                return;
            };
            for (name, value) in fields {
                match known.get(name) {
                    Some(sub) => check_fields(value, sub, &format!("{at}/{name}"), found),
                    None => found.push(format!("unknown field {name:?} at {at}")),
                }
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                check_fields(item, &schema["items"], &format!("{at}/{i}"), found);
            }
        }
        _ => {}
    }
}

/// A JSON value as the API server gives it to CEL: `type: integer` fields
/// are `int`, whatever their sign (serde_json keeps positive ones as u64).
struct AsCel<'a>(&'a Value);

impl serde::Serialize for AsCel<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        match self.0 {
            Value::Number(n) => match n.as_i64() {
                Some(i) => s.serialize_i64(i),
                None => s.serialize_f64(n.as_f64().unwrap_or(f64::NAN)),
            },
            Value::Array(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(&AsCel(item))?;
                }
                seq.end()
            }
            Value::Object(fields) => {
                let mut map = s.serialize_map(Some(fields.len()))?;
                for (name, value) in fields {
                    map.serialize_entry(name, &AsCel(value))?;
                }
                map.end()
            }
            other => other.serialize(s),
        }
    }
}

/// Whether CEL rule `rule` holds with `self` bound to `value`, or why it
/// cannot be evaluated.
fn cel_holds(rule: &str, value: &Value) -> Result<bool, String> {
    use cel_interpreter::{Context, Program, Value as Cel};
    let program = Program::compile(rule).unwrap_or_else(|e| panic!("{rule}: {e}"));
    let mut context = Context::default();
    let cel = cel_interpreter::to_value(AsCel(value)).expect("JSON is a CEL value");
    context.add_variable_from_value("self", cel);
    match program.execute(&context) {
        Ok(Cel::Bool(holds)) => Ok(holds),
        other => Err(format!("{other:?}")),
    }
}

fn examples() -> Vec<(PathBuf, Value)> {
    let mut docs = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for de in serde_yaml_ng::Deserializer::from_str(&text) {
            let doc: Value = serde::Deserialize::deserialize(de).unwrap();
            docs.push((file.clone(), doc));
        }
    }
    docs
}

#[test]
fn the_examples_validate_and_deserialize() {
    let docs = examples();
    let kinds: Vec<&str> = docs
        .iter()
        .map(|(_, d)| d["kind"].as_str().unwrap())
        .collect();
    for kind in ["Site", "Peer", "Policy"] {
        assert!(kinds.contains(&kind), "an example {kind}");
    }
    for (file, doc) in &docs {
        assert_eq!(complaints(doc), Vec::<String>::new(), "{}", file.display());
        let typed = match doc["kind"].as_str().unwrap() {
            "Site" => serde_json::from_value::<patronus_operator::crd::Site>(doc.clone()).map(drop),
            "Peer" => serde_json::from_value::<patronus_operator::crd::Peer>(doc.clone()).map(drop),
            _ => serde_json::from_value::<patronus_operator::crd::Policy>(doc.clone()).map(drop),
        };
        assert!(typed.is_ok(), "{}: {typed:?}", file.display());
        // The same document is one patronusctl applies.
        let text = serde_yaml_ng::to_string(doc).unwrap();
        patronus_proto::manifest::parse(&text)
            .unwrap_or_else(|e| panic!("{}: patronusctl refuses it: {e}", file.display()));
    }
}

fn example(kind: &str) -> Value {
    examples()
        .into_iter()
        .map(|(_, d)| d)
        .find(|d| d["kind"] == kind)
        .unwrap()
}

#[test]
fn invalid_resources_are_refused_by_the_schema() {
    type Edit = fn(&mut Value);
    let cases: &[(&str, Edit, &str)] = &[
        (
            "Site",
            |d| d["spec"]["tunnelEndpoint"]["port"] = 0.into(),
            "/spec/tunnelEndpoint/port",
        ),
        (
            "Site",
            |d| d["spec"]["tunnelEndpoint"]["port"] = 70000.into(),
            "/spec/tunnelEndpoint/port",
        ),
        (
            "Site",
            |d| drop(d["spec"].as_object_mut().unwrap().remove("siteId")),
            "/spec",
        ),
        (
            "Site",
            |d| d["spec"]["siteId"] = "US_East".into(),
            "/spec/siteId",
        ),
        (
            "Site",
            |d| d["spec"]["peers"][0]["siteId"] = "".into(),
            "/spec/peers/0/siteId",
        ),
        (
            "Site",
            |d| d["spec"]["uplinks"][1]["rateMbps"] = 0.into(),
            "/spec/uplinks/1/rateMbps",
        ),
        (
            "Site",
            |d| d["spec"]["uplinks"][1]["overheadBytes"] = 300.into(),
            "/spec/uplinks/1/overheadBytes",
        ),
        (
            "Site",
            |d| {
                drop(
                    d["spec"]["uplinks"][0]
                        .as_object_mut()
                        .unwrap()
                        .remove("name"),
                )
            },
            "/spec/uplinks/0",
        ),
        (
            "Site",
            |d| d["spec"]["qosClasses"]["RealTime"]["weight"] = 5.into(),
            "/spec/qosClasses/RealTime",
        ),
        (
            "Site",
            |d| d["spec"]["qosClasses"]["Bulk"]["limitPercent"] = 0.into(),
            "/spec/qosClasses/Bulk/limitPercent",
        ),
        (
            "Site",
            |d| d["spec"]["qosClasses"]["Bulk"]["dscp"] = 64.into(),
            "/spec/qosClasses/Bulk/dscp",
        ),
        (
            "Site",
            |d| d["spec"]["qosClasses"]["Video"] = serde_json::json!({"weight": 5}),
            "/spec/qosClasses",
        ),
        (
            "Peer",
            |d| d["spec"]["endpoint"]["port"] = 0.into(),
            "/spec/endpoint/port",
        ),
        (
            "Peer",
            |d| drop(d["spec"].as_object_mut().unwrap().remove("siteId")),
            "/spec",
        ),
        (
            "Peer",
            |d| d["spec"]["wireguard"]["publicKey"] = "not-a-key".into(),
            "/spec/wireguard/publicKey",
        ),
        (
            "Policy",
            |d| d["spec"]["rules"][0]["pathSelection"]["strategy"] = "fastest".into(),
            "/spec/rules/0/pathSelection/strategy",
        ),
        (
            "Policy",
            |d| d["spec"]["rules"][0]["action"] = "block".into(),
            "/spec/rules/0/action",
        ),
        (
            "Policy",
            |d| d["spec"]["rules"][0]["conditions"][0]["type"] = "country".into(),
            "/spec/rules/0/conditions/0/type",
        ),
        (
            "Policy",
            |d| {
                d["spec"]["rules"][0]["pathSelection"]["thresholds"]["maxPacketLossPct"] =
                    150.into()
            },
            "/spec/rules/0/pathSelection/thresholds/maxPacketLossPct",
        ),
        (
            "Policy",
            |d| d["spec"]["rules"] = Value::Array(Vec::new()),
            "/spec/rules",
        ),
        (
            "Peer",
            |d| d["spec"]["bfd"]["desiredMinTxMs"] = 5.into(),
            "/spec/bfd/desiredMinTxMs",
        ),
        (
            "Peer",
            |d| d["spec"]["bfd"]["detectMultiplier"] = 1.into(),
            "/spec/bfd/detectMultiplier",
        ),
    ];
    for (kind, edit, at) in cases {
        let mut doc = example(kind);
        edit(&mut doc);
        let found = complaints(&doc);
        assert!(
            found.iter().any(|c| c.ends_with(&format!(" at {at}"))),
            "{kind} edited at {at}: the schema said {found:?}"
        );
    }
}

/// The rules between fields, evaluated as the API server does: each
/// refuses what it says it does, where it says it does.
#[test]
fn cel_rules_refuse_what_they_promise() {
    type Edit = fn(&mut Value);
    let cases: &[(&str, Edit, &str)] = &[
        (
            "Site",
            |d| d["spec"]["peers"][0]["siteId"] = d["spec"]["siteId"].clone(),
            "a site does not peer with itself at /spec",
        ),
        (
            "Site",
            |d| d["spec"]["uplinks"][1]["name"] = "mpls".into(),
            "each uplink is listed once at /spec/uplinks",
        ),
        (
            "Site",
            |d| d["spec"]["qosClasses"]["Bulk"]["minPercent"] = 60.into(),
            "minPercent is above limitPercent at /spec/qosClasses/Bulk",
        ),
        (
            "Site",
            |d| {
                let classes = &mut d["spec"]["qosClasses"];
                classes["RealTime"]["limitPercent"] = 40.into();
                classes["Streaming"] = serde_json::json!({"minPercent": 51});
            },
            "RealTime's limitPercent and the minPercents add up to over 100% at /spec/qosClasses",
        ),
        (
            "Policy",
            |d| {
                let rule = &mut d["spec"]["rules"][0];
                rule["action"] = "deny".into();
                drop(rule.as_object_mut().unwrap().remove("pathSelection"));
                rule["qosClass"] = "Bulk".into();
            },
            "deny rules drop their flows and have no qosClass at /spec/rules/0",
        ),
        (
            "Policy",
            |d| {
                drop(
                    d["spec"]["rules"][0]
                        .as_object_mut()
                        .unwrap()
                        .remove("pathSelection"),
                )
            },
            "route rules need a pathSelection; allow and deny rules have none at /spec/rules/0",
        ),
        (
            "Policy",
            |d| {
                let rules = d["spec"]["rules"].as_array_mut().unwrap();
                rules.push(rules[0].clone());
            },
            "rule priorities are unique within a policy at /spec",
        ),
        (
            "Peer",
            |d| drop(d["spec"].as_object_mut().unwrap().remove("tunnelAddress")),
            "bfdEnabled needs tunnelAddress (the peer's address inside the tunnel, which BFD talks to) at /spec",
        ),
        (
            "Peer",
            |d| d["spec"]["bfdEnabled"] = false.into(),
            "tunnelAddress and bfd are only for BFD: set bfdEnabled at /spec",
        ),
    ];
    for (kind, edit, complaint) in cases {
        let mut doc = example(kind);
        assert_eq!(complaints(&doc), Vec::<String>::new(), "the example {kind}");
        edit(&mut doc);
        let found = complaints(&doc);
        assert!(
            found.iter().any(|c| c == complaint),
            "{kind}: expected {complaint:?}, the schema said {found:?}"
        );
    }
    // Right at the bound is fine.
    let mut site = example("Site");
    site["spec"]["qosClasses"]["RealTime"]["limitPercent"] = 40.into();
    site["spec"]["qosClasses"]["Streaming"] = serde_json::json!({"minPercent": 50});
    assert_eq!(complaints(&site), Vec::<String>::new());
}

/// Rules between fields are CEL, evaluated by the API server: they must be in
/// the schema where they apply.
#[test]
fn cross_field_rules_are_in_the_schema() {
    fn rules(schema: &Value) -> Vec<String> {
        schema["x-kubernetes-validations"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|r| r["rule"].as_str().unwrap().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
    let site = schema("Site");
    assert!(rules(&site["properties"]["spec"])
        .iter()
        .any(|r| r.contains("p.siteId != self.siteId")));
    assert_eq!(
        rules(&site["properties"]["spec"]["properties"]["siteId"]),
        ["self == oldSelf"]
    );
    let policy = schema("Policy");
    let spec = &policy["properties"]["spec"];
    assert!(rules(spec).iter().any(|r| r.contains("exists_one")));
    assert!(rules(&spec["properties"]["rules"]["items"])
        .iter()
        .any(|r| r.contains("has(self.pathSelection)")));
}

#[test]
fn printer_columns_and_short_names() {
    for (file, yaml) in crds() {
        let crd: Value = serde_yaml_ng::from_str(&yaml).unwrap();
        let version = &crd["spec"]["versions"][0];
        assert_eq!(
            version["subresources"]["status"],
            serde_json::json!({}),
            "{file}"
        );
        assert!(
            crd["spec"]["names"]["shortNames"]
                .as_array()
                .is_some_and(|s| !s.is_empty()),
            "{file}"
        );
        assert_eq!(crd["spec"]["scope"], "Namespaced", "{file}");
        let columns: Vec<&str> = version["additionalPrinterColumns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        let expected: &[&str] = match Path::new(file).file_stem().unwrap().to_str().unwrap() {
            "sites.patronus.io" => &["Site-ID", "Region", "Phase", "Tunnels-Up", "Age"],
            "peers.patronus.io" => &["Site", "Connected", "Latency-ms", "Loss-%", "Age"],
            _ => &["Sites", "Age"],
        };
        assert_eq!(columns, expected, "{file}");
    }
}
