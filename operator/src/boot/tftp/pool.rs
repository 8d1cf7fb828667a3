//! The event loops transfers run on: a few threads, each with its own current-thread tokio
//! runtime, transfers dealt out round-robin. A transfer is a strict ping-pong (send a block,
//! wait for its ACK); on one shared multi-thread runtime every wake-up can hop between worker
//! threads, which costs more than the packet. Per-thread loops keep each transfer's wake-ups on
//! one thread, the way a thread-per-client server gets it for free, without a thread per client.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;

use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::TftpMetrics;

pub(crate) type Job = Pin<Box<dyn Future<Output = ()> + Send>>;

pub(crate) struct TransferPool {
    lanes: Vec<mpsc::UnboundedSender<Job>>,
    next: AtomicUsize,
    threads: Vec<JoinHandle<()>>,
}

impl TransferPool {
    /// Starts `threads` loops (0: one per CPU).
    pub fn start(threads: usize, metrics: TftpMetrics) -> std::io::Result<Self> {
        let n = if threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            threads
        };
        let mut lanes = Vec::with_capacity(n);
        let mut handles = Vec::with_capacity(n);
        for i in 0..n {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
            let metrics = metrics.clone();
            let handle = std::thread::Builder::new()
                .name(format!("tftp-{i}"))
                .spawn(move || {
                    runtime.block_on(async move {
                        let mut transfers = JoinSet::new();
                        loop {
                            tokio::select! {
                                job = rx.recv() => match job {
                                    Some(job) => {
                                        transfers.spawn(job);
                                    }
                                    None => break,
                                },
                                Some(joined) = transfers.join_next(), if !transfers.is_empty() => {
                                    if let Err(e) = joined
                                        && e.is_panic()
                                    {
                                        metrics.panics.inc();
                                        tracing::error!(error = %e, "tftp: a transfer task panicked; this is a bug, please report it");
                                    }
                                }
                            }
                        }
                        // The server stopped: transfers in progress are dropped, which releases
                        // their slots.
                        transfers.shutdown().await;
                    });
                })?;
            lanes.push(tx);
            handles.push(handle);
        }
        Ok(TransferPool {
            lanes,
            next: AtomicUsize::new(0),
            threads: handles,
        })
    }

    /// Hands a transfer to the next loop. False when the loops are gone (shutting down).
    pub fn spawn(&self, job: Job) -> bool {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.lanes.len();
        self.lanes[i].send(job).is_ok()
    }

    /// Stops every loop (aborting their transfers) and waits for the threads.
    pub async fn shutdown(self) {
        drop(self.lanes);
        let threads = self.threads;
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
    }
}
