//! recast's read-only TFTP server: what PXE ROMs fetch first (the iPXE binary), before the rest
//! of the boot goes over HTTP.
//!
//! RFC 1350 with blksize (RFC 2348), timeout and tsize (RFC 2349) and windowsize (RFC 7440).
//! Every transfer is a tokio task with its own UDP socket (its TID); a per-client budget keeps
//! the server from being an amplifier; files come from a [`FileSource`], confined to the boot
//! root when they come from disk ([`FsSource`]). The packet codec ([`packet`]), option
//! negotiation ([`options`]), path rules ([`path`]) and budgets ([`budget`]) are pure and tested
//! on their own; this module and [`transfer`] are the I/O shell.
//!
//! async-tftp was considered: it has no windowsize, no per-client budget, and its handler does
//! not see the client, so the shell is ours.

pub mod budget;
pub mod options;
pub mod packet;
pub mod path;
mod pool;
pub mod slots;
pub mod source;
pub mod transfer;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;

pub use budget::{BudgetConfig, ClientBudgets};
pub use options::Limits;
pub use path::{BootPath, PathError};
pub use source::{FileSource, FsSource, OpenError, OpenedFile};
pub use transfer::Outcome;

use packet::{ErrorCode, Packet};
use slots::{Admit, SlotTable};

#[derive(Clone, Debug)]
pub struct TftpConfig {
    /// Where requests arrive (UDP 69 in production). Transfers answer from an ephemeral port on
    /// the same address.
    pub listen: SocketAddr,
    pub limits: Limits,
    /// Resends of a window (or OACK) before the client is given up.
    pub max_retries: u32,
    /// A transfer whose client acknowledges nothing new for this long ends, whatever the
    /// retransmission timeout: a slot is never held for long by a client that does not answer.
    pub max_stall: Duration,
    /// The doubling retransmission wait stops growing here.
    pub max_backoff: Duration,
    /// Transfers in progress across all clients; beyond it requests get "server busy". Each
    /// holds at most `limits.max_window_bytes` of window plus a 128 KiB read buffer, so the
    /// default bounds the server's transfer memory near 192 MiB.
    pub max_transfers: usize,
    pub budget: BudgetConfig,
    /// Threads running transfers, each with its own event loop (0: one per CPU); see
    /// `pool.rs` for why transfers do not share the caller's runtime.
    pub transfer_threads: usize,
}

impl Default for TftpConfig {
    fn default() -> Self {
        TftpConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 69)),
            limits: Limits::default(),
            max_retries: 5,
            max_stall: Duration::from_secs(30),
            max_backoff: Duration::from_secs(8),
            max_transfers: 512,
            budget: BudgetConfig::default(),
            transfer_threads: 0,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TftpError {
    #[error(
        "cannot bind the TFTP socket on {addr}: {source} (port 69 needs root or CAP_NET_BIND_SERVICE, and no other TFTP server may hold it)"
    )]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the TFTP socket failed: {0}")]
    Socket(#[source] std::io::Error),
    #[error(
        "cannot start the TFTP transfer threads: {0} (the process may be out of threads or memory)"
    )]
    Threads(#[source] std::io::Error),
}

pub use crate::metrics::TftpMetrics;

/// State shared by the listener and every transfer task.
pub(crate) struct ServerShared {
    config: TftpConfig,
    source: Arc<dyn FileSource>,
    budgets: Mutex<ClientBudgets>,
    /// Transfers in progress by client (address, port): a retransmitted RRQ from the same
    /// client port is a duplicate, not a second transfer. Each holds the signal that cancels
    /// it when its slot is given to a new request (see `slots`).
    active: Mutex<SlotTable<Arc<tokio::sync::Notify>>>,
    metrics: TftpMetrics,
}

impl ServerShared {
    /// Waits until `ip`'s budget allows `packets` more packets of `bytes` in all.
    async fn throttle(&self, ip: IpAddr, packets: usize, bytes: usize) {
        loop {
            // A panic elsewhere while holding the lock: keep serving without budgets rather
            // than wedge every transfer.
            let verdict = self
                .budgets()
                .spend_packets(ip, packets, bytes, Instant::now());
            match verdict {
                Ok(()) => return,
                Err(wait) => tokio::time::sleep(wait).await,
            }
        }
    }

    /// Spends budget for an error reply if there is any, without waiting: the listener must
    /// never stall on one noisy client, and an unsent error reply costs nobody anything.
    fn allow(&self, ip: IpAddr, bytes: usize) -> bool {
        self.budgets().spend(ip, bytes, Instant::now()).is_ok()
    }

