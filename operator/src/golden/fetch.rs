//! Bringing a GoldenImage's bytes into the artifact store: an HTTP download that resumes with
//! Range after a dropped connection, or a copy from a local path. The bytes land in a staging
//! file; only a verification moves them to `images/<sha256>.wim`, where the boot service serves
//! them, so a half-written or unverified file is never served.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use recast_crds::golden_image::ArtifactSource;
use tokio::io::AsyncWriteExt;

/// No golden WIM is this large; a source that keeps sending is cut off rather than filling
/// the artifact volume.
pub const MAX_IMAGE_BYTES: u64 = 64 << 30;
/// Connection drops survived per fetch, each resumed where it stopped.
const RESUMES: u32 = 5;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("GET {url}: {message}; check that the URL is reachable from the operator")]
    Http { url: String, message: String },
    #[error("GET {url} answered {status}; check spec.source.url")]
    Status { url: String, status: u16 },
    #[error("{url} sends more than {MAX_IMAGE_BYTES} bytes; that is not a golden WIM")]
    TooLarge { url: String },
    #[error("{path}: {message}; check spec.source.path and the operator's artifact volume")]
    Local { path: String, message: String },
    #[error("artifact store {path}: {message}; check the volume behind --image-store")]
    Store { path: String, message: String },
}

/// The artifact store's layout, one place for every path the controller and the boot service
/// agree on.
#[derive(Clone, Debug)]
pub struct ArtifactStore {
    pub root: PathBuf,
}

impl ArtifactStore {
    /// Where a verified WIM is served from (the boot service's `/artifacts/images/<sha>.wim`).
    pub fn image(&self, digest: &str) -> PathBuf {
        self.root.join("images").join(format!("{digest}.wim"))
    }

    /// Where bytes wait for their verification (not under `images/`, never served).
    pub fn staging(&self, digest: &str) -> PathBuf {
        self.root
            .join(".staging")
            .join(format!("{digest}.wim.part"))
    }

    pub fn has_image(&self, digest: &str) -> bool {
        self.image(digest).is_file()
    }

    /// Moves verified bytes into place (a rename on the same volume: atomic for readers).
    pub async fn install(&self, staged: &Path, digest: &str) -> Result<PathBuf, FetchError> {
        let dest = self.image(digest);
        let store_err = |e: std::io::Error| FetchError::Store {
            path: dest.display().to_string(),
            message: e.to_string(),
        };
        if let Some(dir) = dest.parent() {
            tokio::fs::create_dir_all(dir).await.map_err(store_err)?;
        }
        tokio::fs::rename(staged, &dest).await.map_err(store_err)?;
        Ok(dest)
    }
}

/// Progress of a fetch, for logs and status messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FetchProgress {
    pub done: u64,
    pub total: Option<u64>,
}

/// Fetches `source` into `dest` (a staging path). A partial `dest` from an earlier try is
/// resumed with Range when the server supports it, and started over when it does not.
pub async fn fetch(
    http: &reqwest::Client,
    source: &ArtifactSource,
    dest: &Path,
    progress: &mut (dyn FnMut(FetchProgress) + Send),
) -> Result<(), FetchError> {
    if let Some(dir) = dest.parent() {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| FetchError::Store {
                path: dir.display().to_string(),
                message: e.to_string(),
            })?;
    }
    match (&source.url, &source.path) {
        (Some(url), _) => fetch_url(http, url, dest, progress).await,
        (None, Some(path)) => copy_local(Path::new(path), dest).await,
        (None, None) => Err(FetchError::Local {
            path: String::new(),
            message: "the source sets neither url nor path".into(),
        }),
    }
}

async fn copy_local(src: &Path, dest: &Path) -> Result<(), FetchError> {
    let local = |message: String| FetchError::Local {
        path: src.display().to_string(),
        message,
    };
    // Only a regular file of sane size: a device such as /dev/zero would fill the volume.
    let meta = tokio::fs::metadata(src)
        .await
        .map_err(|e| local(e.to_string()))?;
    if !meta.is_file() {
        return Err(local("not a regular file".into()));
    }
    if meta.len() > MAX_IMAGE_BYTES {
        return Err(local(format!(
            "{} bytes is more than any golden WIM ({MAX_IMAGE_BYTES})",
            meta.len()
        )));
    }
    // A copy, not a link: the source may be rewritten later, the verified bytes must not be.
    tokio::fs::copy(src, dest)
        .await
        .map(|_| ())
        .map_err(|e| FetchError::Local {
            path: src.display().to_string(),
            message: e.to_string(),
        })
}

