//! The validating admission webhook for Endpoints (Kubernetes backend): a MAC address belongs
//! to one Endpoint, and a computer name to one Endpoint of a namespace. A ValidatingAdmissionPolicy sees only the object under review, not the other
//! Endpoints, so this check is a webhook the operator serves over TLS; the chart registers it
//! with `failurePolicy: Fail`, so an Endpoint that could not be checked is not admitted.
//!
//! Two creates racing through two replicas can both pass (each lists before the other is
//! stored); that, and any object written while the webhook was not registered, is caught after
//! the fact: an ambiguous MAC boots nothing and is never armed (store::arming::Known::Ambiguous,
//! Controller::execute).

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::routing::post;
use recast_crds::Endpoint;
use serde_json::{Value, json};

use crate::store::Backend;
use crate::store::arming::mac_conflicts;

/// Where the apiserver sends Endpoint admission reviews.
pub const PATH: &str = "/validate/endpoints";

fn macs_of(obj: &Value) -> Vec<String> {
    obj.pointer("/spec/identity/macAddresses")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// The decision on one AdmissionRequest, given every other Endpoint the operator manages:
/// Ok to admit, or the message the user sees. Only MACs the request adds are checked, so an
/// Endpoint already in conflict can still be edited (and deleted) while someone sorts it out.
pub fn decide(request: &Value, endpoints: &[Endpoint]) -> Result<(), String> {
    let op = request["operation"].as_str().unwrap_or_default();
    if op != "CREATE" && op != "UPDATE" {
        return Ok(());
    }
    let obj = &request["object"];
    let namespace = request["namespace"]
        .as_str()
        .or_else(|| obj.pointer("/metadata/namespace").and_then(Value::as_str))
        .unwrap_or(recast_crds::DEFAULT_NAMESPACE);
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .or_else(|| request["name"].as_str())
        .unwrap_or_default();
    check_computer_name(namespace, name, obj, &request["oldObject"], endpoints)?;
    let before: Vec<String> = macs_of(&request["oldObject"])
        .iter()
        .map(|m| m.to_ascii_lowercase())
        .collect();
    let added: Vec<String> = macs_of(obj)
        .into_iter()
        .filter(|m| !before.contains(&m.to_ascii_lowercase()))
        .collect();
    if added.is_empty() {
        return Ok(());
    }
    let conflicts = mac_conflicts(
        (namespace, name, &added),
        endpoints
            .iter()
            .filter(|ep| ep.metadata.deletion_timestamp.is_none())
            .map(|ep| {
                (
                    recast_crds::namespace_of(&ep.metadata),
                    ep.metadata.name.as_deref().unwrap_or_default(),
                    ep.spec.identity.mac_addresses.as_slice(),
                )
            }),
    );
    if conflicts.is_empty() {
        return Ok(());
    }
    Err(format!(
        "{}: a MAC address belongs to one Endpoint (recast would not know which machine is booting); remove it from the other Endpoint first, or fix a typo",
        conflicts
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    ))
}

/// The computer name the object gives its machine, checked when it is new or changes (an
/// Endpoint already in conflict can still be edited): Windows must take it, and no other
/// Endpoint of the namespace may have it (`recast_core::naming`).
fn check_computer_name(
    namespace: &str,
    name: &str,
    obj: &Value,
    old: &Value,
    endpoints: &[Endpoint],
) -> Result<(), String> {
    use recast_core::naming;
    let of = |o: &Value| {
        naming::computer_name(name, o.pointer("/spec/hostname").and_then(Value::as_str))
    };
    let computer = of(obj);
    if !old.is_null() && of(old) == computer {
        return Ok(());
    }
    if let Some(problem) = naming::computer_name_problem(&computer) {
        return Err(problem);
    }
    let conflicts = naming::computer_name_conflicts(
        (namespace, name, &computer),
        endpoints
            .iter()
            .filter(|ep| ep.metadata.deletion_timestamp.is_none())
            .map(|ep| {
                let n = ep.metadata.name.as_deref().unwrap_or_default();
                (
                    recast_crds::namespace_of(&ep.metadata),
                    n,
                    naming::computer_name(n, ep.spec.hostname.as_deref()),
                )
            }),
    );
    if conflicts.is_empty() {
        Ok(())
    } else {
        Err(naming::computer_name_refusal(&computer, &conflicts))
    }
}

/// The AdmissionReview answer for `review` (allowed, or denied with `message`).
pub fn respond(review: &Value, verdict: Result<(), String>) -> Value {
    let uid = review.pointer("/request/uid").cloned().unwrap_or(json!(""));
    let response = match verdict {
        Ok(()) => json!({"uid": uid, "allowed": true}),
        Err(message) => json!({
            "uid": uid,
            "allowed": false,
            "status": {"code": 403, "reason": "Forbidden", "message": message},
        }),
    };
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": response,
    })
}

