//! The boot HTTP listener: reads each request head itself, sends artifact files (GET and HEAD
//! of `/artifacts/...`) with sendfile(2), and hands every other request, with the connection,
//! to hyper and the boot router.
//!
//! Why not hyper for artifacts too: hyper sends a body as chunks that have been read into user
//! space, so every byte of a multi-GiB WIM is copied from the page cache into the process and
//! back into the socket. sendfile moves it inside the kernel, which halves the CPU a download
//! costs (docs/benchmarks.md, "HTTP boot artifacts"). What an artifact request is answered with
//! (confinement, Range, ETag, HEAD) is decided in `artifacts` for both paths; this module only
//! frames and sends it. Plain HTTP only: iPXE boots over it, and sendfile cannot go through TLS.
//!
//! The head reader is small on purpose: HTTP/1.1 only, no request body, at most
//! [`MAX_HEAD`] bytes of head under [`HEAD_TIMEOUT`]; anything it does not take on (HTTP/1.0, a
//! body, `Expect`, `Upgrade`, other paths or methods) goes to hyper unchanged, bytes already
//! read included, so hyper gives it exactly the answer it gave before this listener existed.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::http::{StatusCode, header};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use super::artifacts::{self, Conditions, Reply};

/// The longest request head read (request line and headers); longer gets 431.
pub const MAX_HEAD: usize = 16 * 1024;
const MAX_HEADERS: usize = 64;
/// How long a connection may take to send a request head, idle keep-alive time included.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// A body send that makes no progress for this long is given up (a client that stopped
/// reading holds a file and a socket otherwise).
pub const STALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Connections served at once; more wait in the kernel's accept queue.
const MAX_CONNECTIONS: usize = 1024;
/// Bytes per sendfile call: large enough to fill any socket buffer, small enough that one
/// connection cannot hold a runtime thread long.
const SENDFILE_CHUNK: u64 = 4 << 20;

/// Serves `app` and the artifacts under `root` on `listener` until `shutdown` completes. New
/// connections stop then; those in progress end with the process (a WIM download that is cut
/// off resumes with a Range request).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    root: PathBuf,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let root = Arc::new(root);
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return Ok(()),
            },
            _ = &mut shutdown => return Ok(()),
        };
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "boot HTTP: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => return Ok(()),
        };
        // Answers go out whole (a head, then a body in large sends); Nagle would only hold a
        // pipelined request's small answer back until the client's delayed ACK.
        let _ = tcp.set_nodelay(true);
        let app = app.clone();
        let root = root.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = connection(tcp, peer, app, &root).await {
                tracing::debug!(error = %e, "boot HTTP connection ended with an error");
            }
        });
    }
}

/// What the head reader makes of one request.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// GET or HEAD of an artifact: answered here.
    Artifact(ArtifactRequest),
    /// Anything else: hyper answers it.
    Hyper,
    /// Not HTTP: 400 and close.
    Bad,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct ArtifactRequest {
    pub head: bool,
    /// The percent-decoded path below `/artifacts/`.
    pub rel: String,
    pub range: Option<String>,
    pub if_none_match: Option<String>,
    pub if_range: Option<String>,
    /// The client asked to close the connection after this answer.
    pub close: bool,
}

/// Parses a complete request head (`head` ends with the blank line). Pure.
pub fn route(head: &[u8]) -> Route {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        // Too many headers and other oddities: hyper has its own answer for them.
        Err(httparse::Error::TooManyHeaders) => return Route::Hyper,
        _ => return Route::Bad,
    }
    let head_only = match req.method {
        Some("GET") => false,
        Some("HEAD") => true,
        _ => return Route::Hyper,
    };
    if req.version != Some(1) {
        return Route::Hyper;
    }
    let Some(target) = req.path else {
        return Route::Bad;
    };
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    let Some(rel) = path.strip_prefix("/artifacts/") else {
        return Route::Hyper;
    };
    // Decoded as the router would, so `%2e%2e` meets the same confinement as `..`.
    let Some(rel) = percent_decode(rel) else {
        return Route::Hyper;
    };
    let mut out = ArtifactRequest {
        head: head_only,
        rel,
        ..ArtifactRequest::default()
    };
    for h in req.headers.iter() {
        let value = || std::str::from_utf8(h.value).ok().map(str::to_string);
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            if h.value != b"0" {
                return Route::Hyper;
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            || name.eq_ignore_ascii_case("expect")
            || name.eq_ignore_ascii_case("upgrade")
        {
            return Route::Hyper;
        } else if name.eq_ignore_ascii_case("range") {
            out.range = value();
        } else if name.eq_ignore_ascii_case("if-none-match") {
            out.if_none_match = value();
        } else if name.eq_ignore_ascii_case("if-range") {
            out.if_range = value();
        } else if name.eq_ignore_ascii_case("connection") {
            out.close |= h
                .value
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"));
        }
    }
    Route::Artifact(out)
}

