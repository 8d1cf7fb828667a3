//! The boot service's multicast sessions: one `udp-sender` per wave batch (or per image for
//! automatic attempts that arm together), started by the first task of the batch and joined by
//! the others while it waits for receivers. The engine's arguments, its output and the join
//! decision are recast_core::multicast's; this module runs the processes and keeps their
//! figures for the task, the wave status and /metrics.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use recast_core::imaging::{TaskBlob, TaskMulticast};
use recast_core::multicast::{
    self, JoinDecision, SessionFigures, SessionPhase, SessionPlan, Settings, Stream,
};
use tokio::io::AsyncReadExt;

use crate::metrics::Metrics;

/// The boot service's multicast flags.
#[derive(Clone, Debug)]
pub struct MulticastConfig {
    pub settings: Settings,
    /// How long automatic attempts (no wave) of one image wait for each other after the first
    /// machine joined; 0: automatic attempts download over HTTP.
    pub automatic_wait_seconds: u32,
}

/// Which machines share a session.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Batch {
    /// One batch of a ReimageWave (its index in status.batches).
    Wave {
        namespace: String,
        name: String,
        index: u32,
    },
    /// Automatic attempts (signals, requests) for the same image.
    Automatic,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SessionKey {
    /// The verified image's sha256.
    pub digest: String,
    pub batch: Batch,
}

/// How long an ended session is remembered (it keeps its batch on HTTP and shows in status).
const REMEMBER: Duration = Duration::from_secs(3600);

struct Tracked {
    figures: SessionFigures,
    sending_since: Option<Instant>,
    /// When the figures stopped moving (the transfer completed or the sender exited).
    finished: Option<Instant>,
    exited: bool,
    /// udp-sender's last lines that are not figures (its errors), for the log.
    said: std::collections::VecDeque<String>,
}

struct Live {
    slot: u16,
    plan: SessionPlan,
    /// What the session sends, as it was when it started: joiners are told this.
    stream: Stream,
    boot_manager: Option<TaskBlob>,
    tracked: Arc<Mutex<Tracked>>,
}

impl Live {
    /// Whether its slot (group and port) may serve another session: not while the sender
    /// runs, nor while a receiver told to join it may still be waiting for it.
    fn holds_slot(&self) -> bool {
        let t = lock(&self.tracked);
        let patience = Duration::from_secs(
            (self.plan.max_wait_seconds.min(multicast::MAX_WAIT_SECONDS)
                + multicast::START_TIMEOUT_MARGIN_SECONDS)
                .into(),
        );
        !t.exited || t.finished.is_some_and(|f| f.elapsed() < patience)
    }
}

/// A session as `recastctl wave status` and the logs show it.
#[derive(Clone, Debug, PartialEq)]
pub struct SessionView {
    pub key: SessionKey,
    pub group: String,
    pub port: u16,
    pub phase: SessionPhase,
    pub min_receivers: u32,
    pub joined: u32,
    pub dropped: u32,
    pub bytes: u64,
    pub size: u64,
    /// Mbit/s over the sending time so far (None before it started).
    pub rate_mbps: Option<f64>,
}

