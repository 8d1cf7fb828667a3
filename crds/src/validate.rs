//! Admission for the embedded store: the same checks the apiserver runs for these CRDs.
//!
//! The CEL rules come from the generated CRD schema itself (evaluated with kube-cel), unknown
//! fields are refused the way `kubectl apply`'s strict field validation refuses them, and the
//! typed decode catches wrong types, enum values and missing required fields. Nothing here has
//! its own copy of a rule, so the two backends cannot drift apart.

use std::collections::HashMap;
use std::sync::OnceLock;

use kube::core::cel::{CompiledSchema, Validator, compile_schema};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::manifest::{Kind, Object};
use crate::{API_VERSION, all_crds};

/// One thing wrong with an object, located by its field path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// "spec.identity.macAddresses"; empty for the object as a whole.
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub struct InvalidObject {
    /// "Endpoint \"kiosk-01\"", or what could be told of an object with no kind or name.
    pub object: String,
    pub errors: Vec<FieldError>,
}

impl std::fmt::Display for InvalidObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} is invalid: ", self.object)?;
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl InvalidObject {
    fn single(object: String, field: &str, message: impl Into<String>) -> Self {
        Self {
            object,
            errors: vec![FieldError {
                field: field.into(),
                message: message.into(),
            }],
        }
    }
}

struct KindSchema {
    /// openAPIV3Schema of the served version, as JSON.
    schema: Value,
    compiled: CompiledSchema,
}

fn schemas() -> &'static HashMap<Kind, KindSchema> {
    static SCHEMAS: OnceLock<HashMap<Kind, KindSchema>> = OnceLock::new();
    SCHEMAS.get_or_init(|| {
        let mut map = HashMap::new();
        for crd in all_crds() {
            let Some(kind) = Kind::from_kind(&crd.spec.names.kind) else {
                continue;
            };
            let schema = crd
                .spec
                .versions
                .first()
                .and_then(|v| v.schema.as_ref())
                .and_then(|s| s.open_api_v3_schema.as_ref())
                .and_then(|s| serde_json::to_value(s).ok())
                .unwrap_or(Value::Null);
            let compiled = compile_schema(&schema);
            map.insert(kind, KindSchema { schema, compiled });
        }
        map
    })
}

fn describe(value: &Value) -> String {
    let kind = value
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("object");
    match value.pointer("/metadata/name").and_then(Value::as_str) {
        Some(name) => format!("{kind} {name:?}"),
        None => kind.to_string(),
    }
}

/// Validates a manifest document (a create when `old` is None, an update otherwise) and returns
/// the typed object. `status` in the input is ignored, as the apiserver ignores it on the main
/// resource.
pub fn admit(value: &Value, old: Option<&Value>) -> Result<Object, InvalidObject> {
    let object = describe(value);
    let api_version = value.get("apiVersion").and_then(Value::as_str);
    if api_version != Some(API_VERSION) {
        return Err(InvalidObject::single(
            object,
            "apiVersion",
            format!(
                "must be {API_VERSION}, got {}",
                api_version.map_or("nothing".to_string(), |v| format!("{v:?}"))
            ),
        ));
    }
    let kind_name = value.get("kind").and_then(Value::as_str).unwrap_or("");
    let Some(kind) = Kind::from_kind(kind_name) else {
        return Err(InvalidObject::single(
            object,
            "kind",
            format!(
                "{kind_name:?} is not a recast kind; use Endpoint, GoldenImage, ReimageWave or RemediationPolicy"
            ),
        ));
    };
    let name = value.pointer("/metadata/name").and_then(Value::as_str);
    match name {
        None | Some("") => {
            return Err(InvalidObject::single(
                object,
                "metadata.name",
                "Required value: name is required",
            ));
        }
        Some(n) if !is_dns_subdomain(n) => {
            return Err(InvalidObject::single(
                object,
                "metadata.name",
                format!(
                    "{n:?} must be a lowercase DNS subdomain: letters, digits, '-' and '.', starting and ending with a letter or digit, at most 253 characters"
                ),
            ));
        }
        Some(_) => {}
    }

    let mut value = value.clone();
    if let Some(map) = value.as_object_mut() {
        map.remove("status");
    }
    let old = old.map(|o| {
        let mut o = o.clone();
        if let Some(map) = o.as_object_mut() {
            map.remove("status");
        }
        o
    });

    let Some(schema) = schemas().get(&kind) else {
        return Err(InvalidObject::single(
            object,
            "kind",
            "no schema compiled for this kind",
        ));
    };
    let mut errors = Vec::new();
    unknown_fields(&schema.schema, &value, "", &mut errors);
    if !errors.is_empty() {
        return Err(InvalidObject { object, errors });
    }
    let typed = match kind {
        Kind::Endpoint => decode(&value).map(|o| Object::Endpoint(Box::new(o))),
        Kind::GoldenImage => decode(&value).map(|o| Object::GoldenImage(Box::new(o))),
        Kind::ReimageWave => decode(&value).map(|o| Object::ReimageWave(Box::new(o))),
        Kind::RemediationPolicy => decode(&value).map(|o| Object::RemediationPolicy(Box::new(o))),
    }
    .map_err(|e| InvalidObject {
        object: object.clone(),
        errors: vec![e],
    })?;

    if let Err(failures) =
        Validator::new().validate_compiled(&schema.compiled, &value, old.as_ref())
    {
        let errors = failures
            .into_vec()
            .into_iter()
            .map(|f| FieldError {
                field: f.field_path,
                message: f.message,
            })
            .collect();
        return Err(InvalidObject { object, errors });
    }
    Ok(typed)
}

fn decode<T: DeserializeOwned>(value: &Value) -> Result<T, FieldError> {
    serde_path_to_error::deserialize(value).map_err(|e| FieldError {
        field: e
            .path()
            .to_string()
            .trim_start_matches('.')
            .replace("?", ""),
        message: e.into_inner().to_string(),
    })
}

/// Fields every object has that the generated CRD schema leaves implicit.
const ROOT_FIELDS: [&str; 3] = ["apiVersion", "kind", "metadata"];

/// Refuses fields the schema does not declare, like `kubectl apply --validate=strict` (its
/// default): a typo such as `protectd: true` must not silently leave a machine unprotected.
fn unknown_fields(schema: &Value, value: &Value, path: &str, errors: &mut Vec<FieldError>) {
    if schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true)) {
        return;
    }
    match value {
        Value::Object(map) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties");
            for (key, child) in map {
                let child_path = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                if let Some(child_schema) = props.and_then(|p| p.get(key)) {
                    unknown_fields(child_schema, child, &child_path, errors);
                } else if let Some(add) = additional.filter(|a| a.is_object()) {
                    unknown_fields(add, child, &child_path, errors);
                } else if props.is_some()
                    && !(path.is_empty() && ROOT_FIELDS.contains(&key.as_str()))
                {
                    errors.push(FieldError {
                        field: child_path,
                        message: format!("unknown field {key:?}: it is not in the {API_VERSION} schema; check the spelling (`kubectl explain` lists the fields)"),
                    });
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    unknown_fields(item_schema, item, &format!("{path}[{i}]"), errors);
                }
            }
        }
        _ => {}
    }
}

/// RFC 1123 subdomain, as Kubernetes requires for object names.
pub fn is_dns_subdomain(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 253
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-' || *c == b'.')
}