async fn fetch_url(
    http: &reqwest::Client,
    url: &str,
    dest: &Path,
    progress: &mut (dyn FnMut(FetchProgress) + Send),
) -> Result<(), FetchError> {
    let http_err = |e: reqwest::Error| FetchError::Http {
        url: url.to_string(),
        message: error_chain(&e),
    };
    let store_err = |e: std::io::Error| FetchError::Store {
        path: dest.display().to_string(),
        message: e.to_string(),
    };
    let mut drops = 0;
    loop {
        let have = tokio::fs::metadata(dest)
            .await
            .map(|m| m.len())
            .unwrap_or(0);
        let mut req = http.get(url);
        if have > 0 {
            req = req.header(reqwest::header::RANGE, format!("bytes={have}-"));
        }
        let resp = match req.send().await {
            Ok(r) => r,
            // A refused or reset connection, a timeout: worth another try.
            Err(e) if drops < RESUMES && !e.is_builder() => {
                drops += 1;
                tracing::debug!(%url, error = %error_chain(&e), "image fetch failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(e) => return Err(http_err(e)),
        };
        let status = resp.status().as_u16();
        let (mut file, mut done) = match status {
            206 if content_range_start(&resp) == Some(have) => {
                let f = tokio::fs::OpenOptions::new()
                    .append(true)
                    .open(dest)
                    .await
                    .map_err(store_err)?;
                (f, have)
            }
            200 | 206 => (tokio::fs::File::create(dest).await.map_err(store_err)?, 0),
            416 if have > 0 => {
                // The partial file is not a prefix the server recognises: start over.
                tokio::fs::remove_file(dest).await.map_err(store_err)?;
                continue;
            }
            _ => {
                return Err(FetchError::Status {
                    url: url.to_string(),
                    status,
                });
            }
        };
        let total = resp.content_length().map(|len| len + done);
        if total.is_some_and(|t| t > MAX_IMAGE_BYTES) {
            return Err(FetchError::TooLarge { url: url.into() });
        }
        let mut body = resp.bytes_stream();
        let mut dropped = None;
        while let Some(chunk) = body.next().await {
            match chunk {
                Ok(bytes) => {
                    done += bytes.len() as u64;
                    if done > MAX_IMAGE_BYTES {
                        return Err(FetchError::TooLarge { url: url.into() });
                    }
                    file.write_all(&bytes).await.map_err(store_err)?;
                    progress(FetchProgress { done, total });
                }
                Err(e) => {
                    dropped = Some(e);
                    break;
                }
            }
        }
        file.flush().await.map_err(store_err)?;
        file.sync_all().await.map_err(store_err)?;
        let short = total.is_some_and(|t| done < t);
        match dropped {
            None if !short => return Ok(()),
            Some(e) if drops >= RESUMES => return Err(http_err(e)),
            None if drops >= RESUMES => {
                return Err(FetchError::Http {
                    url: url.into(),
                    message: format!(
                        "the body ended after {done} of {} bytes",
                        total.unwrap_or(0)
                    ),
                });
            }
            _ => {
                drops += 1;
                tracing::info!(%url, bytes = done, "image download dropped; resuming with Range");
            }
        }
    }
}

/// An error with its causes ("error sending request: dns error: no such host"), since
/// reqwest's own message hides why.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// The first byte of a 206 answer's `Content-Range: bytes START-END/TOTAL`.
fn content_range_start(resp: &reqwest::Response) -> Option<u64> {
    let v = resp
        .headers()
        .get(reqwest::header::CONTENT_RANGE)?
        .to_str()
        .ok()?;
    let range = v.strip_prefix("bytes ")?;
    range.split('-').next()?.trim().parse().ok()
}