    fn budgets(&self) -> std::sync::MutexGuard<'_, ClientBudgets> {
        self.budgets.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn active(&self) -> std::sync::MutexGuard<'_, SlotTable<Arc<tokio::sync::Notify>>> {
        self.active.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The client of transfer `id` answered: its slot can no longer be taken by a newcomer.
    pub(crate) fn confirm(&self, client: &SocketAddr, id: u64) {
        self.active().confirm(client, id);
    }
}

/// Releases a transfer's slot however its task ends (completion, error, or abort on shutdown),
/// unless eviction already released it.
struct Slot {
    shared: Arc<ServerShared>,
    client: SocketAddr,
    id: u64,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let held = self.shared.active().release(&self.client, self.id);
        if held {
            self.shared
                .budgets()
                .end_transfer(self.client.ip(), Instant::now());
            self.shared.metrics.active.dec();
        }
    }
}

pub struct TftpServer {
    socket: UdpSocket,
    shared: Arc<ServerShared>,
}

impl TftpServer {
    pub async fn bind(
        config: TftpConfig,
        source: Arc<dyn FileSource>,
        metrics: TftpMetrics,
    ) -> Result<Self, TftpError> {
        let socket = UdpSocket::bind(config.listen)
            .await
            .map_err(|source| TftpError::Bind {
                addr: config.listen,
                source,
            })?;
        let budgets = Mutex::new(ClientBudgets::new(config.budget.clone()));
        let active = Mutex::new(SlotTable::new(config.max_transfers));
        Ok(TftpServer {
            socket,
            shared: Arc::new(ServerShared {
                config,
                source,
                budgets,
                active,
                metrics,
            }),
        })
    }

    pub fn local_addr(&self) -> Result<SocketAddr, TftpError> {
        self.socket.local_addr().map_err(TftpError::Socket)
    }

