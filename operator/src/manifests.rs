//! Reading manifest files and directories (for `recastctl apply -f` and `--load`).

use std::path::{Path, PathBuf};

use recast_crds::manifest::{Document, ManifestError, parse_documents};

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: ManifestError,
    },
}

/// The documents of every `.yaml`/`.yml`/`.json` file at `path` (a file, or a directory's files
/// in name order, not descending into subdirectories, like `kubectl apply -f DIR`).
pub fn load(path: &Path) -> Result<Vec<(PathBuf, Document)>, LoadError> {
    let read_err = |source| LoadError::Read {
        path: path.to_path_buf(),
        source,
    };
    let files = if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(read_err)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.is_file()
                    && p.extension()
                        .is_some_and(|e| e == "yaml" || e == "yml" || e == "json")
            })
            .collect();
        files.sort();
        files
    } else {
        vec![path.to_path_buf()]
    };
    let mut out = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).map_err(|source| LoadError::Read {
            path: file.clone(),
            source,
        })?;
        let docs = parse_documents(&text).map_err(|source| LoadError::Parse {
            path: file.clone(),
            source,
        })?;
        out.extend(docs.into_iter().map(|d| (file.clone(), d)));
    }
    Ok(out)
}

/// True for documents of the recast.dev API (others, such as a v1 Secret, are for Kubernetes).
pub fn is_recast(doc: &Document) -> bool {
    doc.value.get("apiVersion").and_then(|v| v.as_str()) == Some(recast_crds::API_VERSION)
}

/// True for a Kubernetes `v1 Secret` (BMC credentials, CA bundles), which the embedded store
/// keeps apart from the recast objects.
pub fn is_secret(doc: &Document) -> bool {
    doc.value.get("apiVersion").and_then(|v| v.as_str()) == Some("v1")
        && doc.value.get("kind").and_then(|v| v.as_str()) == Some("Secret")
}

/// The document's kind for messages ("object" when it has none).
pub fn kind_name(doc: &Document) -> &str {
    doc.value
        .get("kind")
        .and_then(|k| k.as_str())
        .unwrap_or("object")
}
