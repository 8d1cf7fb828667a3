//! The operator's control objects in its control namespace (ConfigMaps only recast's own
//! service accounts may write, see docs/security.md): their names, labels and annotations,
//! shared by the Kubernetes store, the gateway's ledger and `recastctl token`.

use k8s_openapi::api::core::v1::ConfigMap;
use serde_json::json;

use crate::store::Key;

pub const FIELD_MANAGER: &str = "recast-operator";
pub const INBOX_LABEL: &str = "recast.dev/inbox";
pub const BOOT_LABEL: &str = "recast.dev/boot-intent";
pub const JOURNAL_LABEL: &str = "recast.dev/journal";
pub const GATEWAY_CREDENTIAL_LABEL: &str = "recast.dev/gateway-credential";
/// On every control object (intent, journal, inbox): what the orphan sweep lists.
pub const CONTROL_LABEL: &str = "recast.dev/control";
/// The endpoint's namespace, as a label too (namespaces fit a label value; names may not).
pub const ENDPOINT_NAMESPACE_LABEL: &str = "recast.dev/endpoint-namespace";
pub const ENDPOINT_ANNOTATION: &str = "recast.dev/endpoint";
pub const ENDPOINT_NAMESPACE_ANNOTATION: &str = "recast.dev/endpoint-namespace";
/// The uid of the Endpoint a journal was written for: a re-created Endpoint of the same name
/// never inherits it (the sweep removes it).
pub const ENDPOINT_UID_ANNOTATION: &str = "recast.dev/endpoint-uid";

/// The kinds of control object the operator keeps per endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ControlKind {
    Boot,
    Journal,
    Inbox,
    /// The agent gateway's token hash and enrollments for the endpoint (see
    /// `gateway::kube_ledger`).
    GatewayCredential,
}

impl ControlKind {
    fn prefix(self) -> &'static str {
        match self {
            ControlKind::Boot => "recast-boot-",
            ControlKind::Journal => "recast-journal-",
            ControlKind::Inbox => "recast-inbox-",
            ControlKind::GatewayCredential => "recast-gwcred-",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            ControlKind::Boot => BOOT_LABEL,
            ControlKind::Journal => JOURNAL_LABEL,
            ControlKind::Inbox => INBOX_LABEL,
            ControlKind::GatewayCredential => GATEWAY_CREDENTIAL_LABEL,
        }
    }
}

/// The name of an endpoint's control object in the control namespace: the kind's prefix and
/// 32 hex digits of sha256("namespace/name"). Namespaces and names cannot contain '/', so two
/// endpoints never share one; the endpoint itself is in the annotations.
pub fn control_name(kind: ControlKind, key: &Key) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(format!("{}/{}", key.namespace, key.name).as_bytes());
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("{}{hex}", kind.prefix())
}

/// The endpoint a control object belongs to, from its annotations; None unless its name is
/// the one `control_name` gives for that endpoint (a hand-made or misplaced object is never
/// taken for another endpoint's).
pub fn control_owner(kind: ControlKind, cm: &ConfigMap) -> Option<Key> {
    let ann = cm.metadata.annotations.as_ref()?;
    let key = Key {
        namespace: ann.get(ENDPOINT_NAMESPACE_ANNOTATION)?.clone(),
        name: ann.get(ENDPOINT_ANNOTATION)?.clone(),
    };
    let labelled = cm
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(kind.label()))
        .is_some_and(|v| v == "true");
    (labelled && cm.metadata.name.as_deref() == Some(control_name(kind, &key).as_str()))
        .then_some(key)
}

/// The metadata of an endpoint's control object: its name, labels and the endpoint it is for.
pub fn control_meta(kind: ControlKind, key: &Key, uid: Option<&str>) -> serde_json::Value {
    let mut annotations = json!({
        ENDPOINT_ANNOTATION: key.name,
        ENDPOINT_NAMESPACE_ANNOTATION: key.namespace,
    });
    if let Some(uid) = uid.filter(|u| !u.is_empty()) {
        annotations[ENDPOINT_UID_ANNOTATION] = json!(uid);
    }
    json!({
        "name": control_name(kind, key),
        "labels": {
            kind.label(): "true",
            CONTROL_LABEL: "true",
            ENDPOINT_NAMESPACE_LABEL: key.namespace,
            "app.kubernetes.io/managed-by": FIELD_MANAGER,
        },
        "annotations": annotations,
    })
}