pub struct Sessions {
    config: MulticastConfig,
    live: Mutex<HashMap<SessionKey, Live>>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("config", &self.config)
            .field("sessions", &lock(&self.live).len())
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Sessions {
    pub fn new(config: MulticastConfig, metrics: Arc<Metrics>) -> Sessions {
        Sessions {
            config,
            live: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    pub fn config(&self) -> &MulticastConfig {
        &self.config
    }

    /// The join for one machine of `key`'s batch, starting the batch's session if none ran
    /// yet; Err(why) when the machine downloads over HTTP instead.
    pub fn join(
        &self,
        key: SessionKey,
        min_receivers: u32,
        max_wait_seconds: u32,
        file: PathBuf,
        stream: Stream,
        boot_manager: Option<TaskBlob>,
    ) -> Result<TaskMulticast, String> {
        let mut live = lock(&self.live);
        live.retain(|_, l| {
            lock(&l.tracked)
                .finished
                .is_none_or(|t| t.elapsed() < REMEMBER)
        });
        let phase = live.get(&key).map(|l| lock(&l.tracked).figures.phase);
        let held: Vec<u16> = live
            .values()
            .filter(|l| l.holds_slot())
            .map(|l| l.slot)
            .collect();
        let free = (0..self.config.settings.max_sessions).find(|s| !held.contains(s));
        let renewable = key.batch == Batch::Automatic;
        match multicast::decide_join(phase, free, renewable) {
            JoinDecision::Join => {
                let l = live.get(&key).expect("a phase came from it");
                Ok(multicast::join(&l.plan, &l.stream, l.boot_manager.clone()))
            }
            JoinDecision::Download(why) => Err(why),
            JoinDecision::Start { slot } => {
                let (group, port) = self
                    .config
                    .settings
                    .slot(slot)
                    .expect("decide_join gives free slots in range");
                let plan = SessionPlan {
                    group,
                    port,
                    min_receivers: min_receivers.max(1),
                    max_wait_seconds,
                    file: file.to_string_lossy().into_owned(),
                };
                let tracked = self.start(&key, &plan, stream.size)?;
                let join = multicast::join(&plan, &stream, boot_manager.clone());
                live.insert(
                    key,
                    Live {
                        slot,
                        plan,
                        stream,
                        boot_manager,
                        tracked,
                    },
                );
                Ok(join)
            }
        }
    }

    fn start(
        &self,
        key: &SessionKey,
        plan: &SessionPlan,
        size: u64,
    ) -> Result<Arc<Mutex<Tracked>>, String> {
        let args = multicast::sender_args(&self.config.settings, plan);
        let mut child = tokio::process::Command::new("udp-sender")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                format!("cannot start udp-sender (Debian/Ubuntu: apt install udpcast): {e}")
            })?;
        let name = format!("{}:{}", plan.group, plan.port);
        tracing::info!(session = %name, image = %key.digest, batch = ?key.batch, min_receivers = plan.min_receivers, max_wait_s = plan.max_wait_seconds, "multicast session waiting for receivers");
        self.metrics.multicast.session_event("started");
        let tracked = Arc::new(Mutex::new(Tracked {
            figures: SessionFigures::default(),
            sending_since: None,
            finished: None,
            exited: false,
            said: Default::default(),
        }));
        let out = child.stdout.take().expect("piped");
        let err = child.stderr.take().expect("piped");
        let metrics = self.metrics.clone();
        let t = tracked.clone();
        tokio::spawn(async move {
            let read_out = follow(out, t.clone(), metrics.clone(), name.clone());
            let read_err = follow(err, t.clone(), metrics.clone(), name.clone());
            let _ = tokio::join!(read_out, read_err);
            let status = child.wait().await;
            let mut g = lock(&t);
            g.figures = g.figures.clone().exited(size);
            g.exited = true;
            g.finished.get_or_insert_with(Instant::now);
            let f = g.figures.clone();
            let said: Vec<String> = g.said.iter().cloned().collect();
            drop(g);
            if f.phase != SessionPhase::Complete {
                tracing::warn!(session = %name, "udp-sender's last words: {}", said.join(" | "));
            }
            let outcome = if f.phase == SessionPhase::Complete {
                "complete"
            } else {
                "ended"
            };
            metrics.multicast.session_event(outcome);
            tracing::info!(session = %name, ?status, joined = f.joined, dropped = f.dropped, bytes = f.bytes, "multicast session {outcome}");
        });
        Ok(tracked)
    }

    /// Every session remembered, for the wave status and the logs.
    pub fn views(&self) -> Vec<SessionView> {
        let live = lock(&self.live);
        let mut views: Vec<SessionView> = live
            .iter()
            .map(|(key, l)| {
                let t = lock(&l.tracked);
                let rate_mbps = t.sending_since.map(|since| {
                    let end = t.finished.unwrap_or_else(Instant::now);
                    let secs = end.duration_since(since).as_secs_f64().max(0.001);
                    t.figures.bytes as f64 * 8.0 / secs / 1e6
                });
                SessionView {
                    key: key.clone(),
                    group: l.plan.group.to_string(),
                    port: l.plan.port,
                    phase: t.figures.phase,
                    min_receivers: l.plan.min_receivers,
                    joined: t.figures.joined,
                    dropped: t.figures.dropped,
                    bytes: t.figures.bytes,
                    size: l.stream.size,
                    rate_mbps,
                }
            })
            .collect();
        views.sort_by(|a, b| (a.group.as_str(), a.port).cmp(&(b.group.as_str(), b.port)));
        views
    }
}

/// Reads one of udp-sender's outputs to its end, line by line (`\r` ends its progress lines).
async fn follow(
    mut from: impl tokio::io::AsyncRead + Unpin,
    tracked: Arc<Mutex<Tracked>>,
    metrics: Arc<Metrics>,
    name: String,
) {
    let mut buf = [0u8; 4096];
    let mut pending = String::new();
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        pending.push_str(&String::from_utf8_lossy(&buf[..n]));
        while let Some(end) = pending.find(['\r', '\n']) {
            let line: String = pending.drain(..=end).collect();
            let parsed = multicast::parse_sender_line(&line);
            let mut t = lock(&tracked);
            if parsed == multicast::SenderLine::Other {
                let line = line.trim();
                if !line.is_empty() {
                    if t.said.len() == 5 {
                        t.said.pop_front();
                    }
                    t.said.push_back(line.chars().take(300).collect());
                }
                continue;
            }
            t.figures = t.figures.clone().after(&parsed);
            match parsed {
                multicast::SenderLine::Started => {
                    t.sending_since.get_or_insert_with(Instant::now);
                }
                multicast::SenderLine::Complete => {
                    t.finished.get_or_insert_with(Instant::now);
                }
                _ => {}
            }
            let f = t.figures.clone();
            drop(t);
            metrics
                .multicast
                .session(&name, f.joined, f.dropped, f.bytes);
        }
        // A line never ends only in a broken sender; keep the buffer bounded.
        if pending.len() > 64 * 1024 {
            pending.clear();
        }
    }
}

impl crate::controller::wave::BatchSessions for Sessions {
    fn batch_sessions(
        &self,
        namespace: &str,
        wave: &str,
    ) -> Vec<(u32, recast_crds::wave::BatchMulticast)> {
        use recast_crds::wave::{BatchMulticast, MulticastPhase};
        self.views()
            .into_iter()
            .filter_map(|v| match &v.key.batch {
                Batch::Wave {
                    namespace: ns,
                    name,
                    index,
                } if ns == namespace && name == wave => Some((
                    *index,
                    BatchMulticast {
                        session: format!("{}:{}", v.group, v.port),
                        phase: match v.phase {
                            SessionPhase::Waiting => MulticastPhase::Waiting,
                            SessionPhase::Sending => MulticastPhase::Sending,
                            SessionPhase::Complete => MulticastPhase::Complete,
                            SessionPhase::Ended => MulticastPhase::Ended,
                        },
                        min_receivers: v.min_receivers,
                        receivers: v.joined,
                        dropped: v.dropped,
                        bytes: v.bytes,
                        size: v.size,
                        rate_mbps: v.rate_mbps.map(|r| r.round() as u32),
                    },
                )),
                _ => None,
            })
            .collect()
    }
}
