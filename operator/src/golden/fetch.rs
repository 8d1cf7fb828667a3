//! Bringing a GoldenImage's bytes into the artifact store: an HTTP download that resumes with
//! Range after a dropped connection, or a copy from a local path. The bytes land in a staging
//! file outside the boot root (nothing serves it); only a verification moves them to
//! `images/<sha256>.wim`, where the boot service serves them, so a half-written, unverified or
//! never-to-be-verified file (a secret a GoldenImage pointed at) is never served.
//!
//! What a source may reach is decided in [`super::source`]; this module applies it where the
//! I/O happens: the real path of the file actually opened, the addresses the connection
//! actually goes to (a resolver that drops refused addresses, so a name cannot be rebound
//! between check and connect), each redirect hop, the size and the deadline.

use recast_crds::error_chain;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use recast_crds::golden_image::ArtifactSource;
use tokio::io::AsyncWriteExt;

use super::source::{self, AddressRefused, SourcePolicy, SourceRefused};

/// Connection drops survived per fetch, each resumed where it stopped.
const RESUMES: u32 = 5;
/// Redirect hops followed when redirects are allowed.
const MAX_REDIRECTS: usize = 5;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("GET {url}: {message}; check that the URL is reachable from the operator")]
    Http { url: String, message: String },
    #[error("GET {url} answered {status}; check spec.source.url")]
    Status { url: String, status: u16 },
    #[error(
        "{source_name} holds more than {limit} bytes, the operator's --image-max-bytes; nothing was kept (raise the flag if this really is a golden WIM)"
    )]
    TooLarge { source_name: String, limit: u64 },
    #[error(
        "fetching {source_name} took longer than {}s, the operator's --image-fetch-timeout; the bytes so far are kept and the next try resumes",
        .limit.as_secs()
    )]
    Deadline {
        source_name: String,
        limit: Duration,
    },
    #[error(transparent)]
    Refused(#[from] SourceRefused),
    #[error("{path}: {message}; check spec.source.path and the operator's artifact volume")]
    Local { path: String, message: String },
    #[error(
        "artifact store {path}: {message}; check the volume behind --boot-root and --image-staging-dir"
    )]
    Store { path: String, message: String },
}

/// The artifact store's layout, one place for every path the controller and the boot service
/// agree on.
#[derive(Clone, Debug)]
pub struct ArtifactStore {
    /// The boot root: what the boot service serves over HTTP and TFTP.
    pub root: PathBuf,
    /// Where bytes wait for their verification: never under `root` (main refuses to start
    /// otherwise), so nothing serves a byte before it is verified.
    pub staging: PathBuf,
}

impl ArtifactStore {
    /// Where a verified WIM is served from (the boot service's `/artifacts/images/<sha>.wim`).
    pub fn image(&self, digest: &str) -> PathBuf {
        self.root.join("images").join(format!("{digest}.wim"))
    }

    /// Where one image's bytes wait for their verification. Per image, not per digest: two
    /// GoldenImages naming the same sha256 are fetched at the same time, each into its own
    /// file, and a resume continues the image's own partial file.
    pub fn staging(&self, digest: &str, namespace: &str, name: &str) -> PathBuf {
        // Object names are DNS labels; anything else is replaced so no name leaves the dir.
        let safe = |s: &str| -> String {
            s.chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect()
        };
        self.staging.join(format!(
            "{digest}.{}.{}.wim.part",
            safe(namespace),
            safe(name)
        ))
    }

    pub fn has_image(&self, digest: &str) -> bool {
        self.image(digest).is_file()
    }

    /// Moves verified bytes into place: a rename when staging and the boot root share a volume
    /// (atomic for readers), else a copy to a hidden name under images/ and a rename there.
    pub async fn install(&self, staged: &Path, digest: &str) -> Result<PathBuf, FetchError> {
        self.place(staged, self.image(digest)).await
    }

    /// [`Self::install`] to any path under the boot root (the pipable form of an image,
    /// crate::golden::stream): the copy's hidden name sits beside `dest`.
    pub async fn place(&self, staged: &Path, dest: PathBuf) -> Result<PathBuf, FetchError> {
        let store_err = |e: std::io::Error| FetchError::Store {
            path: dest.display().to_string(),
            message: e.to_string(),
        };
        if let Some(dir) = dest.parent() {
            tokio::fs::create_dir_all(dir).await.map_err(store_err)?;
        }
        match tokio::fs::rename(staged, &dest).await {
            Ok(()) => Ok(dest),
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::XDEV.raw_os_error()) => {
                // Verified bytes only: serving this half-copied name by accident leaks nothing.
                let name = dest.file_name().unwrap_or_default().to_string_lossy();
                let tmp = dest.with_file_name(format!(".{name}.installing"));
                tokio::fs::copy(staged, &tmp).await.map_err(store_err)?;
                tokio::fs::File::open(&tmp)
                    .await
                    .map_err(store_err)?
                    .sync_all()
                    .await
                    .map_err(store_err)?;
                tokio::fs::rename(&tmp, &dest).await.map_err(store_err)?;
                let _ = tokio::fs::remove_file(staged).await;
                Ok(dest)
            }
            Err(e) => Err(store_err(e)),
        }
    }
}

