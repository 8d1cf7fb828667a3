//! Serving boot artifacts (iPXE binaries, wimboot, the WinPE kit, golden WIMs) over HTTP from the
//! boot root: confined to it, with HEAD, single byte ranges (a WIM download resumes where it
//! broke), ETag and If-None-Match / If-Range.

use std::path::{Component, Path, PathBuf};

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

/// Resolves a request path inside `root`; None for anything that could leave it: `..`,
/// absolute paths, backslashes, NUL, or a symlink pointing outside.
pub fn confine(root: &Path, rel: &str) -> Option<PathBuf> {
    if rel.is_empty() || rel.contains('\0') || rel.contains('\\') {
        return None;
    }
    let rel_path = Path::new(rel);
    if !rel_path
        .components()
        .all(|c| matches!(c, Component::Normal(_)))
    {
        return None;
    }
    let root = root.canonicalize().ok()?;
    let full = root.join(rel_path).canonicalize().ok()?;
    (full.starts_with(&root) && full.is_file()).then_some(full)
}

/// A byte range request, already checked against the file size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RangeAnswer {
    Full,
    Partial { start: u64, end_inclusive: u64 },
    Unsatisfiable,
}

/// Interprets a `Range` header for a file of `size` bytes. Only a single `bytes=` range is
/// honoured; anything else (several ranges, other units, garbage) gets the whole file, as RFC
/// 9110 allows.
pub fn parse_range(value: Option<&str>, size: u64) -> RangeAnswer {
    let Some(spec) = value.and_then(|v| v.trim().strip_prefix("bytes=")) else {
        return RangeAnswer::Full;
    };
    if spec.contains(',') {
        return RangeAnswer::Full;
    }
    let Some((a, b)) = spec.split_once('-') else {
        return RangeAnswer::Full;
    };
    let (a, b) = (a.trim(), b.trim());
    let parsed = match (a.is_empty(), b.is_empty()) {
        (true, true) => return RangeAnswer::Full,
        // bytes=-N: the last N bytes.
        (true, false) => match b.parse::<u64>() {
            Ok(0) => return RangeAnswer::Unsatisfiable,
            Ok(n) => (size.saturating_sub(n), size.saturating_sub(1)),
            Err(_) => return RangeAnswer::Full,
        },
        (false, _) => {
            let Ok(start) = a.parse::<u64>() else {
                return RangeAnswer::Full;
            };
            let end = if b.is_empty() {
                size.saturating_sub(1)
            } else {
                match b.parse::<u64>() {
                    Ok(e) if e >= start => e.min(size.saturating_sub(1)),
                    _ => return RangeAnswer::Full,
                }
            };
            if start >= size {
                return RangeAnswer::Unsatisfiable;
            }
            (start, end)
        }
    };
    if size == 0 {
        return RangeAnswer::Unsatisfiable;
    }
    RangeAnswer::Partial {
        start: parsed.0,
        end_inclusive: parsed.1,
    }
}

/// A strong validator from size and modification time: a replaced file gets a new ETag.
pub fn etag(meta: &std::fs::Metadata) -> String {
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("\"{:x}-{:x}\"", meta.len(), mtime)
}

/// The body of a 404 for an artifact.
pub const NOT_FOUND: &str = "no such artifact\n";

/// Finds the file an `/artifacts/{rel}` request names, or the 404 message to send instead.
/// Golden WIMs are served only by digest, and only once the golden-image check has put them
/// into images/; a name that is not a digest is refused.
pub fn locate(root: &Path, rel: &str) -> Result<PathBuf, &'static str> {
    // Never a file, whatever the boot root holds: the signed chain's decline (dhcp.rs).
    if rel == super::dhcp::DECLINE_FILE {
        return Err("no reimage is armed for this machine: boot the local disk\n");
    }
    if let Some(rest) = rel.strip_prefix("images/")
        && !is_digest_file(rest)
    {
        return Err("images are served by digest only\n");
    }
    confine(root, rel).ok_or(NOT_FOUND)
}

/// `<sha256>.wim`, or an image's boot manager beside it, `<sha256>-<index>.bootmgfw.efi`
/// (crate::golden::stream: what a multicast receiver checks before its first write).
fn is_digest_file(name: &str) -> bool {
    let digest = |d: &str| {
        d.len() == 64
            && d.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let indexed = |d: &str| {
        d.split_once('-').is_some_and(|(d, i)| {
            digest(d) && (1..=5).contains(&i.len()) && i.bytes().all(|b| b.is_ascii_digit())
        })
    };
    name.strip_suffix(".wim").is_some_and(digest)
        || name.strip_suffix(".bootmgfw.efi").is_some_and(indexed)
}

/// The request headers an artifact answer depends on.
#[derive(Clone, Copy, Debug, Default)]
pub struct Conditions<'a> {
    pub range: Option<&'a str>,
    pub if_none_match: Option<&'a str>,
    pub if_range: Option<&'a str>,
}