/// `%XX` decoding of a path; None when the result is not UTF-8 or an escape is broken.
pub fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Where the blank line ending a head is, if the buffer holds one.
pub fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// Why reading a head stopped without one.
enum NoHead {
    /// The client closed (or went quiet) between requests: the normal end of a connection.
    Closed,
    TooLarge,
}

/// Reads into `buf` until it holds a complete head; returns its length.
async fn read_head(tcp: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<Result<usize, NoHead>> {
    let read = async {
        let mut scanned = 0usize;
        loop {
            // Only the new bytes (and the three before them) can complete the blank line.
            if let Some(end) = head_end(&buf[scanned.saturating_sub(3)..]) {
                return Ok(Ok(scanned.saturating_sub(3) + end));
            }
            scanned = buf.len();
            if buf.len() >= MAX_HEAD {
                return Ok(Err(NoHead::TooLarge));
            }
            let mut chunk = [0u8; 4096];
            let want = chunk.len().min(MAX_HEAD - buf.len());
            let n = tcp.read(&mut chunk[..want]).await?;
            if n == 0 {
                return Ok(Err(NoHead::Closed));
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    match tokio::time::timeout(HEAD_TIMEOUT, read).await {
        Ok(r) => r,
        Err(_) => Ok(Err(NoHead::Closed)),
    }
}

async fn connection(
    mut tcp: TcpStream,
    peer: std::net::SocketAddr,
    app: Router,
    root: &Path,
) -> io::Result<()> {
    let mut buf = Vec::with_capacity(4096);
    loop {
        let len = match read_head(&mut tcp, &mut buf).await? {
            Ok(len) => len,
            Err(NoHead::Closed) => return Ok(()),
            Err(NoHead::TooLarge) => {
                let reply = simple(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "");
                return write_reply(&mut tcp, &reply, false, true, None).await;
            }
        };
        match route(&buf[..len]) {
            Route::Artifact(req) => {
                buf.drain(..len);
                let keep = artifact(&mut tcp, root, &req).await?;
                if !keep {
                    return Ok(());
                }
            }
            Route::Bad => {
                let text = "malformed request\n";
                let reply = simple(StatusCode::BAD_REQUEST, text);
                return write_reply(&mut tcp, &reply, false, true, Some(text.as_bytes())).await;
            }
            Route::Hyper => return hand_to_hyper(tcp, peer, buf, app).await,
        }
    }
}

/// Serves the rest of the connection with hyper, starting with the bytes already read. Every
/// request carries the peer's address (axum's `ConnectInfo`): the imaging protocol binds a
/// try to the machine that claimed it.
async fn hand_to_hyper(
    tcp: TcpStream,
    peer: std::net::SocketAddr,
    read: Vec<u8>,
    app: Router,
) -> io::Result<()> {
    let io = Prefixed {
        prefix: read,
        pos: 0,
        inner: tcp,
    };
    let app = tower::ServiceExt::map_request(
        app,
        move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut()
                .insert(axum::extract::ConnectInfo(peer));
            req
        },
    );
    let service = hyper_util::service::TowerToHyperService::new(app);
    hyper::server::conn::http1::Builder::new()
        .header_read_timeout(HEAD_TIMEOUT)
        .timer(hyper_util::rt::TokioTimer::new())
        .serve_connection(hyper_util::rt::TokioIo::new(io), service)
        .await
        .map_err(io::Error::other)
}

/// A 4xx with a short text body (sent by [`write_reply`]).
fn simple(status: StatusCode, body: &str) -> Reply {
    Reply {
        status,
        headers: vec![
            (header::CONTENT_LENGTH, body.len().to_string()),
            (
                header::CONTENT_TYPE,
                "text/plain; charset=utf-8".to_string(),
            ),
        ],
        body: None,
    }
}

/// Answers one artifact request; true when the connection stays open for the next one.
async fn artifact(tcp: &mut TcpStream, root: &Path, req: &ArtifactRequest) -> io::Result<bool> {
    let opened = match artifacts::locate(root, &req.rel) {
        // Opened on the blocking pool: a file swapped for a FIFO after `locate` would block
        // open(2) until a writer came, and must not hold a runtime thread while it does.
        Ok(path) => match tokio::fs::File::open(&path).await {
            Ok(file) => {
                let file = file.into_std().await;
                // Size and ETag come from the open handle, so a file replaced meanwhile is sent
                // consistently with its own headers; and it must still be a regular file.
                file.metadata()
                    .ok()
                    .filter(std::fs::Metadata::is_file)
                    .map(|meta| (path, file, meta))
            }
            Err(_) => None,
        },
        Err(message) => {
            let reply = simple(StatusCode::NOT_FOUND, message);
            write_reply(tcp, &reply, req.head, req.close, Some(message.as_bytes())).await?;
            return Ok(!req.close);
        }
    };
    let Some((path, file, meta)) = opened else {
        let message = artifacts::NOT_FOUND;
        let reply = simple(StatusCode::NOT_FOUND, message);
        write_reply(tcp, &reply, req.head, req.close, Some(message.as_bytes())).await?;
        return Ok(!req.close);
    };
    let cond = Conditions {
        range: req.range.as_deref(),
        if_none_match: req.if_none_match.as_deref(),
        if_range: req.if_range.as_deref(),
    };
    let reply = artifacts::reply_for(&path, &meta, cond);
    write_reply(tcp, &reply, req.head, req.close, None).await?;
    if let (Some((start, len)), false) = (reply.body, req.head) {
        send_file(tcp, &file, start, len).await?;
    }
    Ok(!req.close)
}

/// Writes the status line and headers, then `text` (a short body) unless this answers a HEAD.
async fn write_reply(
    tcp: &mut TcpStream,
    reply: &Reply,
    head: bool,
    close: bool,
    text: Option<&[u8]>,
) -> io::Result<()> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(
        format!(
            "HTTP/1.1 {} {}\r\n",
            reply.status.as_u16(),
            reply.status.canonical_reason().unwrap_or("")
        )
        .as_bytes(),
    );
    for (name, value) in &reply.headers {
        out.extend_from_slice(format!("{}: {value}\r\n", name.as_str()).as_bytes());
    }
    // A 304 or 416 has no body; say so, or a keep-alive client waits for one.
    if !reply
        .headers
        .iter()
        .any(|(n, _)| *n == header::CONTENT_LENGTH)
        && reply.status != StatusCode::NOT_MODIFIED
    {
        out.extend_from_slice(b"content-length: 0\r\n");
    }
    out.extend_from_slice(
        format!(
            "date: {}\r\n",
            httpdate::fmt_http_date(std::time::SystemTime::now())
        )
        .as_bytes(),
    );
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if let (Some(text), false) = (text, head) {
        out.extend_from_slice(text);
    }
    unstalled(tcp.write_all(&out)).await
}

/// Sends `len` bytes of `file` from `offset` to the socket.
async fn send_file(
    tcp: &mut TcpStream,
    file: &std::fs::File,
    offset: u64,
    len: u64,
) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    match sendfile(tcp, file, offset, len).await {
        Err(e) if e.kind() == io::ErrorKind::Unsupported => {}
        done => return done,
    }
    copy(tcp, file, offset, len).await
}

/// Waits for `step` under [`STALL_TIMEOUT`].
async fn unstalled<T>(step: impl Future<Output = io::Result<T>>) -> io::Result<T> {
    tokio::time::timeout(STALL_TIMEOUT, step)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "client stopped reading"))?
}

