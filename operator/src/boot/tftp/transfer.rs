//! One read transfer: its own UDP socket (the server's TID), the OACK handshake, the window of
//! DATA blocks, retransmission on timeout, and the end of the transfer. I/O lives here; the
//! decisions about which ACK means what are in [`AckTracker`], which is pure.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::UdpSocket;

use super::ServerShared;
use super::options::{Negotiated, negotiate};
use super::packet::{self, ErrorCode, Mode, Packet, Request};
use super::path::BootPath;
use super::source::{OpenError, OpenedFile};

/// How a transfer ended; also the `outcome` label of the metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Completed,
    /// The client stopped answering and the retries ran out.
    TimedOut,
    /// The client sent an ERROR (code 8: it refused our OACK).
    AbortedByClient {
        code: u16,
        message: String,
    },
    /// The file could not be opened or read; the client got an ERROR.
    Refused {
        code: ErrorCode,
        reason: String,
    },
    /// The server's own socket failed.
    NetworkError(String),
    /// Its client never answered and the table was full: the slot went to a new request.
    Evicted,
}

impl Outcome {
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::TimedOut => "timed_out",
            Outcome::AbortedByClient { code: 8, .. } => "options_refused",
            Outcome::AbortedByClient { .. } => "aborted_by_client",
            Outcome::Refused { .. } => "refused",
            Outcome::NetworkError(_) => "network_error",
            Outcome::Evicted => "evicted",
        }
    }
}

/// Window bookkeeping: blocks `acked+1 ..= acked+in_flight` are sent and unacknowledged.
/// Block numbers on the wire are 16 bits and roll over to 0 after 65535 (what tftp-hpa,
/// atftp and iPXE expect); internally blocks are counted in u64.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AckTracker {
    pub acked: u64,
    pub in_flight: u64,
}

impl AckTracker {
    /// The block index a wire ACK refers to, if it acknowledges new blocks. An ACK of a block
    /// already acknowledged (a duplicate, or a delayed one) returns None and must not cause a
    /// resend: answering duplicates is how the sorcerer's apprentice bug doubles traffic.
    pub fn advance(&self, wire_block: u16) -> Option<u64> {
        (1..=self.in_flight)
            .map(|k| self.acked + k)
            .find(|idx| (*idx & 0xffff) as u16 == wire_block)
    }
}

/// Reads a file block by block, converting to netascii when asked.
struct BlockReader {
    reader: BufReader<Box<dyn tokio::io::AsyncRead + Send + Unpin>>,
    netascii: bool,
    /// Converted bytes not yet emitted (netascii only; a CR LF pair may straddle blocks).
    pending: VecDeque<u8>,
    eof: bool,
}

impl BlockReader {
    fn new(file: OpenedFile, mode: Mode) -> Self {
        BlockReader {
            reader: BufReader::with_capacity(128 * 1024, file.reader),
            netascii: mode == Mode::Netascii,
            pending: VecDeque::new(),
            eof: false,
        }
    }

    /// Appends the next block (exactly `blksize` bytes unless the file ends) to `out`.
    async fn next_block(&mut self, blksize: usize, out: &mut Vec<u8>) -> std::io::Result<()> {
        let start = out.len();
        if !self.netascii {
            out.resize(start + blksize, 0);
            let mut filled = 0;
            while filled < blksize {
                let n = self.reader.read(&mut out[start + filled..]).await?;
                if n == 0 {
                    break;
                }
                filled += n;
            }
            out.truncate(start + filled);
            return Ok(());
        }
        while self.pending.len() < blksize && !self.eof {
            let chunk = self.reader.fill_buf().await?;
            if chunk.is_empty() {
                self.eof = true;
                break;
            }
            for &b in chunk {
                match b {
                    b'\n' => self.pending.extend([b'\r', b'\n']),
                    b'\r' => self.pending.extend([b'\r', 0]),
                    other => self.pending.push_back(other),
                }
            }
            let n = chunk.len();
            self.reader.consume(n);
        }
        let take = blksize.min(self.pending.len());
        out.extend(self.pending.drain(..take));
        Ok(())
    }
}

/// The result of waiting for the client's answer.
enum Answer {
    Acked(u64),
    Aborted { code: u16, message: String },
    Timeout,
}

