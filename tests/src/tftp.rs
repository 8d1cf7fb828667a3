//! A raw TFTP client over blocking UDP, for protocol corner cases the packaged clients cannot
//! produce (duplicate ACKs, a wrong TID, an ERROR mid-transfer, a client that vanishes) and for
//! the benchmark (windowsize, which tftp-hpa's client lacks).
//!
//! It builds and parses packets by hand from RFC 1350/2347/7440, deliberately sharing no code
//! with the server's codec, so a codec bug cannot hide behind a matching client bug.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

/// A packet as the client sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Data { block: u16, data: Vec<u8> },
    Oack(Vec<(String, String)>),
    Error { code: u16, message: String },
    Ack { block: u16 },
    Other(Vec<u8>),
}

pub fn rrq_bytes(file: &str, mode: &str, options: &[(&str, &str)]) -> Vec<u8> {
    request_bytes(1, file, mode, options)
}

pub fn wrq_bytes(file: &str, mode: &str) -> Vec<u8> {
    request_bytes(2, file, mode, &[])
}

fn request_bytes(op: u8, file: &str, mode: &str, options: &[(&str, &str)]) -> Vec<u8> {
    let mut b = vec![0, op];
    for s in [file, mode]
        .into_iter()
        .chain(options.iter().flat_map(|(n, v)| [*n, *v]))
    {
        b.extend_from_slice(s.as_bytes());
        b.push(0);
    }
    b
}

pub fn ack_bytes(block: u16) -> Vec<u8> {
    let [h, l] = block.to_be_bytes();
    vec![0, 4, h, l]
}

pub fn error_bytes(code: u16, message: &str) -> Vec<u8> {
    let [h, l] = code.to_be_bytes();
    let mut b = vec![0, 5, h, l];
    b.extend_from_slice(message.as_bytes());
    b.push(0);
    b
}

pub fn parse_reply(d: &[u8]) -> Reply {
    if d.len() < 4 || d[0] != 0 {
        return Reply::Other(d.to_vec());
    }
    let n = u16::from_be_bytes([d[2], d[3]]);
    match d[1] {
        3 => Reply::Data {
            block: n,
            data: d[4..].to_vec(),
        },
        4 if d.len() == 4 => Reply::Ack { block: n },
        5 => {
            let text = &d[4..];
            let end = text.iter().position(|&b| b == 0).unwrap_or(text.len());
            Reply::Error {
                code: n,
                message: String::from_utf8_lossy(&text[..end]).into_owned(),
            }
        }
        6 => {
            let fields: Vec<String> = d[2..]
                .split(|&b| b == 0)
                .map(|f| String::from_utf8_lossy(f).into_owned())
                .collect();
            // The final split is the empty slice after the last NUL.
            let fields = &fields[..fields.len().saturating_sub(1)];
            Reply::Oack(
                fields
                    .chunks(2)
                    .map(|c| (c[0].clone(), c.get(1).cloned().unwrap_or_default()))
                    .collect(),
            )
        }
        _ => Reply::Other(d.to_vec()),
    }
}

pub struct RawClient {
    pub socket: UdpSocket,
    pub server: SocketAddr,
    buf: Vec<u8>,
}

impl RawClient {
    pub fn new(server: SocketAddr) -> io::Result<Self> {
        let socket = UdpSocket::bind(SocketAddr::new(server.ip(), 0))?;
        socket.set_read_timeout(Some(Duration::from_secs(3)))?;
        Ok(RawClient {
            socket,
            server,
            buf: vec![0; 65536],
        })
    }

    pub fn set_timeout(&self, t: Duration) -> io::Result<()> {
        self.socket.set_read_timeout(Some(t))
    }

    pub fn send_to(&self, bytes: &[u8], to: SocketAddr) -> io::Result<()> {
        self.socket.send_to(bytes, to).map(|_| ())
    }

    pub fn rrq(&self, file: &str, mode: &str, options: &[(&str, &str)]) -> io::Result<()> {
        self.send_to(&rrq_bytes(file, mode, options), self.server)
    }

    /// The next packet, or None after the read timeout.
    pub fn recv(&mut self) -> io::Result<Option<(Reply, SocketAddr)>> {
        match self.socket.recv_from(&mut self.buf) {
            Ok((n, from)) => Ok(Some((parse_reply(&self.buf[..n]), from))),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }
}

/// What a download returned.
#[derive(Debug)]
pub struct Download {
    pub data: Vec<u8>,
    pub bytes: u64,
    pub oack: Vec<(String, String)>,
}

#[derive(Debug)]
pub enum GetError {
    Io(io::Error),
    Server { code: u16, message: String },
    Timeout(String),
    Protocol(String),
}

impl std::fmt::Display for GetError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GetError::Io(e) => write!(f, "i/o: {e}"),
            GetError::Server { code, message } => write!(f, "server error {code}: {message}"),
            GetError::Timeout(s) => write!(f, "timeout: {s}"),
            GetError::Protocol(s) => write!(f, "protocol: {s}"),
        }
    }
}