impl<'a> Conditions<'a> {
    pub fn from_headers(headers: &'a HeaderMap) -> Self {
        let get = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
        Conditions {
            range: get(header::RANGE),
            if_none_match: get(header::IF_NONE_MATCH),
            if_range: get(header::IF_RANGE),
        }
    }
}

/// What an artifact request gets: status, headers, and which bytes of the file follow (GET
/// only; a HEAD gets the same head and no body). Decided here once; the two senders (hyper's
/// body stream in [`serve`] and the zero-copy listener in `boot::listener`) only carry it out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: Vec<(header::HeaderName, String)>,
    /// (offset, length) of the file bytes the body carries; None: the body is empty.
    pub body: Option<(u64, u64)>,
}

/// Decides the answer for a file of `size` bytes whose ETag is `tag`.
pub fn reply(size: u64, tag: &str, cond: Conditions<'_>) -> Reply {
    if cond
        .if_none_match
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag))
    {
        return Reply {
            status: StatusCode::NOT_MODIFIED,
            headers: vec![(header::ETAG, tag.to_string())],
            body: None,
        };
    }
    // A range is only honoured when the client's copy is the current file.
    let range_applies = cond.if_range.is_none_or(|v| v.trim() == tag);
    let answer = if range_applies {
        parse_range(cond.range, size)
    } else {
        RangeAnswer::Full
    };
    let (status, start, len) = match answer {
        RangeAnswer::Full => (StatusCode::OK, 0, size),
        RangeAnswer::Partial {
            start,
            end_inclusive,
        } => (
            StatusCode::PARTIAL_CONTENT,
            start,
            end_inclusive - start + 1,
        ),
        RangeAnswer::Unsatisfiable => {
            return Reply {
                status: StatusCode::RANGE_NOT_SATISFIABLE,
                headers: vec![(header::CONTENT_RANGE, format!("bytes */{size}"))],
                body: None,
            };
        }
    };
    let mut headers = vec![
        (header::CONTENT_LENGTH, len.to_string()),
        (header::ACCEPT_RANGES, "bytes".to_string()),
        (header::ETAG, tag.to_string()),
        (header::CONTENT_TYPE, "application/octet-stream".to_string()),
    ];
    if status == StatusCode::PARTIAL_CONTENT {
        headers.push((
            header::CONTENT_RANGE,
            format!("bytes {start}-{}/{size}", start + len - 1),
        ));
    }
    Reply {
        status,
        headers,
        body: Some((start, len)),
    }
}

/// [`reply`] for an opened file, logging ranges (a resumed WIM download is worth a line).
pub fn reply_for(path: &Path, meta: &std::fs::Metadata, cond: Conditions<'_>) -> Reply {
    let reply = reply(meta.len(), &etag(meta), cond);
    if let (StatusCode::PARTIAL_CONTENT, Some((start, len))) = (reply.status, reply.body) {
        tracing::info!(path = %path.display(), start, len, size = meta.len(), "serving a byte range (206)");
    }
    reply
}