/// Progress of a fetch, for logs and status messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FetchProgress {
    pub done: u64,
    pub total: Option<u64>,
}

/// A resolver that hands reqwest only the addresses [`source::check_address`] allows, so the
/// connection goes to exactly the addresses that were checked (no second lookup to rebind).
struct CheckedResolver {
    policy: Arc<SourcePolicy>,
}

impl reqwest::dns::Resolve for CheckedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let resolved: Vec<std::net::IpAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .map(|a| a.ip())
                .collect();
            let usable = source::usable_addresses(&resolved, &policy).map_err(|refused| {
                Box::new(SourceRefused::Address {
                    url: host.clone(),
                    refused,
                }) as Box<dyn std::error::Error + Send + Sync>
            })?;
            let addrs: reqwest::dns::Addrs =
                Box::new(usable.into_iter().map(|ip| SocketAddr::new(ip, 0)));
            Ok(addrs)
        })
    }
}

/// The HTTP client of image fetches under `policy`: no proxy (a proxy would connect where we
/// did not check), the checked resolver, and redirects only when allowed, each hop checked.
pub fn client(policy: &Arc<SourcePolicy>) -> Result<reqwest::Client, String> {
    // reqwest is built without a default TLS provider; ring is the one kube already uses.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let redirect = if policy.allow_redirects {
        let p = policy.clone();
        reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() > MAX_REDIRECTS {
                let msg = format!("more than {MAX_REDIRECTS} redirects");
                return attempt.error(msg);
            }
            match source::check_url(attempt.url(), &p) {
                Ok(()) => attempt.follow(),
                Err(e) => attempt.error(e),
            }
        })
    } else {
        reqwest::redirect::Policy::none()
    };
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(Duration::from_secs(60))
        .no_proxy()
        .redirect(redirect)
        .dns_resolver(Arc::new(CheckedResolver {
            policy: policy.clone(),
        }))
        .build()
        .map_err(|e| format!("cannot build the image fetch client: {e}"))
}

/// The sha256 of a file and whether it starts like a WIM.
pub fn file_digest(path: &Path) -> Result<super::decide::FileDigest, String> {
    use sha2::Digest as _;
    use std::io::Read as _;
    let mut file =
        std::fs::File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut head = Vec::with_capacity(8);
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        if n == 0 {
            break;
        }
        if head.len() < 8 {
            let take = (8 - head.len()).min(n);
            head.extend_from_slice(&buf[..take]);
        }
        hasher.update(&buf[..n]);
    }
    Ok(super::decide::FileDigest {
        sha256: crate::encoding::hex(&hasher.finalize()),
        is_wim: head == b"MSWIM\0\0\0",
    })
}

/// Fetches `source` into `dest` (a staging path) under `policy`. A partial `dest` from an
/// earlier try is resumed with Range when the server supports it, and started over when it
/// does not. Bytes over the size limit are deleted; a refusal reads nothing.
pub async fn fetch(
    http: &reqwest::Client,
    policy: &SourcePolicy,
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
    let source_name = source
        .url
        .clone()
        .or_else(|| source.path.clone())
        .unwrap_or_default();
    let work = async {
        match (&source.url, &source.path) {
            (Some(url), _) => fetch_url(http, policy, url, dest, progress).await,
            (None, Some(path)) => copy_local(policy, path, dest).await,
            (None, None) => Err(FetchError::Local {
                path: String::new(),
                message: "the source sets neither url nor path".into(),
            }),
        }
    };
    let result = match tokio::time::timeout(policy.deadline, work).await {
        Ok(r) => r,
        Err(_) => Err(FetchError::Deadline {
            source_name,
            limit: policy.deadline,
        }),
    };
    if matches!(result, Err(FetchError::TooLarge { .. })) {
        let _ = tokio::fs::remove_file(dest).await;
    }
    result
}

/// Copies a local file, if it really lies under an `--image-source-root`: the check runs on
/// the canonical path, then again on the file actually opened (its /proc/self/fd link), so a
/// symlink swapped in between is caught too.
async fn copy_local(policy: &SourcePolicy, src: &str, dest: &Path) -> Result<(), FetchError> {
    if policy.path_roots.is_empty() {
        return Err(SourceRefused::NoRoots { path: src.into() }.into());
    }
    let local = |message: String| FetchError::Local {
        path: src.to_string(),
        message,
    };
    let real = match tokio::fs::canonicalize(src).await {
        Ok(r) => r,
        // Outside the roots, whether the file exists is nobody's business.
        Err(_) if !source::confined(Path::new(src), &policy.path_roots) => {
            return Err(policy
                .check_path(src, Path::new(src))
                .err()
                .map_or_else(|| local("not found".into()), FetchError::from));
        }
        Err(e) => return Err(local(e.to_string())),
    };
    policy.check_path(src, &real)?;
    let policy = policy.clone();
    let (src, dest) = (src.to_string(), dest.to_path_buf());
    tokio::task::spawn_blocking(move || copy_confined(&policy, &src, &real, &dest))
        .await
        .map_err(|e| FetchError::Local {
            path: String::new(),
            message: format!("the copy stopped: {e}"),
        })?
}

