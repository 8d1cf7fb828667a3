//! Reading user manifests: multi-document YAML into typed recast objects.

use serde::Deserialize;

use crate::{Endpoint, GoldenImage, ReimageWave, RemediationPolicy};

/// The four recast kinds, with the names kubectl users type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Endpoint,
    GoldenImage,
    ReimageWave,
    RemediationPolicy,
}

impl Kind {
    pub const ALL: [Kind; 4] = [
        Kind::Endpoint,
        Kind::GoldenImage,
        Kind::ReimageWave,
        Kind::RemediationPolicy,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Endpoint => "Endpoint",
            Kind::GoldenImage => "GoldenImage",
            Kind::ReimageWave => "ReimageWave",
            Kind::RemediationPolicy => "RemediationPolicy",
        }
    }

    pub fn plural(self) -> &'static str {
        match self {
            Kind::Endpoint => "endpoints",
            Kind::GoldenImage => "goldenimages",
            Kind::ReimageWave => "reimagewaves",
            Kind::RemediationPolicy => "remediationpolicies",
        }
    }

    pub fn short_name(self) -> &'static str {
        match self {
            Kind::Endpoint => "rep",
            Kind::GoldenImage => "gi",
            Kind::ReimageWave => "wave",
            Kind::RemediationPolicy => "rpol",
        }
    }

    /// Resolves what a user typed (`rep`, `endpoint`, `Endpoints`, `endpoints.recast.dev`).
    pub fn from_user(name: &str) -> Option<Kind> {
        let n = name.to_ascii_lowercase();
        let n = n.strip_suffix(".recast.dev").unwrap_or(&n);
        Kind::ALL.into_iter().find(|k| {
            n == k.plural()
                || n == k.short_name()
                || n == k.as_str().to_ascii_lowercase()
                || (*k == Kind::ReimageWave && n == "waves")
        })
    }

    pub fn from_kind(kind: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == kind)
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A typed recast object.
#[derive(Clone, Debug, PartialEq)]
pub enum Object {
    Endpoint(Box<Endpoint>),
    GoldenImage(Box<GoldenImage>),
    ReimageWave(Box<ReimageWave>),
    RemediationPolicy(Box<RemediationPolicy>),
}

impl Object {
    pub fn kind(&self) -> Kind {
        match self {
            Object::Endpoint(_) => Kind::Endpoint,
            Object::GoldenImage(_) => Kind::GoldenImage,
            Object::ReimageWave(_) => Kind::ReimageWave,
            Object::RemediationPolicy(_) => Kind::RemediationPolicy,
        }
    }

    pub fn metadata(&self) -> &kube::core::ObjectMeta {
        match self {
            Object::Endpoint(o) => &o.metadata,
            Object::GoldenImage(o) => &o.metadata,
            Object::ReimageWave(o) => &o.metadata,
            Object::RemediationPolicy(o) => &o.metadata,
        }
    }

    pub fn name(&self) -> &str {
        self.metadata().name.as_deref().unwrap_or_default()
    }

    pub fn to_json(&self) -> serde_json::Value {
        // Serialising these types cannot fail: they hold only strings, numbers, maps and lists.
        match self {
            Object::Endpoint(o) => serde_json::to_value(o),
            Object::GoldenImage(o) => serde_json::to_value(o),
            Object::ReimageWave(o) => serde_json::to_value(o),
            Object::RemediationPolicy(o) => serde_json::to_value(o),
        }
        .unwrap_or(serde_json::Value::Null)
    }
}

/// One YAML document of a manifest file, not yet validated.
#[derive(Clone, Debug, PartialEq)]
pub struct Document {
    /// 1-based position of the document in the file, for error messages.
    pub index: usize,
    pub value: serde_json::Value,
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("document {index}: not valid YAML: {source}. Fix the syntax; nothing was applied")]
    Yaml {
        index: usize,
        #[source]
        source: serde_yaml::Error,
    },
    #[error("document {index}: expected a mapping with apiVersion, kind and metadata")]
    NotAMapping { index: usize },
}

/// Splits a multi-document YAML string into JSON values, skipping empty documents (a leading
/// `---`, comment-only documents).
pub fn parse_documents(text: &str) -> Result<Vec<Document>, ManifestError> {
    let mut out = Vec::new();
    for (i, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let index = i + 1;
        let value = serde_json::Value::deserialize(de)
            .map_err(|source| ManifestError::Yaml { index, source })?;
        match value {
            serde_json::Value::Null => continue,
            serde_json::Value::Object(_) => out.push(Document { index, value }),
            _ => return Err(ManifestError::NotAMapping { index }),
        }
    }
    Ok(out)
}