/// Serves `path` (already located) for GET or HEAD through hyper, streaming the body through
/// user space. The boot listener sends artifacts itself with sendfile(2); this is for requests
/// it hands on (unusual framing) and for routers served without it.
pub async fn serve(path: &Path, headers: &HeaderMap, head: bool) -> Response {
    let mut file = match tokio::fs::File::open(path).await {
        Ok(f) => f,
        Err(_) => return (StatusCode::NOT_FOUND, NOT_FOUND).into_response(),
    };
    // The open handle's metadata: a file replaced after `locate` is answered consistently.
    let meta = match file.metadata().await {
        Ok(m) => m,
        Err(_) => return (StatusCode::NOT_FOUND, NOT_FOUND).into_response(),
    };
    let reply = reply_for(path, &meta, Conditions::from_headers(headers));
    let mut builder = Response::builder().status(reply.status);
    for (name, value) in &reply.headers {
        builder = builder.header(name, value);
    }
    let Some((start, len)) = reply.body.filter(|_| !head) else {
        return builder
            .body(Body::empty())
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response());
    };
    if start > 0 && file.seek(std::io::SeekFrom::Start(start)).await.is_err() {
        return (StatusCode::INTERNAL_SERVER_ERROR, "cannot seek\n").into_response();
    }
    // 256 KiB reads keep the syscall count low on multi-GiB WIMs.
    let stream = tokio_util::io::ReaderStream::with_capacity(file.take(len), 256 * 1024);
    builder
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_are_served_by_digest_and_the_boot_manager_beside_them_only() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("images")).unwrap();
        let d = "ab".repeat(32);
        for name in [
            format!("{d}.wim"),
            format!("{d}-1.bootmgfw.efi"),
            format!("{d}-1.stream.wim"),
            format!("{d}-1.stream.json"),
            format!("{d}.bootmgfw.efi"),
            "notadigest.wim".to_string(),
        ] {
            std::fs::write(root.path().join("images").join(&name), b"x").unwrap();
        }
        assert!(locate(root.path(), &format!("images/{d}.wim")).is_ok());
        assert!(locate(root.path(), &format!("images/{d}-1.bootmgfw.efi")).is_ok());
        // The pipable form goes out by multicast only; its facts and other names never.
        for name in [
            format!("{d}-1.stream.wim"),
            format!("{d}-1.stream.json"),
            format!("{d}.bootmgfw.efi"),
            format!("{d}-.bootmgfw.efi"),
            format!("{d}-123456.bootmgfw.efi"),
            format!("{d}-1x.bootmgfw.efi"),
            "notadigest.wim".to_string(),
            format!("{}-1.bootmgfw.efi", "AB".repeat(32)),
        ] {
            assert_eq!(
                locate(root.path(), &format!("images/{name}")),
                Err("images are served by digest only\n"),
                "{name}"
            );
        }
    }

    #[test]
    fn the_decline_name_is_never_a_file() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("sb")).unwrap();
        // Even when someone put a file there.
        std::fs::write(root.path().join(super::super::dhcp::DECLINE_FILE), b"x").unwrap();
        assert_eq!(
            locate(root.path(), super::super::dhcp::DECLINE_FILE),
            Err("no reimage is armed for this machine: boot the local disk\n")
        );
        std::fs::write(root.path().join("sb/shimx64.efi"), b"x").unwrap();
        assert!(locate(root.path(), "sb/shimx64.efi").is_ok());
    }

    #[test]
    fn ranges() {
        use RangeAnswer::*;
        assert_eq!(parse_range(None, 100), Full);
        assert_eq!(
            parse_range(Some("bytes=0-9"), 100),
            Partial {
                start: 0,
                end_inclusive: 9
            }
        );
        assert_eq!(
            parse_range(Some("bytes=90-"), 100),
            Partial {
                start: 90,
                end_inclusive: 99
            }
        );
        assert_eq!(
            parse_range(Some("bytes=90-500"), 100),
            Partial {
                start: 90,
                end_inclusive: 99
            }
        );
        assert_eq!(
            parse_range(Some("bytes=-10"), 100),
            Partial {
                start: 90,
                end_inclusive: 99
            }
        );
        assert_eq!(
            parse_range(Some("bytes=-500"), 100),
            Partial {
                start: 0,
                end_inclusive: 99
            }
        );
        assert_eq!(parse_range(Some("bytes=100-"), 100), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=-0"), 100), Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=0-"), 0), Unsatisfiable);
        // Not understood: the whole file.
        assert_eq!(parse_range(Some("bytes=5-2"), 100), Full);
        assert_eq!(parse_range(Some("bytes=0-1,5-6"), 100), Full);
        assert_eq!(parse_range(Some("items=0-1"), 100), Full);
        assert_eq!(parse_range(Some("bytes=x-1"), 100), Full);
        assert_eq!(parse_range(Some("bytes=-"), 100), Full);
        assert_eq!(
            parse_range(Some("bytes=99999999999999999999999-"), 100),
            Full
        );
    }

    #[test]
    fn confinement() {
        let dir = std::env::temp_dir().join(format!("recast-root-{}", uuid::Uuid::new_v4()));
        let root = dir.join("root");
        std::fs::create_dir_all(root.join("ipxe")).unwrap();
        std::fs::write(root.join("ipxe/undionly.kpxe"), b"x").unwrap();
        std::fs::write(dir.join("secret"), b"s").unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink(dir.join("secret"), root.join("escape")).unwrap();
        assert!(confine(&root, "ipxe/undionly.kpxe").is_some());
        for bad in [
            "../secret",
            "ipxe/../../secret",
            "/etc/passwd",
            "escape",
            "ipxe\\..\\..\\secret",
            "ipxe",
            "",
            "a\0b",
            "missing",
        ] {
            assert_eq!(confine(&root, bad), None, "{bad:?} must be refused");
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}