pub(super) struct Transfer {
    pub shared: Arc<ServerShared>,
    pub client: SocketAddr,
    /// Its slot's id (see `slots`).
    pub id: u64,
    pub request: Request,
    pub path: BootPath,
    pub socket: UdpSocket,
}

/// Per-transfer counters for the log line.
#[derive(Default)]
pub(super) struct Progress {
    pub bytes: u64,
    pub blocks: u64,
    pub retransmits: u64,
    pub negotiated: Option<Negotiated>,
}

impl Transfer {
    async fn send(&self, datagram: &[u8]) -> Result<(), Outcome> {
        self.shared
            .throttle(self.client.ip(), 1, datagram.len())
            .await;
        self.socket
            .send_to(datagram, self.client)
            .await
            .map(|_| ())
            .map_err(|e| Outcome::NetworkError(e.to_string()))
    }

    async fn send_error(&self, code: ErrorCode, message: &str) {
        // Best effort: the transfer ends either way.
        let _ = self.send(&packet::encode_error(code, message)).await;
    }

    pub async fn run(&self, progress: &mut Progress) -> Outcome {
        let config = &self.shared.config;
        if self.request.mode == Mode::Mail {
            let reason = "mail mode is obsolete (RFC 1350); request octet";
            self.send_error(ErrorCode::IllegalOperation, reason).await;
            return Outcome::Refused {
                code: ErrorCode::IllegalOperation,
                reason: reason.into(),
            };
        }
        let opened = match self.shared.source.open(&self.path, self.client).await {
            Ok(f) => f,
            Err(e) => {
                let code = match e {
                    OpenError::NotFound | OpenError::Declined => ErrorCode::FileNotFound,
                    OpenError::Denied(_) => ErrorCode::AccessViolation,
                    OpenError::Io(_) => ErrorCode::NotDefined,
                };
                let reason = e.to_string();
                self.send_error(code, &reason).await;
                return Outcome::Refused { code, reason };
            }
        };
        let neg = negotiate(
            &self.request.options,
            self.request.mode,
            opened.size,
            &config.limits,
        );
        progress.negotiated = Some(neg.clone());
        let mut reader = BlockReader::new(opened, self.request.mode);
        // Answers are 4-byte ACKs or short ERRORs; anything longer is not for us and is
        // dropped by the parser whole or truncated alike.
        let mut buf = vec![0u8; 1024];

        if !neg.oack.is_empty() {
            let oack = packet::encode_oack(&neg.oack);
            let window = VecDeque::from([oack]);
            // Block 0 is the OACK: the client answers it with ACK 0.
            let tracker = AckTracker {
                acked: u64::MAX,
                in_flight: 1,
            };
            match self
                .deliver(&window, &tracker, &neg, progress, true, &mut buf, &mut None)
                .await
            {
                Ok(Answer::Acked(_)) => {}
                Ok(Answer::Aborted { code, message }) => {
                    return Outcome::AbortedByClient { code, message };
                }
                Ok(Answer::Timeout) => return Outcome::TimedOut,
                Err(outcome) => return outcome,
            }
        }

        let blksize = usize::from(neg.blksize);
        // Segmentation offload for windows of full blocks (see `send_window`).
        let mut gso = if neg.windowsize > 1 {
            enable_gso(&self.socket, 4 + blksize)
        } else {
            None
        };
        let mut window: VecDeque<Vec<u8>> = VecDeque::with_capacity(usize::from(neg.windowsize));
        let mut tracker = AckTracker {
            acked: 0,
            in_flight: 0,
        };
        let mut final_block: Option<u64> = None;
        let mut spare: Vec<Vec<u8>> = Vec::with_capacity(usize::from(neg.windowsize));
        loop {
            while window.len() < usize::from(neg.windowsize) && final_block.is_none() {
                let index = tracker.acked + window.len() as u64 + 1;
                // The block is read straight behind its header: no copy between file and wire.
                // Buffers of acknowledged blocks are reused: no allocation per block.
                let mut datagram = spare.pop().unwrap_or_default();
                datagram.clear();
                datagram.reserve(4 + blksize);
                datagram.extend_from_slice(&packet::data_header((index & 0xffff) as u16));
                if let Err(e) = reader.next_block(blksize, &mut datagram).await {
                    let reason = format!("cannot read the file: {e}");
                    self.send_error(ErrorCode::NotDefined, &reason).await;
                    return Outcome::Refused {
                        code: ErrorCode::NotDefined,
                        reason,
                    };
                }
                if datagram.len() - 4 < blksize {
                    final_block = Some(index);
                }
                window.push_back(datagram);
            }
            tracker.in_flight = window.len() as u64;
            match self
                .deliver(&window, &tracker, &neg, progress, false, &mut buf, &mut gso)
                .await
            {
                Ok(Answer::Acked(index)) => {
                    let newly = index - tracker.acked;
                    for _ in 0..newly {
                        if let Some(sent) = window.pop_front() {
                            progress.bytes += (sent.len() - 4) as u64;
                            progress.blocks += 1;
                            spare.push(sent);
                        }
                    }
                    tracker.acked = index;
                    if final_block == Some(index) {
                        return Outcome::Completed;
                    }
                }
                Ok(Answer::Aborted { code, message }) => {
                    return Outcome::AbortedByClient { code, message };
                }
                Ok(Answer::Timeout) => return Outcome::TimedOut,
                Err(outcome) => return outcome,
            }
        }
    }