/// `POST /validate/endpoints`.
pub fn router<B: Backend>(backend: Arc<B>) -> Router {
    Router::new()
        .route(PATH, post(review::<B>))
        .route("/healthz", axum::routing::get(|| async { "ok\n" }))
        .layer(axum::extract::DefaultBodyLimit::max(3 * 1024 * 1024))
        .with_state(backend)
}

async fn review<B: Backend>(
    State(backend): State<Arc<B>>,
    Json(review): Json<Value>,
) -> Json<Value> {
    let request = &review["request"];
    let op = request["operation"].as_str().unwrap_or_default();
    if op != "CREATE" && op != "UPDATE" {
        return Json(respond(&review, Ok(())));
    }
    // Fail closed: an Endpoint that cannot be checked is not admitted (the apiserver shows the
    // message; retrying once the operator reaches the apiserver again works).
    let verdict = match backend.endpoints().await {
        Ok(all) => decide(request, &all),
        Err(e) => Err(format!(
            "recast cannot check this Endpoint's MAC addresses right now ({e}); retry shortly"
        )),
    };
    if let Err(why) = &verdict {
        let namespace = request["namespace"].as_str().unwrap_or_default();
        let endpoint = request
            .pointer("/object/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        tracing::info!(
            namespace,
            endpoint,
            "refused an Endpoint at admission: {why}"
        );
    }
    Json(respond(&review, verdict))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(ns: &str, name: &str, macs: &[&str]) -> Endpoint {
        serde_json::from_value(json!({
            "apiVersion": "recast.dev/v1alpha1", "kind": "Endpoint",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"identity": {"macAddresses": macs}, "bootMode": "uefi",
                     "image": {"goldenImage": "win11"}},
        }))
        .unwrap()
    }

    fn request(op: &str, ns: &str, name: &str, macs: &[&str], old: Option<&[&str]>) -> Value {
        let obj = |m: &[&str]| json!({"metadata": {"name": name, "namespace": ns}, "spec": {"identity": {"macAddresses": m}}});
        json!({
            "uid": "u1", "operation": op, "namespace": ns, "name": name,
            "object": obj(macs),
            "oldObject": old.map(obj).unwrap_or(Value::Null),
        })
    }

    #[test]
    fn another_tenants_mac_is_refused_naming_the_owner() {
        let fleet = [ep("tenant-a", "kiosk-01", &["52:54:00:00:00:01"])];
        let why = decide(
            &request("CREATE", "tenant-b", "thief", &["52:54:00:00:00:01"], None),
            &fleet,
        )
        .unwrap_err();
        assert!(why.contains("tenant-a/kiosk-01"), "{why}");
        assert!(why.contains("52:54:00:00:00:01"), "{why}");
        // Upper case is the same MAC.
        assert!(
            decide(
                &request(
                    "CREATE",
                    "tenant-b",
                    "thief",
                    &["52:54:00:00:00:01".to_uppercase().as_str()],
                    None
                ),
                &fleet
            )
            .is_err()
        );
    }

    #[test]
    fn own_macs_new_macs_and_other_operations_pass() {
        let fleet = [ep("tenant-a", "kiosk-01", &["52:54:00:00:00:01"])];
        // Re-applying the owner.
        assert!(
            decide(
                &request(
                    "CREATE",
                    "tenant-a",
                    "kiosk-01",
                    &["52:54:00:00:00:01"],
                    None
                ),
                &fleet
            )
            .is_ok()
        );
        assert!(
            decide(
                &request("CREATE", "tenant-b", "new", &["52:54:00:00:00:02"], None),
                &fleet
            )
            .is_ok()
        );
        assert!(
            decide(
                &request("DELETE", "tenant-b", "thief", &["52:54:00:00:00:01"], None),
                &fleet
            )
            .is_ok()
        );
        // An update that adds nothing passes even when the object is already in conflict.
        let both = [
            ep("tenant-a", "kiosk-01", &["52:54:00:00:00:01"]),
            ep("tenant-b", "thief", &["52:54:00:00:00:01"]),
        ];
        let same = ["52:54:00:00:00:01"];
        assert!(
            decide(
                &request("UPDATE", "tenant-b", "thief", &same, Some(&same)),
                &both
            )
            .is_ok()
        );
        // An update that adds a taken MAC does not.
        assert!(
            decide(
                &request(
                    "UPDATE",
                    "tenant-b",
                    "other",
                    &["52:54:00:00:00:01"],
                    Some(&["52:54:00:00:00:09"])
                ),
                &both
            )
            .is_err()
        );
    }

    #[test]
    fn the_response_echoes_the_uid_and_says_why() {
        let review = json!({"request": {"uid": "abc"}});
        let r = respond(&review, Err("no".into()));
        assert_eq!(r["response"]["uid"], "abc");
        assert_eq!(r["response"]["allowed"], false);
        assert_eq!(r["response"]["status"]["code"], 403);
        assert_eq!(r["response"]["status"]["message"], "no");
        assert_eq!(respond(&review, Ok(()))["response"]["allowed"], true);
    }

    #[test]
    fn a_computer_name_belongs_to_one_endpoint_of_a_namespace() {
        let fleet = [ep(
            "site-a",
            "a-very-long-endpoint-name",
            &["52:54:00:00:00:01"],
        )];
        // Cut to 15 characters, both names are A-VERY-LONG-END.
        let why = decide(
            &request(
                "CREATE",
                "site-a",
                "a-very-long-endpoint-other",
                &["52:54:00:00:00:02"],
                None,
            ),
            &fleet,
        )
        .unwrap_err();
        assert!(
            why.contains("A-VERY-LONG-END") && why.contains("site-a/a-very-long-endpoint-name"),
            "{why}"
        );
        assert!(why.contains("spec.hostname"), "{why}");
        // Another namespace (another site) may use it; a spec.hostname settles it here.
        assert!(
            decide(
                &request(
                    "CREATE",
                    "site-b",
                    "a-very-long-endpoint-other",
                    &["52:54:00:00:00:02"],
                    None
                ),
                &fleet
            )
            .is_ok()
        );
        let mut named = request(
            "CREATE",
            "site-a",
            "a-very-long-endpoint-other",
            &["52:54:00:00:00:02"],
            None,
        );
        named["object"]["spec"]["hostname"] = json!("LOBBY-02");
        assert!(decide(&named, &fleet).is_ok());
        // A spec.hostname that takes another's derived name is refused too, case-blind.
        let mut taken = request("CREATE", "site-a", "kiosk-09", &["52:54:00:00:00:03"], None);
        taken["object"]["spec"]["hostname"] = json!("a-very-long-end");
        assert!(decide(&taken, &fleet).is_err());
        // A name Windows refuses (only digits) is refused with what to do.
        let digits = decide(
            &request("CREATE", "site-a", "0042", &["52:54:00:00:00:04"], None),
            &fleet,
        )
        .unwrap_err();
        assert!(
            digits.contains("only digits") && digits.contains("spec.hostname"),
            "{digits}"
        );
        // An update that keeps the computer name passes even while in conflict.
        let both = [
            ep(
                "site-a",
                "a-very-long-endpoint-name",
                &["52:54:00:00:00:01"],
            ),
            ep(
                "site-a",
                "a-very-long-endpoint-other",
                &["52:54:00:00:00:02"],
            ),
        ];
        let mac = ["52:54:00:00:00:02"];
        assert!(
            decide(
                &request(
                    "UPDATE",
                    "site-a",
                    "a-very-long-endpoint-other",
                    &mac,
                    Some(&mac)
                ),
                &both
            )
            .is_ok()
        );
    }
}