fn copy_confined(
    policy: &SourcePolicy,
    src: &str,
    real: &Path,
    dest: &Path,
) -> Result<(), FetchError> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let local = |message: String| FetchError::Local {
        path: src.to_string(),
        message,
    };
    // O_NOFOLLOW: the canonical path has no symlink, so one appearing now is an attack;
    // O_NONBLOCK: a FIFO put there must not hang the controller on open.
    let flags = rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags.bits() as i32)
        .open(real)
        .map_err(|e| local(e.to_string()))?;
    {
        use std::os::fd::AsRawFd;
        let opened = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
            .map_err(|e| local(format!("cannot tell which file was opened: {e}")))?;
        policy.check_path(src, &opened)?;
    }
    // Only a regular file of sane size: a device such as /dev/zero would fill the volume.
    let meta = file.metadata().map_err(|e| local(e.to_string()))?;
    if !meta.is_file() {
        return Err(local("not a regular file".into()));
    }
    if meta.len() > policy.max_bytes {
        return Err(FetchError::TooLarge {
            source_name: src.into(),
            limit: policy.max_bytes,
        });
    }
    // A copy, not a link: the source may be rewritten later, the verified bytes must not be.
    let store_err = |e: std::io::Error| FetchError::Store {
        path: dest.display().to_string(),
        message: e.to_string(),
    };
    let mut out = std::fs::File::create(dest).map_err(store_err)?;
    // The file may grow after the size check: never copy more than the limit.
    let copied = std::io::copy(&mut file.take(policy.max_bytes + 1), &mut out)
        .map_err(|e| local(e.to_string()))?;
    if copied > policy.max_bytes {
        drop(out);
        let _ = std::fs::remove_file(dest);
        return Err(FetchError::TooLarge {
            source_name: src.into(),
            limit: policy.max_bytes,
        });
    }
    out.sync_all().map_err(store_err)
}

/// The refusal inside a reqwest error (from the resolver or the redirect policy), if any.
fn refusal_in(e: &reqwest::Error) -> Option<SourceRefused> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cur {
        if let Some(r) = c.downcast_ref::<SourceRefused>() {
            return Some(r.clone());
        }
        if let Some(r) = c.downcast_ref::<AddressRefused>() {
            return Some(SourceRefused::Address {
                url: e.url().map(|u| u.to_string()).unwrap_or_default(),
                refused: r.clone(),
            });
        }
        cur = c.source();
    }
    None
}

async fn fetch_url(
    http: &reqwest::Client,
    policy: &SourcePolicy,
    url: &str,
    dest: &Path,
    progress: &mut (dyn FnMut(FetchProgress) + Send),
) -> Result<(), FetchError> {
    let parsed = reqwest::Url::parse(url).map_err(|e| FetchError::Http {
        url: url.to_string(),
        message: format!("not a URL: {e}"),
    })?;
    // An address written in the URL never reaches the resolver: decide on it here.
    source::check_url(&parsed, policy)?;
    let http_err = |e: reqwest::Error| match refusal_in(&e) {
        Some(r) => FetchError::Refused(r),
        None => FetchError::Http {
            url: url.to_string(),
            message: error_chain(&e),
        },
    };
    let store_err = |e: std::io::Error| FetchError::Store {
        path: dest.display().to_string(),
        message: e.to_string(),
    };
    let too_large = || FetchError::TooLarge {
        source_name: url.into(),
        limit: policy.max_bytes,
    };
    let mut drops = 0;
    loop {
        let have = tokio::fs::metadata(dest)
            .await
            .map(|m| m.len())
            .unwrap_or(0);
        let mut req = http.get(parsed.clone());
        if have > 0 {
            req = req.header(reqwest::header::RANGE, format!("bytes={have}-"));
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) if refusal_in(&e).is_some() => return Err(http_err(e)),
            // A refused or reset connection, a timeout: worth another try.
            Err(e) if drops < RESUMES && !e.is_builder() && !e.is_redirect() => {
                drops += 1;
                tracing::debug!(%url, error = %error_chain(&e), "image fetch failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(e) => return Err(http_err(e)),
        };
        let status = resp.status().as_u16();
        if resp.status().is_redirection() {
            // Only reached with redirects off (the policy follows or refuses them otherwise).
            let to = resp
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("(no Location)")
                .to_string();
            return Err(SourceRefused::Redirect {
                url: url.to_string(),
                to,
            }
            .into());
        }
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
        // The announced size is checked before a byte is written.
        if total.is_some_and(|t| t > policy.max_bytes) {
            return Err(too_large());
        }
        let mut body = resp.bytes_stream();
        let mut dropped = None;
        while let Some(chunk) = body.next().await {
            match chunk {
                Ok(bytes) => {
                    done += bytes.len() as u64;
                    if done > policy.max_bytes {
                        return Err(too_large());
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