    /// Sends every datagram of the window with one budget check. With `gso` (the segment size,
    /// when UDP segmentation offload is on) the window goes to the kernel as one buffer that it
    /// cuts into datagrams: one pass through the UDP stack, and on loopback one wake-up of the
    /// client for the whole window instead of one per datagram it catches in flight. Otherwise
    /// one sendmmsg(2) where the OS has it.
    async fn send_window(
        &self,
        window: &VecDeque<Vec<u8>>,
        gso: &mut Option<usize>,
    ) -> Result<(), Outcome> {
        if window.len() == 1 {
            return self.send(&window[0]).await;
        }
        let bytes = window.iter().map(Vec::len).sum();
        self.shared
            .throttle(self.client.ip(), window.len(), bytes)
            .await;
        if let Some(segment) = *gso {
            match self.send_segmented(window, segment).await {
                Ok(()) => return Ok(()),
                // Refused at send time (a device without checksum offload answers EIO): the
                // rest of the transfer goes without, and this window is sent again below.
                Err(e) => {
                    tracing::debug!(client = %self.client, error = %e, "tftp: UDP segmentation offload refused; sending datagrams one by one");
                    *gso = None;
                }
            }
        }
        #[cfg(target_os = "linux")]
        let sent = self.sendmmsg(window).await;
        #[cfg(not(target_os = "linux"))]
        let sent = async {
            for datagram in window {
                self.socket.send_to(datagram, self.client).await?;
            }
            Ok(())
        }
        .await;
        sent.map_err(|e: std::io::Error| Outcome::NetworkError(e.to_string()))
    }

    /// The window as buffers of whole segments (every block but a final short one is exactly
    /// `segment` bytes, and the kernel takes up to 64 segments and 64 KiB per send).
    async fn send_segmented(
        &self,
        window: &VecDeque<Vec<u8>>,
        segment: usize,
    ) -> std::io::Result<()> {
        let per_send = (GSO_MAX_BYTES / segment).clamp(1, GSO_MAX_SEGMENTS);
        let mut joined = Vec::with_capacity(per_send * segment);
        let blocks: Vec<&Vec<u8>> = window.iter().collect();
        for chunk in blocks.chunks(per_send) {
            joined.clear();
            for datagram in chunk {
                joined.extend_from_slice(datagram);
            }
            self.socket.send_to(&joined, self.client).await?;
        }
        Ok(())
    }