/// The zero-copy send. `Unsupported` when the file cannot be sendfile'd (EINVAL or ENOSYS
/// before the first byte), so the caller can copy instead. An error mid-body ends the
/// connection: the client sees a short body and resumes with a Range request.
#[cfg(target_os = "linux")]
async fn sendfile(
    tcp: &TcpStream,
    file: &std::fs::File,
    mut offset: u64,
    len: u64,
) -> io::Result<()> {
    let (start, end) = (offset, offset + len);
    while offset < end {
        let chunk = (end - offset).min(SENDFILE_CHUNK) as usize;
        let n = unstalled(async {
            loop {
                tcp.writable().await?;
                match tcp.try_io(tokio::io::Interest::WRITABLE, || {
                    rustix::fs::sendfile(tcp, file, Some(&mut offset), chunk)
                        .map_err(io::Error::from)
                }) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    other => return other,
                }
            }
        })
        .await;
        match n {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the file got shorter while it was sent",
                ));
            }
            Ok(_) => {}
            Err(e) if offset == start && matches!(e.raw_os_error(), Some(22 | 38)) => {
                return Err(io::Error::new(io::ErrorKind::Unsupported, e));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The portable send, through a buffer.
async fn copy(tcp: &mut TcpStream, file: &std::fs::File, offset: u64, len: u64) -> io::Result<()> {
    use tokio::io::AsyncSeekExt;
    let mut file = tokio::fs::File::from_std(file.try_clone()?);
    file.seek(io::SeekFrom::Start(offset)).await?;
    let mut left = len;
    let mut chunk = vec![0u8; 256 * 1024];
    while left > 0 {
        let want = left.min(chunk.len() as u64) as usize;
        let n = file.read(&mut chunk[..want]).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the file got shorter while it was sent",
            ));
        }
        unstalled(tcp.write_all(&chunk[..n])).await?;
        left -= n as u64;
    }
    Ok(())
}

