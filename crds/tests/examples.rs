//! The examples a new user applies, and the invalid ones each validation rule must refuse,
//! checked against the embedded store's admission (no server needed). The same files are applied
//! to the real apiserver by tests/tests/k8s_api.rs.

use std::path::PathBuf;

use recast_crds::manifest::parse_documents;
use recast_crds::validate::admit;
use recast_tests::{InvalidExample, yaml_files};
use serde_json::Value;

fn repo_dir(rel: &str) -> PathBuf {
    recast_tests::repo_root().join(rel)
}

#[test]
fn every_example_is_admitted() {
    let mut admitted = 0;
    for path in yaml_files("examples") {
        let text = std::fs::read_to_string(&path).unwrap();
        for doc in parse_documents(&text).unwrap() {
            if doc.value["apiVersion"] != "recast.dev/v1alpha1" {
                continue; // the Secret for BMC credentials
            }
            if let Err(e) = admit(&doc.value, None) {
                panic!("{} document {}: {e}", path.display(), doc.index);
            }
            admitted += 1;
        }
    }
    // Five endpoints, a golden image, a policy and a wave.
    assert_eq!(admitted, 8);
}

#[test]
fn every_invalid_example_is_refused_with_its_message() {
    let examples = InvalidExample::all();
    assert!(
        examples.len() >= 50,
        "expected one file per rule, found {}",
        examples.len()
    );
    for ex in examples {
        let docs: Vec<Value> = ex
            .documents
            .iter()
            .flat_map(|d| parse_documents(d).unwrap())
            .map(|d| d.value)
            .collect();
        let result = match docs.as_slice() {
            [only] => admit(only, None),
            [original, update] => {
                admit(original, None).unwrap_or_else(|e| {
                    panic!(
                        "{}: the original document must be valid: {e}",
                        ex.path.display()
                    )
                });
                admit(update, Some(original))
            }
            other => panic!(
                "{}: expected 1 or 2 documents, got {}",
                ex.path.display(),
                other.len()
            ),
        };
        let expect = ex.embedded_expectation();
        match result {
            Ok(_) => panic!("{} was admitted; expected: {expect}", ex.path.display()),
            Err(e) => assert!(
                e.to_string().contains(expect),
                "{}: expected the error to contain {expect:?}, got: {e}",
                ex.path.display(),
            ),
        }
    }
}

/// Collects every x-kubernetes-validations message in a schema.
fn rule_messages(schema: &Value, out: &mut Vec<String>) {
    match schema {
        Value::Object(map) => {
            if let Some(Value::Array(rules)) = map.get("x-kubernetes-validations") {
                for r in rules {
                    if let Some(m) = r.get("message").and_then(Value::as_str) {
                        out.push(m.to_string());
                    }
                }
            }
            map.values().for_each(|v| rule_messages(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| rule_messages(v, out)),
        _ => {}
    }
}

#[test]
fn every_validation_rule_has_an_invalid_example() {
    let expectations: Vec<String> = InvalidExample::all()
        .into_iter()
        .filter_map(|ex| ex.expect)
        .collect();
    let mut messages = Vec::new();
    for crd in recast_crds::all_crds() {
        rule_messages(&serde_json::to_value(&crd).unwrap(), &mut messages);
    }
    assert!(messages.len() > 40, "found only {} rules", messages.len());
    let uncovered: Vec<_> = messages
        .iter()
        .filter(|m| !expectations.iter().any(|e| m.contains(e.as_str())))
        .collect();
    assert!(
        uncovered.is_empty(),
        "rules without an example in examples/invalid: {uncovered:#?}"
    );
}

#[test]
fn committed_crd_yaml_matches_the_types() {
    for crd in recast_crds::all_crds() {
        let path = repo_dir("crds/yaml").join(recast_crds::crd_file_name(&crd));
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == recast_crds::crd_yaml(&crd).unwrap(),
            "{} is stale: run `make crds` and commit the result",
            path.display()
        );
    }
}