    #[cfg(target_os = "linux")]
    async fn sendmmsg(&self, window: &VecDeque<Vec<u8>>) -> std::io::Result<()> {
        use rustix::net::addr::SocketAddrArg;
        use rustix::net::{MMsgHdr, SendAncillaryBuffer, SendFlags};
        let to = self.client.as_any();
        let iovs: Vec<[std::io::IoSlice<'_>; 1]> =
            window.iter().map(|d| [std::io::IoSlice::new(d)]).collect();
        let mut done = 0;
        while done < iovs.len() {
            self.socket.writable().await?;
            let sent = self.socket.try_io(tokio::io::Interest::WRITABLE, || {
                let mut controls: Vec<SendAncillaryBuffer<'_, '_, '_>> = iovs[done..]
                    .iter()
                    .map(|_| SendAncillaryBuffer::default())
                    .collect();
                let mut msgs: Vec<MMsgHdr<'_>> = controls
                    .iter_mut()
                    .zip(&iovs[done..])
                    .map(|(control, iov)| MMsgHdr::new_with_addr(&to, iov, control))
                    .collect();
                rustix::net::sendmmsg(&self.socket, &mut msgs, SendFlags::empty())
                    .map_err(std::io::Error::from)
            });
            match sent {
                // A full socket buffer sends part of the window; the rest goes when it drains.
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Sends the window and waits until the client acknowledges at least one new block,
    /// resending the whole window on each timeout (with backoff) until the retries run out.
    #[allow(clippy::too_many_arguments)]
    async fn deliver(
        &self,
        window: &VecDeque<Vec<u8>>,
        tracker: &AckTracker,
        neg: &Negotiated,
        progress: &mut Progress,
        is_oack: bool,
        buf: &mut [u8],
        gso: &mut Option<usize>,
    ) -> Result<Answer, Outcome> {
        let config = &self.shared.config;
        // Counted from the last progress (each call starts after one): retries end here even
        // when the client asked for long timeouts.
        let give_up = tokio::time::Instant::now() + config.max_stall;
        for attempt in 0..=config.max_retries {
            if tokio::time::Instant::now() >= give_up {
                break;
            }
            if attempt > 0 {
                progress.retransmits += window.len() as u64;
                self.shared.metrics.retransmits.inc_by(window.len() as u64);
            }
            self.send_window(window, gso).await?;
            let wait = if neg.timeout_from_client {
                neg.timeout
            } else {
                backoff(neg.timeout, attempt, config.max_backoff)
            };
            let deadline = (tokio::time::Instant::now() + wait).min(give_up);
            loop {
                let received =
                    match tokio::time::timeout_at(deadline, self.socket.recv_from(buf)).await {
                        Err(_elapsed) => break,
                        Ok(Err(e)) => {
                            // ICMP port unreachable surfaces as ECONNREFUSED on some systems:
                            // the client is gone, and the retries will end the transfer.
                            if e.kind() == std::io::ErrorKind::ConnectionRefused {
                                continue;
                            }
                            return Err(Outcome::NetworkError(e.to_string()));
                        }
                        Ok(Ok(r)) => r,
                    };
                let (len, from) = received;
                if from != self.client {
                    // RFC 1350: a packet from a foreign TID gets ERROR 5 and does not disturb
                    // the transfer.
                    self.shared.metrics.wrong_tid.inc();
                    let reply =
                        packet::encode_error(ErrorCode::UnknownTransferId, "unknown transfer id");
                    if self.shared.allow(from.ip(), reply.len()) {
                        let _ = self.socket.send_to(&reply, from).await;
                    }
                    continue;
                }
                match packet::parse(&buf[..len]) {
                    Ok(Packet::Ack { block }) => {
                        // The client answers from the address the request came from: it is
                        // not a spoofed request, and keeps its slot (see `slots`).
                        self.shared.confirm(&self.client, self.id);
                        if is_oack {
                            if block == 0 {
                                return Ok(Answer::Acked(0));
                            }
                            continue;
                        }
                        if let Some(index) = tracker.advance(block) {
                            return Ok(Answer::Acked(index));
                        }
                        // Duplicate or stale: ignored, the timer keeps running.
                    }
                    Ok(Packet::Error { code, message }) => {
                        return Ok(Answer::Aborted {
                            code: code.as_u16(),
                            message,
                        });
                    }
                    // Anything else from the client (a DATA, a repeated RRQ, garbage) does not
                    // belong in a read transfer; ignoring it keeps a confused or hostile client
                    // from driving our sends.
                    Ok(_) | Err(_) => {}
                }
            }
        }
        Ok(Answer::Timeout)
    }
}

/// Limits of one segmentation-offload send (Linux: UDP_MAX_SEGMENTS, and one IP datagram's
/// worth of payload).
const GSO_MAX_SEGMENTS: usize = 64;
const GSO_MAX_BYTES: usize = 65_000;

/// Turns on UDP segmentation offload for datagrams of `segment` bytes; the segment size when
/// it is on. Only worth it when at least two blocks fit in one send.
fn enable_gso(socket: &UdpSocket, segment: usize) -> Option<usize> {
    if segment * 2 > GSO_MAX_BYTES {
        return None;
    }
    #[cfg(target_os = "linux")]
    {
        let size = i32::try_from(segment).ok()?;
        nix::sys::socket::setsockopt(socket, nix::sys::socket::sockopt::UdpGsoSegment, &size)
            .ok()
            .map(|()| segment)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = socket;
        None
    }
}

/// Retransmission wait for the `attempt`-th send (0 is the first): doubling from `base`, never
/// above `max` (unless `base` itself is larger).
pub fn backoff(base: Duration, attempt: u32, max: Duration) -> Duration {
    let factor = 1u32.checked_shl(attempt.min(16)).unwrap_or(u32::MAX);
    base.saturating_mul(factor).min(max.max(base))
}

pub(super) fn elapsed_ms(start: Instant) -> u64 {
    start.elapsed().as_millis().min(u128::from(u64::MAX)) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_of_the_last_block_in_flight_advances() {
        let t = AckTracker {
            acked: 10,
            in_flight: 4,
        };
        assert_eq!(t.advance(14), Some(14));
        assert_eq!(t.advance(11), Some(11));
    }

    #[test]
    fn duplicate_and_stale_acks_do_not_advance() {
        let t = AckTracker {
            acked: 10,
            in_flight: 4,
        };
        assert_eq!(t.advance(10), None, "duplicate of the previous ACK");
        assert_eq!(t.advance(3), None, "old ACK");
        assert_eq!(t.advance(15), None, "ACK of a block not sent yet");
        let idle = AckTracker {
            acked: 10,
            in_flight: 0,
        };
        assert_eq!(idle.advance(11), None);
    }

    #[test]
    fn block_numbers_roll_over_to_zero() {
        let t = AckTracker {
            acked: 65534,
            in_flight: 3,
        };
        assert_eq!(t.advance(65535), Some(65535));
        assert_eq!(t.advance(0), Some(65536));
        assert_eq!(t.advance(1), Some(65537));
        assert_eq!(t.advance(2), None);
        let second_lap = AckTracker {
            acked: 65536 * 3 + 5,
            in_flight: 1,
        };
        assert_eq!(second_lap.advance(6), Some(65536 * 3 + 6));
        assert_eq!(second_lap.advance(5), None);
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let s = Duration::from_secs;
        assert_eq!(backoff(s(1), 0, s(8)), s(1));
        assert_eq!(backoff(s(1), 1, s(8)), s(2));
        assert_eq!(backoff(s(1), 3, s(8)), s(8));
        assert_eq!(backoff(s(1), 30, s(8)), s(8));
        assert_eq!(backoff(s(1), u32::MAX, s(8)), s(8));
        // A base above the cap is used as is rather than shortened.
        assert_eq!(backoff(s(10), 2, s(8)), s(10));
    }

    #[tokio::test]
    async fn netascii_converts_line_ends_across_block_boundaries() {
        let file = OpenedFile::from_bytes(b"a\nb\rc\r\n".to_vec());
        let mut r = BlockReader::new(file, Mode::Netascii);
        let mut all = Vec::new();
        loop {
            let mut block = Vec::new();
            r.next_block(3, &mut block).await.unwrap();
            let last = block.len() < 3;
            all.extend(block);
            if last {
                break;
            }
        }
        assert_eq!(all, b"a\r\nb\r\0c\r\0\r\n");
    }

    /// The sizes of the octet blocks a file of `len` bytes is sent in.
    async fn octet_block_sizes(len: usize, blksize: usize) -> Vec<usize> {
        let mut r = BlockReader::new(OpenedFile::from_bytes(vec![1u8; len]), Mode::Octet);
        let mut sizes = Vec::new();
        loop {
            let mut block = Vec::new();
            r.next_block(blksize, &mut block).await.unwrap();
            sizes.push(block.len());
            if block.len() < blksize {
                return sizes;
            }
        }
    }

    #[tokio::test]
    async fn octet_blocks_are_full_until_the_end() {
        assert_eq!(octet_block_sizes(10, 4).await, vec![4, 4, 2]);
        // A file that is a multiple of the block size ends with an empty block.
        assert_eq!(octet_block_sizes(8, 4).await, vec![4, 4, 0]);
    }
}