impl From<io::Error> for GetError {
    fn from(e: io::Error) -> Self {
        GetError::Io(e)
    }
}

/// Downloads `file` in octet mode with the given options (RFC 7440 receiver: ACK at the end of
/// each window, or the last in-order block when one goes missing). `keep` false only counts
/// bytes (for the benchmark).
pub fn get(
    server: SocketAddr,
    file: &str,
    blksize: Option<u16>,
    windowsize: Option<u16>,
    keep: bool,
) -> Result<Download, GetError> {
    get_with_ack_delay(server, file, blksize, windowsize, keep, Duration::ZERO)
}

/// Like [`get`], but waits `ack_delay` before each end-of-window ACK: on loopback the round
/// trip is nearly free, so the benchmark uses this to show what a window buys on a link with
/// latency (a routed provisioning VLAN, a WAN-attached site). Labelled as emulated wherever
/// its numbers are printed.
pub fn get_with_ack_delay(
    server: SocketAddr,
    file: &str,
    blksize: Option<u16>,
    windowsize: Option<u16>,
    keep: bool,
    ack_delay: Duration,
) -> Result<Download, GetError> {
    let mut client = RawClient::new(server)?;
    client.set_timeout(Duration::from_millis(500))?;
    let b = blksize.map(|b| b.to_string());
    let w = windowsize.map(|w| w.to_string());
    let mut options: Vec<(&str, &str)> = Vec::new();
    if let Some(b) = &b {
        options.push(("blksize", b));
    }
    if let Some(w) = &w {
        options.push(("windowsize", w));
    }
    client.rrq(file, "octet", &options)?;
    let mut blk = 512usize;
    let mut window = 1u64;
    let mut oack = Vec::new();
    let mut tid: Option<SocketAddr> = None;
    let mut received: u64 = 0; // blocks in order so far
    let mut since_ack: u64 = 0;
    let mut data = Vec::new();
    let mut bytes = 0u64;
    let mut timeouts = 0;
    loop {
        let Some((reply, from)) = client.recv()? else {
            timeouts += 1;
            if timeouts > 10 {
                return Err(GetError::Timeout(format!("after block {received}")));
            }
            match tid {
                // Re-ACK what we have; the server resends from there.
                Some(t) => client.send_to(&ack_bytes(received as u16), t)?,
                None => client.rrq(file, "octet", &options)?,
            }
            continue;
        };
        if tid.is_some_and(|t| t != from) {
            continue;
        }
        timeouts = 0;
        match reply {
            Reply::Oack(opts) if tid.is_none() => {
                tid = Some(from);
                for (n, v) in &opts {
                    match n.as_str() {
                        "blksize" => blk = v.parse().map_err(|_| GetError::Protocol(v.clone()))?,
                        "windowsize" => {
                            window = v.parse().map_err(|_| GetError::Protocol(v.clone()))?
                        }
                        _ => {}
                    }
                }
                oack = opts;
                client.send_to(&ack_bytes(0), from)?;
            }
            Reply::Data { block, data: d } => {
                tid.get_or_insert(from);
                let expected = ((received + 1) & 0xffff) as u16;
                if block != expected {
                    // A gap, or a resent window whose ACK was lost: ACK the last in-order
                    // block so the server resends from there (RFC 7440 section 4). The
                    // server ignores the duplicate ACKs this produces.
                    client.send_to(&ack_bytes(received as u16), from)?;
                    since_ack = 0;
                    continue;
                }
                received += 1;
                since_ack += 1;
                bytes += d.len() as u64;
                if keep {
                    data.extend_from_slice(&d);
                }
                let last = d.len() < blk;
                if last || since_ack == window {
                    if !ack_delay.is_zero() {
                        std::thread::sleep(ack_delay);
                    }
                    client.send_to(&ack_bytes(received as u16), from)?;
                    since_ack = 0;
                }
                if last {
                    return Ok(Download { data, bytes, oack });
                }
            }
            Reply::Error { code, message } => return Err(GetError::Server { code, message }),
            other => return Err(GetError::Protocol(format!("unexpected {other:?}"))),
        }
    }
}