/// A stream that yields `prefix` before the socket's own bytes: the head reader's read-ahead,
/// given back to hyper.
struct Prefixed {
    prefix: Vec<u8>,
    pos: usize,
    inner: TcpStream,
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.pos < self.prefix.len() {
            let n = buf.remaining().min(self.prefix.len() - self.pos);
            let pos = self.pos;
            buf.put_slice(&self.prefix[pos..pos + n]);
            self.pos += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn artifact(head: &str) -> ArtifactRequest {
        match route(head.as_bytes()) {
            Route::Artifact(a) => a,
            other => panic!("{head:?} routed to {other:?}"),
        }
    }

    #[test]
    fn artifact_gets_and_heads_are_taken_with_their_conditions() {
        let a = artifact(
            "GET /artifacts/ipxe/undionly.kpxe?x=1 HTTP/1.1\r\nHost: a\r\nRange: bytes=5-\r\n\
             If-None-Match: \"t\"\r\nIf-Range: \"u\"\r\nConnection: keep-alive, Close\r\n\r\n",
        );
        assert_eq!(
            a,
            ArtifactRequest {
                head: false,
                rel: "ipxe/undionly.kpxe".into(),
                range: Some("bytes=5-".into()),
                if_none_match: Some("\"t\"".into()),
                if_range: Some("\"u\"".into()),
                close: true,
            }
        );
        let a = artifact("HEAD /artifacts/a%20b HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
        assert!(a.head && !a.close);
        assert_eq!(a.rel, "a b");
        // Decoded like the router decodes, so confinement sees the real name.
        assert_eq!(
            artifact("GET /artifacts/%2e%2e/x HTTP/1.1\r\n\r\n").rel,
            "../x"
        );
    }

    #[test]
    fn everything_else_goes_to_hyper() {
        for head in [
            "GET /boot.ipxe HTTP/1.1\r\n\r\n",
            "POST /artifacts/x HTTP/1.1\r\nContent-Length: 3\r\n\r\n",
            "GET /artifacts/x HTTP/1.0\r\n\r\n",
            "GET /artifacts/x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET /artifacts/x HTTP/1.1\r\nContent-Length: 5\r\n\r\n",
            "GET /artifacts/x HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
            "GET /artifacts/x HTTP/1.1\r\nUpgrade: websocket\r\n\r\n",
            "GET /artifacts/%ff HTTP/1.1\r\n\r\n",
            "GET /artifacts/%zz HTTP/1.1\r\n\r\n",
            "GET /artifactsx HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(route(head.as_bytes()), Route::Hyper, "{head:?}");
        }
        let many: String = (0..MAX_HEADERS + 1)
            .map(|i| format!("X-{i}: y\r\n"))
            .collect();
        let head = format!("GET /artifacts/x HTTP/1.1\r\n{many}\r\n");
        assert_eq!(route(head.as_bytes()), Route::Hyper);
    }

    #[test]
    fn garbage_is_a_bad_request() {
        assert_eq!(route(b"\x16\x03\x01\x00\xa5\r\n\r\n"), Route::Bad);
        assert_eq!(route(b"GET  HTTP/1.1\r\n\r\n"), Route::Bad);
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%2Fb%41").as_deref(), Some("a/bA"));
        assert_eq!(percent_decode("plain").as_deref(), Some("plain"));
        assert_eq!(percent_decode("%4"), None);
        assert_eq!(percent_decode("%"), None);
        assert_eq!(percent_decode("%c3%a9").as_deref(), Some("é"));
        assert_eq!(percent_decode("%c3"), None);
    }

    #[test]
    fn heads_end_at_the_blank_line() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\nrest"), Some(18));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n"), None);
    }
}