    /// Serves until `shutdown` completes; transfers in progress are then aborted.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), TftpError> {
        let pool = pool::TransferPool::start(
            self.shared.config.transfer_threads,
            self.shared.metrics.clone(),
        )
        .map_err(TftpError::Threads)?;
        // Large enough for any datagram, so an oversized request is seen whole and refused by
        // the parser instead of being silently truncated into something valid.
        let mut buf = vec![0u8; 65536];
        tokio::pin!(shutdown);
        let result = loop {
            tokio::select! {
                _ = &mut shutdown => break Ok(()),
                received = self.socket.recv_from(&mut buf) => {
                    let (len, from) = match received {
                        Ok(r) => r,
                        // An ICMP error from an earlier reply; not fatal for the listener.
                        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => continue,
                        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => continue,
                        Err(e) => break Err(TftpError::Socket(e)),
                    };
                    self.handle(&buf[..len], from, &pool).await;
                }
            }
        };
        pool.shutdown().await;
        result
    }

    async fn reply_error(&self, to: SocketAddr, code: ErrorCode, message: &str) {
        let reply = packet::encode_error(code, message);
        if self.shared.allow(to.ip(), reply.len()) {
            let _ = self.socket.send_to(&reply, to).await;
        }
    }

    fn refuse(&self, reason: &str) {
        self.shared
            .metrics
            .refused
            .get_or_create(&vec![("reason".to_string(), reason.to_string())])
            .inc();
    }

    async fn handle(&self, datagram: &[u8], from: SocketAddr, pool: &pool::TransferPool) {
        let request = match packet::parse(datagram) {
            Ok(Packet::Rrq(request)) => request,
            Ok(Packet::Wrq(request)) => {
                self.refuse("write_request");
                tracing::info!(client = %from, file = %request.filename, "tftp: write request refused (read-only server)");
                self.reply_error(
                    from,
                    ErrorCode::AccessViolation,
                    "write requests are refused: this TFTP server is read-only",
                )
                .await;
                return;
            }
            // Never answer an ERROR (RFC 1350), or the two sides could bounce errors forever.
            Ok(Packet::Error { .. }) => return,
            Ok(Packet::Data { .. } | Packet::Ack { .. } | Packet::Oack { .. }) => {
                self.refuse("not_a_request");
                self.reply_error(
                    from,
                    ErrorCode::UnknownTransferId,
                    "no transfer on this port; send a read request",
                )
                .await;
                return;
            }
            Err(e) => {
                self.shared.metrics.malformed.inc();
                tracing::debug!(client = %from, error = %e, "tftp: malformed packet");
                self.reply_error(
                    from,
                    ErrorCode::IllegalOperation,
                    &format!("malformed request: {e}"),
                )
                .await;
                return;
            }
        };
        if self.shared.active().contains(&from) {
            // The client resent its RRQ before our first answer reached it; the transfer
            // already running answers it.
            return;
        }
        let path = match path::normalize(&request.filename) {
            Ok(p) => p,
            Err(e) => {
                self.refuse("path");
                tracing::info!(client = %from, file = %request.filename, reason = %e, "tftp: request refused");
                self.reply_error(from, ErrorCode::AccessViolation, &e.to_string())
                    .await;
                return;
            }
        };
        let started = self
            .shared
            .budgets()
            .start_transfer(from.ip(), Instant::now());
        if let Err(e) = started {
            self.refuse("client_budget");
            tracing::info!(client = %from, file = %path, reason = %e, "tftp: request refused");
            self.reply_error(from, ErrorCode::NotDefined, &e.to_string())
                .await;
            return;
        }
        let cancel = Arc::new(tokio::sync::Notify::new());
        let admitted = self
            .shared
            .active()
            .admit(from, Instant::now(), cancel.clone());
        let id = match admitted {
            Admit::Duplicate => {
                // Raced with the check above; the running transfer answers it.
                self.shared
                    .budgets()
                    .end_transfer(from.ip(), Instant::now());
                return;
            }
            Admit::Busy => {
                self.shared
                    .budgets()
                    .end_transfer(from.ip(), Instant::now());
                self.refuse("server_busy");
                self.reply_error(
                    from,
                    ErrorCode::NotDefined,
                    "server busy; try again shortly",
                )
                .await;
                return;
            }
            Admit::Admitted { id, evicted } => {
                if let Some((client, _, cancel)) = evicted {
                    // Its slot was freed in the table; its budget and gauge are freed here,
                    // and its task ends at its next await.
                    self.shared
                        .budgets()
                        .end_transfer(client.ip(), Instant::now());
                    self.shared.metrics.active.dec();
                    cancel.notify_one();
                    self.refuse("evicted_unanswered");
                    tracing::debug!(evicted = %client, "tftp: table full; the oldest transfer whose client never answered gave up its slot");
                }
                id
            }
        };
        self.shared.metrics.active.inc();
        let slot = Slot {
            shared: self.shared.clone(),
            client: from,
            id,
        };
        let local = SocketAddr::new(self.shared.config.listen.ip(), 0);
        let shared = self.shared.clone();
        let job: pool::Job = Box::pin(async move {
            let _slot = slot;
            let socket = match UdpSocket::bind(local).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(client = %from, error = %e, "tftp: cannot open a transfer socket");
                    shared
                        .metrics
                        .transfers
                        .get_or_create(&vec![("outcome".into(), "network_error".into())])
                        .inc();
                    return;
                }
            };
            let transfer = transfer::Transfer {
                shared: shared.clone(),
                client: from,
                id,
                request,
                path,
                socket,
            };
            let start = Instant::now();
            let mut progress = transfer::Progress::default();
            let outcome = tokio::select! {
                o = transfer.run(&mut progress) => o,
                _ = cancel.notified() => Outcome::Evicted,
            };
            shared.metrics.bytes_sent.inc_by(progress.bytes);
            shared
                .metrics
                .transfers
                .get_or_create(&vec![("outcome".into(), outcome.label().into())])
                .inc();
            let (blksize, windowsize) = progress
                .negotiated
                .as_ref()
                .map_or((0, 0), |n| (n.blksize, n.windowsize));
            let detail = match &outcome {
                Outcome::Completed | Outcome::TimedOut | Outcome::Evicted => String::new(),
                Outcome::AbortedByClient { code, message } => {
                    format!("client error {code}: {message}")
                }
                Outcome::Refused { code, reason } => format!("error {}: {reason}", code.as_u16()),
                Outcome::NetworkError(e) => e.clone(),
            };
            tracing::info!(
                client = %from,
                file = %transfer.path,
                mode = %transfer.request.mode,
                outcome = outcome.label(),
                bytes = progress.bytes,
                blocks = progress.blocks,
                blksize,
                windowsize,
                retransmits = progress.retransmits,
                duration_ms = transfer::elapsed_ms(start),
                detail,
                "tftp transfer"
            );
        });
        // Refused only while shutting down; dropping the job releases its slot.
        if !pool.spawn(job) {
            tracing::debug!(client = %from, "tftp: shutting down, request dropped");
        }
    }
}
