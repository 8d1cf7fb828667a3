//! The boot HTTP listener over a real socket, with a raw client so every byte of the framing is
//! seen: artifact bodies sent with sendfile (full, ranges and their edges, HEAD, 304, 416),
//! keep-alive and pipelined requests, a client that disconnects mid-body, oversized and broken
//! heads, and requests handed to hyper (with the bytes already read).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use axum::Router;
use axum::routing::{self, post};
use recast_operator::boot::listener;

struct Server {
    addr: SocketAddr,
    dir: PathBuf,
    data: Vec<u8>,
    _rt: tokio::runtime::Runtime,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const SIZE: usize = 3 << 20;

fn server() -> Server {
    let dir = std::env::temp_dir().join(format!("recast-listener-{}", uuid::Uuid::new_v4()));
    let root = dir.join("root");
    std::fs::create_dir_all(root.join("ipxe")).unwrap();
    let data: Vec<u8> = (0..SIZE).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(root.join("ipxe/big.bin"), &data).unwrap();
    std::fs::write(root.join("ipxe/empty.bin"), b"").unwrap();
    std::fs::write(dir.join("secret"), b"secret").unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new()
        .route("/hello", routing::get(|| async { "hi from hyper\n" }))
        .route("/echo", post(|body: String| async move { body }));
    rt.spawn(listener::serve(
        listener,
        app,
        root,
        std::future::pending::<()>(),
    ));
    Server {
        addr,
        dir,
        data,
        _rt: rt,
    }
}

struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn connect(s: &Server) -> TcpStream {
    let c = TcpStream::connect(s.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    c
}

/// Reads one answer off `c`; `head` says the request was a HEAD (no body follows).
fn read_answer(c: &mut TcpStream, head: bool) -> Answer {
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        assert_eq!(c.read(&mut byte).unwrap(), 1, "connection closed in a head");
        raw.push(byte[0]);
    }
    let text = String::from_utf8(raw).unwrap();
    let mut lines = text.split("\r\n");
    let status = lines.next().unwrap()[9..12].parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut a = Answer {
        status,
        headers,
        body: Vec::new(),
    };
    let len: usize = a.header("content-length").map_or(0, |v| v.parse().unwrap());
    if !head {
        a.body = vec![0u8; len];
        c.read_exact(&mut a.body).unwrap();
    }
    a
}

fn get(s: &Server, request: &str) -> Answer {
    let mut c = connect(s);
    c.write_all(request.as_bytes()).unwrap();
    read_answer(&mut c, request.starts_with("HEAD"))
}

fn req(method: &str, path: &str, extra: &str) -> String {
    format!("{method} {path} HTTP/1.1\r\nHost: t\r\n{extra}\r\n")
}

#[test]
fn full_bodies_heads_and_validators() {
    let s = server();
    let a = get(&s, &req("GET", "/artifacts/ipxe/big.bin", ""));
    assert_eq!(a.status, 200);
    assert_eq!(a.header("content-length"), Some(SIZE.to_string().as_str()));
    assert_eq!(a.header("accept-ranges"), Some("bytes"));
    assert_eq!(a.header("content-type"), Some("application/octet-stream"));
    assert!(a.header("date").is_some());
    assert!(a.body == s.data, "the body is the file");
    let etag = a.header("etag").unwrap().to_string();

    let h = get(&s, &req("HEAD", "/artifacts/ipxe/big.bin", ""));
    assert_eq!(h.status, 200);
    assert_eq!(h.header("content-length"), Some(SIZE.to_string().as_str()));
    assert_eq!(h.header("etag"), Some(etag.as_str()));

    let nm = get(
        &s,
        &req(
            "GET",
            "/artifacts/ipxe/big.bin",
            &format!("If-None-Match: \"x\", {etag}\r\n"),
        ),
    );
    assert_eq!(nm.status, 304);
    assert!(nm.body.is_empty());

    let empty = get(&s, &req("GET", "/artifacts/ipxe/empty.bin", ""));
    assert_eq!((empty.status, empty.body.len()), (200, 0));
    assert_eq!(empty.header("content-length"), Some("0"));
}

#[test]
fn ranges_and_their_edges() {
    let s = server();
    let d = &s.data;
    let n = SIZE as u64;
    let path = "/artifacts/ipxe/big.bin";
    for (range, start, end) in [
        ("bytes=0-0", 0, 0),
        ("bytes=10-19", 10, 19),
        (&*format!("bytes={}-", n - 1), n - 1, n - 1),
        (&*format!("bytes={}-{}", n - 5, n + 100), n - 5, n - 1),
        ("bytes=-7", n - 7, n - 1),
        (&*format!("bytes=-{}", n + 5), 0, n - 1),
        (&*format!("bytes={}-", n / 2), n / 2, n - 1),
    ] {
        let a = get(&s, &req("GET", path, &format!("Range: {range}\r\n")));
        assert_eq!(a.status, 206, "{range}");
        assert_eq!(
            a.header("content-range").map(str::to_string),
            Some(format!("bytes {start}-{end}/{n}")),
            "{range}"
        );
        assert!(
            a.body == d[start as usize..=end as usize],
            "{range}: wrong bytes"
        );
        let h = get(&s, &req("HEAD", path, &format!("Range: {range}\r\n")));
        assert_eq!(h.status, 206);
        assert_eq!(
            h.header("content-length").map(str::to_string),
            Some((end - start + 1).to_string())
        );
    }
    for range in [&*format!("bytes={n}-"), "bytes=-0"] {
        let a = get(&s, &req("GET", path, &format!("Range: {range}\r\n")));
        assert_eq!(a.status, 416, "{range}");
        assert_eq!(
            a.header("content-range").map(str::to_string),
            Some(format!("bytes */{n}"))
        );
    }
    // Not understood, or a stale If-Range: the whole file.
    for extra in [
        "Range: bytes=0-1,5-6\r\n",
        "Range: bytes=9-2\r\n",
        "Range: lines=1-2\r\n",
        "Range: bytes=0-9\r\nIf-Range: \"stale\"\r\n",
    ] {
        let a = get(&s, &req("GET", path, extra));
        assert_eq!((a.status, a.body.len()), (200, SIZE), "{extra}");
    }
    let empty = get(
        &s,
        &req("GET", "/artifacts/ipxe/empty.bin", "Range: bytes=0-\r\n"),
    );
    assert_eq!(empty.status, 416);
}

#[test]
fn keep_alive_and_pipelined_requests_share_a_connection() {
    let s = server();
    let mut c = connect(&s);
    // Three requests in one write, the last one for hyper: each is answered in order.
    let pipelined = [
        req("GET", "/artifacts/ipxe/big.bin", "Range: bytes=0-99\r\n"),
        req("HEAD", "/artifacts/ipxe/big.bin", ""),
        req("GET", "/hello", ""),
    ]
    .concat();
    c.write_all(pipelined.as_bytes()).unwrap();
    let a = read_answer(&mut c, false);
    assert_eq!((a.status, a.body.as_slice()), (206, &s.data[..100]));
    let h = read_answer(&mut c, true);
    assert_eq!(h.status, 200);
    let hy = read_answer(&mut c, false);
    assert_eq!(
        (hy.status, hy.body.as_slice()),
        (200, &b"hi from hyper\n"[..])
    );
    // hyper keeps serving the connection after the hand-over.
    c.write_all(req("GET", "/hello", "").as_bytes()).unwrap();
    assert_eq!(read_answer(&mut c, false).status, 200);

    // Connection: close is honoured.
    let mut c = connect(&s);
    c.write_all(
        req(
            "GET",
            "/artifacts/ipxe/big.bin",
            "Connection: close\r\nRange: bytes=0-0\r\n",
        )
        .as_bytes(),
    )
    .unwrap();
    let a = read_answer(&mut c, false);
    assert_eq!(a.header("connection"), Some("close"));
    let mut rest = Vec::new();
    assert_eq!(
        c.read_to_end(&mut rest).unwrap(),
        0,
        "closed after the answer"
    );
}

#[test]
fn hyper_answers_what_the_reader_does_not_take() {
    let s = server();
    // A body (read by hyper, including the part the head reader had already read).
    let mut c = connect(&s);
    c.write_all(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello")
        .unwrap();
    let a = read_answer(&mut c, false);
    assert_eq!((a.status, a.body.as_slice()), (200, &b"hello"[..]));
    // Other methods on artifacts, and HTTP/1.0: the router's own answers.
    let a = get(
        &s,
        "DELETE /artifacts/ipxe/big.bin HTTP/1.1\r\nHost: t\r\n\r\n",
    );
    assert_eq!(a.status, 404);
    let a = get(&s, "GET /hello HTTP/1.0\r\n\r\n");
    assert_eq!(a.status, 200);
}

#[test]
fn confinement_holds_on_the_zero_copy_path() {
    let s = server();
    for bad in [
        "/artifacts/../secret",
        "/artifacts/ipxe/../../secret",
        "/artifacts/%2e%2e/secret",
        "/artifacts/ipxe%2f..%2f..%2fsecret",
        "/artifacts//etc/passwd",
        "/artifacts/ipxe",
        "/artifacts/images/golden.wim",
        "/artifacts/missing",
    ] {
        for method in ["GET", "HEAD"] {
            let a = get(&s, &req(method, bad, ""));
            assert_eq!(a.status, 404, "{method} {bad}");
            assert!(!String::from_utf8_lossy(&a.body).contains("secret"));
        }
    }
}

#[test]
fn a_client_that_leaves_mid_body_does_not_hurt_the_server() {
    let s = server();
    for _ in 0..5 {
        let mut c = connect(&s);
        c.write_all(req("GET", "/artifacts/ipxe/big.bin", "").as_bytes())
            .unwrap();
        let mut some = [0u8; 4096];
        c.read_exact(&mut some).unwrap();
        drop(c);
    }
    let a = get(&s, &req("GET", "/artifacts/ipxe/big.bin", ""));
    assert!(a.status == 200 && a.body == s.data);
}

#[test]
fn oversized_and_broken_heads_are_refused() {
    let s = server();
    let mut c = connect(&s);
    // Exactly the limit and no blank line yet: the server reads it all, so it can close
    // cleanly after its answer (unread bytes would turn the close into a reset).
    let mut huge = b"GET /artifacts/ipxe/big.bin HTTP/1.1\r\nX-Pad: ".to_vec();
    huge.resize(listener::MAX_HEAD, b'a');
    c.write_all(&huge).unwrap();
    assert_eq!(read_answer(&mut c, false).status, 431);

    let a = get(&s, "\x16\x03\x01\x00\x05garbage\r\n\r\n");
    assert_eq!(a.status, 400);
}
