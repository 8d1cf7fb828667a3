//! Serving boot artifacts (iPXE binaries, wimboot, the WinPE kit, golden WIMs) over HTTP from the
//! boot root: confined to it, with HEAD, single byte ranges (a WIM download resumes where it
//! broke), ETag and If-None-Match / If-Range.

use std::path::{Component, Path, PathBuf};

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
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

/// Serves `path` (already confined) for GET or HEAD.
pub async fn serve(path: &Path, headers: &HeaderMap, head: bool) -> Response {
    let meta = match tokio::fs::metadata(path).await {
        Ok(m) => m,
        Err(_) => return (StatusCode::NOT_FOUND, "no such artifact\n").into_response(),
    };
    let size = meta.len();
    let tag = etag(&meta);
    let header_str = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    if header_str(header::IF_NONE_MATCH).is_some_and(|v| v.split(',').any(|t| t.trim() == tag)) {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, tag)]).into_response();
    }
    // A range is only honoured when the client's copy is the current file.
    let range_applies = header_str(header::IF_RANGE).is_none_or(|v| v.trim() == tag);
    let answer = if range_applies {
        parse_range(header_str(header::RANGE), size)
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
            return (
                StatusCode::RANGE_NOT_SATISFIABLE,
                [(header::CONTENT_RANGE, format!("bytes */{size}"))],
            )
                .into_response();
        }
    };
    let mut builder = Response::builder()
        .status(status)
        .header(header::CONTENT_LENGTH, len)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::ETAG, &tag)
        .header(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
    if status == StatusCode::PARTIAL_CONTENT {
        tracing::info!(path = %path.display(), start, len, size, "serving a byte range (206)");
        builder = builder.header(
            header::CONTENT_RANGE,
            format!("bytes {start}-{}/{size}", start + len - 1),
        );
    }
    if head {
        return builder
            .body(Body::empty())
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response());
    }
    let mut file = match tokio::fs::File::open(path).await {
        Ok(f) => f,
        Err(_) => return (StatusCode::NOT_FOUND, "no such artifact\n").into_response(),
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
