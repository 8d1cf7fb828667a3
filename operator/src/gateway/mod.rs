//! The agent gateway: `POST /v1/reports` over HTTPS (rustls, ring), where every endpoint's
//! agent reports.
//!
//! Each request goes through, in order, cheapest and most local first: the source address's
//! own rate limit (a bounded table, [`limit::IpLimiter`]) and a deadline for reading the body
//! (slowloris), both before any shared budget is spent; the bearer token's shape and its
//! lookup in the in-memory mirror of `gateway.db` (so junk tokens cost no database work and no
//! shared budget); the global rate limit; the endpoint's own rate limit; strict schema
//! validation (`recast_crds::report`); the identity check (the report must name the endpoint
//! the token was issued for); freshness (`collectedAt` neither older than
//! `max_report_age` nor further ahead than `max_clock_skew`); and replay protection (the
//! sequence must exceed the last accepted one). Only then does the report reach the
//! endpoint's [`session::Session`], which derives the signals (`core::derive`) and hands the
//! controller an `Input::AgentReport` and/or `Input::Signals` through [`Backend::post_input`]
//! — only when something changed, and a plain heartbeat at most once per `heartbeat_period`.
//! A report that changes anything (an input for the controller, a heartbeat summary) has its
//! accepted sequence committed (to `gateway.db`, fsynced, or to the apiserver; batched with the
//! reports arriving meanwhile by [`credentials::GroupCommit`]) before the inputs are posted and
//! the 200 is sent: a crash right after a 200 cannot make that report replayable, and a copy
//! another gateway replica accepted first is refused without changing anything. A report at
//! rest (the facts this replica last handed on, no heartbeat due: most reports of a healthy
//! fleet) is answered once the sequence check in memory passes, and the flusher saves its mark
//! within `flush_interval`: its 200 does not wait for the apiserver. A copy of such a report may
//! then be answered by another replica, which judges it against its own memory (or by this one
//! after a crash before the flush): where that replica handed on the same facts, the copy hands
//! nothing on; where it did not, the copy is a change and is committed first (refused once the
//! mark is saved, else handing on facts the controller already has). No copy goes back past a
//! report that changed something. docs/gateway.md and docs/security/gateway.md say more.
//!
//! | status | meaning |
//! |---|---|
//! | 200 | accepted; the body is a `ReportReply` (JSON) with the update hold the agent must apply |
//! | 400 | not JSON, or not the report schema (the body says which field) |
//! | 401 | no token, unknown token, or revoked token |
//! | 403 | the report names another endpoint than the token's |
//! | 404 | the token's endpoint no longer exists |
//! | 408 | the body did not arrive within the body deadline (`body_timeout`) |
//! | 409 | the sequence is not above the last accepted one (replay) |
//! | 413 | the body is larger than 256 KiB |
//! | 415 | the Content-Type is not application/json |
//! | 422 | the report decodes but breaks a bound (length, count, format), or its `collectedAt` is too old or in the future |
//! | 429 | rate limited; Retry-After says when to come back |
//! | 503 | the store refused the write; retry later |

pub mod credentials;
pub mod enroll;
pub mod kube_ledger;
pub mod limit;
pub mod session;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use recast_crds::Endpoint;
use recast_crds::report::{AgentReport, MAX_REPORT_BYTES, ReportError, ReportReply};
use tokio::sync::watch;

use crate::clock::Clock;
/// Source addresses the per-address rate limit remembers at most.
pub const IP_TABLE_MAX: usize = 65_536;
pub use crate::http::tls::{
    HANDSHAKE_TIMEOUT, MAX_CONNECTIONS, MAX_CONNECTIONS_PER_IP, Peer, TlsError, serve_tls,
    tls_config,
};
use crate::store::{Backend, Key, policy_view_for};
use credentials::{CredentialError, CredentialStore, GroupCommit, MarkOutcome};
use limit::{Bucket, IpLimiter, Rate};
use recast_core::build::Build;
use recast_core::derive;
use recast_core::hold::{self, HoldFacts};
use recast_core::image::resolve_image;
use recast_core::lifecycle::Input;
use recast_core::time;
use session::{EndpointFacts, Session, Staleness, StoredState};

#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// A report that changes nothing is written at most this often per endpoint.
    pub heartbeat_period: Duration,
    pub endpoint_rate: Rate,
    pub global_rate: Rate,
    /// How long an endpoint's facts (hold, restart order, policy, image) are cached where the
    /// backend cannot say when they change; on Kubernetes a watch says so and they are read
    /// again exactly then.
    pub facts_ttl: Duration,
    /// How often silent endpoints are checked for HeartbeatLost.
    pub sweep_interval: Duration,
    /// How often sequences not yet saved are saved: the marks of reports at rest (answered
    /// before their mark is saved), and any whose commit failed.
    pub flush_interval: Duration,
    /// Requests per source address (before any token check). Agents behind one NAT share it.
    pub ip_rate: Rate,
    /// A request body must arrive within this long after its headers (slowloris).
    pub body_timeout: Duration,
    /// A report collected longer ago than this is refused (422).
    pub max_report_age: Duration,
    /// A report collected further in the future than this is refused (422).
    pub max_clock_skew: Duration,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            heartbeat_period: Duration::from_secs(600),
            // An agent reports every few minutes; 10 at once and one every 10 s sustained
            // leaves room for retries and restarts, not for a loop.
            endpoint_rate: Rate {
                burst: 10,
                per_second: 0.1,
            },
            global_rate: Rate {
                burst: 20_000,
                per_second: 10_000.0,
            },
            facts_ttl: Duration::from_secs(60),
            sweep_interval: Duration::from_secs(30),
            flush_interval: Duration::from_secs(5),
            // Generous: a site's agents may all come through one NAT address. It is there so
            // one address cannot spend the global budget, not to pace agents.
            ip_rate: Rate {
                burst: 400,
                per_second: 200.0,
            },
            body_timeout: Duration::from_secs(10),
            max_report_age: Duration::from_secs(3600),
            max_clock_skew: Duration::from_secs(600),
        }
    }
}

/// Sequences saved per transaction. One transaction for a whole fleet would hold the
/// credential database for tens of milliseconds, and every request whose token check is due
/// for its recheck (every 250 ms) would wait on it: a batch keeps that wait to a few
/// milliseconds, and still makes 10,000 endpoints' marks 20 writes, not 10,000.
pub const FLUSH_BATCH: usize = 512;

/// Why a report was refused; each maps to one status code.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(
        "missing or malformed Authorization header: send \"Authorization: Bearer <token>\" with the endpoint's token"
    )]
    NoToken,
    #[error(
        "unknown or revoked token: issue a new one with `recastctl token issue` and install it on the endpoint"
    )]
    BadToken,
    #[error(
        "this token belongs to endpoint {token_for:?}, but the report names {claimed:?}: an agent may only report for itself"
    )]
    WrongEndpoint { token_for: String, claimed: String },
    #[error("endpoint {0} does not exist (deleted?): its token is no longer useful")]
    UnknownEndpoint(String),
    #[error(
        "sequence {got} is not above the last accepted {last}: a report is accepted once (the agent's sequence must increase)"
    )]
    Replayed { got: u64, last: u64 },
    #[error("Content-Type must be application/json")]
    ContentType,
    #[error(transparent)]
    Report(ReportError),
    #[error("too many reports{scope}; retry in {}s", .retry_after.as_secs().max(1))]
    RateLimited {
        scope: &'static str,
        retry_after: Duration,
    },
    #[error("the store is unavailable ({0}); retry later")]
    Store(#[from] StoreUnavailable),
    #[error(transparent)]
    Stale(Staleness),
    #[error("the request body did not arrive within {}s; send it at once", .0.as_secs())]
    BodyTimeout(Duration),
    #[error("the request body is larger than {MAX_REPORT_BYTES} bytes")]
    BodyTooLarge,
}

impl GatewayError {
    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::NoToken | GatewayError::BadToken => StatusCode::UNAUTHORIZED,
            GatewayError::WrongEndpoint { .. } => StatusCode::FORBIDDEN,
            GatewayError::UnknownEndpoint(_) => StatusCode::NOT_FOUND,
            GatewayError::Replayed { .. } => StatusCode::CONFLICT,
            GatewayError::ContentType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            GatewayError::Report(ReportError::TooLarge { .. }) => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::Report(ReportError::Decode { .. }) => StatusCode::BAD_REQUEST,
            GatewayError::Report(ReportError::Invalid { .. }) => StatusCode::UNPROCESSABLE_ENTITY,
            GatewayError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            GatewayError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::Stale(_) => StatusCode::UNPROCESSABLE_ENTITY,
            GatewayError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            GatewayError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        }
    }
}

/// Why the gateway could not read or write what it keeps: every case is answered 503 (the
/// agent retries), and kept typed so logs and tests can tell them apart.
#[derive(Debug, thiserror::Error)]
pub enum StoreUnavailable {
    /// The endpoint store (SQLite or the apiserver).
    #[error(transparent)]
    Backend(#[from] crate::store::BackendError),
    /// The gateway's own credential store (gateway.db).
    #[error(transparent)]
    Credentials(#[from] CredentialError),
    /// The batched write of accepted sequences failed.
    #[error("saving the accepted sequence failed: {0}")]
    Sequences(String),
    /// The endpoint's session entry was dropped while this report held its lock (a bug).
    #[error("the endpoint's session vanished")]
    SessionVanished,
}

impl From<CredentialError> for GatewayError {
    fn from(e: CredentialError) -> Self {
        GatewayError::Store(StoreUnavailable::Credentials(e))
    }
}

impl From<crate::store::BackendError> for GatewayError {
    fn from(e: crate::store::BackendError) -> Self {
        GatewayError::Store(StoreUnavailable::Backend(e))
    }
}

/// Counters for tests, benchmarks and logs.
#[derive(Debug, Default)]
pub struct GatewayStats {
    pub accepted: AtomicU64,
    pub refused: AtomicU64,
    /// Inputs handed to the controller plus sequence flushes (the group commits are counted by
    /// [`GroupCommit::commits`]; [`Gateway::stats_snapshot`] adds them).
    pub store_writes: AtomicU64,
    /// Accepted reports answered before their mark's commit (at rest: nothing to hand on).
    pub answered_at_rest: AtomicU64,
}

impl GatewayStats {
    /// (accepted, refused, store writes).
    pub fn snapshot(&self) -> (u64, u64, u64) {
        (
            self.accepted.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed),
            self.store_writes.load(Ordering::Relaxed),
        )
    }
}

struct CachedFacts {
    facts: Arc<EndpointFacts>,
    loaded: Instant,
    version: Option<crate::store::FactsVersion>,
}

/// How long facts a watch vouches for are kept at most: a watch that stalls (its version map
/// then stops moving) must not freeze an endpoint's hold for longer than this.
const WATCHED_FACTS_MAX_AGE: Duration = Duration::from_secs(600);

impl CachedFacts {
    /// Still what the store says: unchanged per the backend's watch where it has one (the
    /// Endpoint, its policy and images) and not older than [`WATCHED_FACTS_MAX_AGE`], else
    /// younger than `ttl`.
    fn fresh(&self, now: Option<&crate::store::FactsVersion>, ttl: Duration) -> bool {
        match (now, &self.version) {
            (Some(now), Some(loaded)) => {
                now == loaded && self.loaded.elapsed() < WATCHED_FACTS_MAX_AGE
            }
            _ => self.loaded.elapsed() < ttl,
        }
    }
}

struct Entry {
    session: Session,
    /// Shared, so a request takes it without copying the hold's history and signals; with
    /// when they were loaded and, where the backend watches for changes, their version.
    facts: Option<CachedFacts>,
    /// The token the session's sequence space belongs to (None: primed from the store, not
    /// yet seen a report).
    token_hash: Option<String>,
}

pub struct Gateway<B: Backend> {
    backend: Arc<B>,
    credentials: Arc<CredentialStore>,
    config: GatewayConfig,
    clock: Arc<dyn Clock>,
    origin: Instant,
    global: std::sync::Mutex<Bucket>,
    /// Per source address, checked before anything shared is spent.
    by_ip: std::sync::Mutex<IpLimiter>,
    buckets: std::sync::Mutex<HashMap<Key, Bucket>>,
    /// Commits accepted sequences before their 200.
    sequences: Arc<GroupCommit>,
    /// One async lock per endpoint: its reports are decided and written one at a time, in
    /// order.
    entries: std::sync::Mutex<HashMap<Key, Arc<tokio::sync::Mutex<Option<Entry>>>>>,
    /// The imaging key enrollment credentials are checked with (None: enrollment is off).
    enrollment_key: Option<crate::token::TokenKey>,
    pub stats: GatewayStats,
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The guarded maps stay consistent under a panic (every update is a single insert), so a
    // poisoned lock is safe to keep using.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

impl<B: Backend> Gateway<B> {
    pub fn new(
        backend: Arc<B>,
        credentials: Arc<CredentialStore>,
        config: GatewayConfig,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let global = Bucket::full(config.global_rate, 0.0);
        let by_ip = IpLimiter::new(config.ip_rate, IP_TABLE_MAX);
        Gateway {
            backend,
            sequences: GroupCommit::new(credentials.clone()),
            credentials,
            config,
            clock,
            origin: Instant::now(),
            global: std::sync::Mutex::new(global),
            by_ip: std::sync::Mutex::new(by_ip),
            buckets: std::sync::Mutex::new(HashMap::new()),
            entries: std::sync::Mutex::new(HashMap::new()),
            enrollment_key: None,
            stats: GatewayStats::default(),
        }
    }

    /// Turns on `POST /v1/enroll` (see [`enroll`]), checking credentials with the boot
    /// service's imaging key.
    pub fn with_enrollment(mut self, key: crate::token::TokenKey) -> Self {
        self.enrollment_key = Some(key);
        self
    }

    fn seconds(&self) -> f64 {
        self.origin.elapsed().as_secs_f64()
    }

    /// Handles one request body with its headers. Everything the HTTP layer does beyond this
    /// is the body size limit and the status line.
    pub async fn handle(
        &self,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<ReportReply, GatewayError> {
        let result = self.handle_inner(headers, body).await;
        match &result {
            Ok(_) => self.stats.accepted.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.stats.refused.fetch_add(1, Ordering::Relaxed),
        };
        result
    }

    /// The per-address limit, taken before the body is read or anything shared is spent.
    pub fn admit_address(&self, ip: IpAddr) -> Result<(), GatewayError> {
        let now_s = self.seconds();
        lock(&self.by_ip)
            .take(ip, now_s)
            .map_err(|retry_after| GatewayError::RateLimited {
                scope: " from this address",
                retry_after,
            })
    }

    async fn handle_inner(
        &self,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<ReportReply, GatewayError> {
        let now_s = self.seconds();
        // The token first, from memory: a made-up token is refused before it spends the
        // shared budget or a database lookup.
        let token = bearer(headers).ok_or(GatewayError::NoToken)?;
        if !credentials::well_formed(token) {
            return Err(GatewayError::BadToken);
        }
        let hash = credentials::token_hash(token);
        let key = self
            .credentials
            .endpoint_for_hash(&hash)?
            .ok_or(GatewayError::BadToken)?;
        lock(&self.global)
            .take(self.config.global_rate, now_s)
            .map_err(|retry_after| GatewayError::RateLimited {
                scope: "",
                retry_after,
            })?;
        {
            let rate = self.config.endpoint_rate;
            let mut buckets = lock(&self.buckets);
            let bucket = buckets
                .entry(key.clone())
                .or_insert_with(|| Bucket::full(rate, now_s));
            bucket
                .take(rate, now_s)
                .map_err(|retry_after| GatewayError::RateLimited {
                    scope: " from this endpoint",
                    retry_after,
                })?;
        }
        let is_json = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.split(';')
                    .next()
                    .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
            });
        if !is_json {
            return Err(GatewayError::ContentType);
        }
        let report = AgentReport::from_json(body).map_err(GatewayError::Report)?;
        if report.endpoint != key.name {
            return Err(GatewayError::WrongEndpoint {
                token_for: key.to_string(),
                claimed: report.endpoint,
            });
        }
        session::check_fresh(
            &report.collected_at,
            self.clock.now(),
            self.config.max_report_age,
            self.config.max_clock_skew,
        )
        .map_err(GatewayError::Stale)?;

        let slot = {
            let mut entries = lock(&self.entries);
            entries.entry(key.clone()).or_default().clone()
        };
        let mut guard = slot.lock().await;
        if guard.is_none() {
            let ep = self
                .backend
                .endpoint(&key)
                .await
                .map_err(GatewayError::from)?
                .ok_or_else(|| GatewayError::UnknownEndpoint(key.to_string()))?;
            let sequence = self.credentials.sequence(&key).await?;
            *guard = Some(Entry {
                session: Session::new(stored_state(&ep, sequence)),
                facts: None,
                token_hash: Some(hash.clone()),
            });
        }
        let Some(entry) = guard.as_mut() else {
            return Err(StoreUnavailable::SessionVanished.into());
        };
        if entry.token_hash.as_deref() != Some(hash.as_str()) {
            // A new token (rotation, or a reimage's fresh credentials) starts a new sequence
            // space: the agent that holds it may be a freshly installed one.
            let sequence = self.credentials.sequence(&key).await?;
            entry.session.reset_sequence(sequence);
            entry.token_hash = Some(hash.clone());
            // A new token is often a reimage's: read the endpoint afresh, so the reply's hold
            // sees the attempt that replaced the machine.
            entry.facts = None;
        }
        entry
            .session
            .check_sequence(report.sequence)
            .map_err(|r| GatewayError::Replayed {
                got: report.sequence,
                last: r.last,
            })?;
        let facts = self.facts(&key, entry).await?;
        let now = self.clock.now();
        let sequence = report.sequence;
        let installed_by = report.attempt_id.clone();
        // Decide on a copy: if a write fails, the session is unchanged and the next report
        // tries again.
        let mut next = entry.session.clone();
        let writes = next.accept(report, now, &facts, self.config.heartbeat_period);
        let reply = |session: &Session| ReportReply {
            // Facts may be older than this report: an order for the attempt that installed
            // this agent is over by definition, and must not restart the machine it just
            // imaged.
            restart_into_network: facts
                .restart_order
                .clone()
                .filter(|o| installed_by.as_deref() != Some(o.attempt_id.as_str())),
            update_hold: facts
                .hold
                .desired_with(session.current_signals(), &time::format(now))
                .to_reply(),
        };
        if writes.count() == 0 {
            // At rest: the report hands nothing on and writes nothing, so it is answered from
            // this replica's memory (the sequence check above) and its mark is saved by the
            // flusher with every other mark of its period (one write per shard on the
            // apiserver, not one per batch of reports). What that gives up, only for copies of
            // reports that change nothing: another replica judges a copy against its own
            // memory and may answer it too (as may this one after a crash before the flush),
            // handing on nothing or, where it never handed these facts on, the same facts
            // again (module docs). Every report that changes anything is committed first.
            let answer = reply(&next);
            entry.session = next;
            self.stats.answered_at_rest.fetch_add(1, Ordering::Relaxed);
            return Ok(answer);
        }
        // The sequence is committed first, before anything the report says is handed on:
        // durable before the 200 (after a crash it is still known, so this report cannot be
        // replayed), and a copy another gateway replica accepted first changes nothing.
        // Batched with the other reports arriving meanwhile. A post that fails afterwards
        // leaves the session as it was: the agent's next report carries the same facts.
        let saved = self
            .sequences
            .save((key.clone(), hash.clone(), sequence))
            .await
            .map_err(|e| GatewayError::Store(StoreUnavailable::Sequences(e)))?;
        match saved {
            MarkOutcome::Saved => {}
            MarkOutcome::Superseded => {
                // Another replica accepted this sequence (or a later one): a replay. The
                // session moves past it, so a copy arriving again is refused before the ledger
                // is asked.
                entry.session.last_sequence = entry.session.last_sequence.max(sequence);
                return Err(GatewayError::Replayed {
                    got: sequence,
                    last: sequence,
                });
            }
            // The token was revoked or rotated after this replica's mirror vouched for it: the
            // token is refused, as it will be from memory once the mirror catches up.
            MarkOutcome::TokenGone => return Err(GatewayError::BadToken),
        }
        if let Some(summary) = &writes.report {
            self.post(&key, &Input::AgentReport(summary.clone()))
                .await?;
        }
        if let Some(signals) = &writes.signals {
            self.post(&key, &Input::Signals(signals.clone())).await?;
        }
        next.persisted_sequence = next.persisted_sequence.max(sequence);
        let answer = reply(&next);
        entry.session = next;
        Ok(answer)
    }

    async fn post(&self, key: &Key, input: &Input) -> Result<(), GatewayError> {
        self.backend
            .post_input(key, input)
            .await
            .map_err(GatewayError::from)?;
        self.stats.store_writes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn facts(
        &self,
        key: &Key,
        entry: &mut Entry,
    ) -> Result<Arc<EndpointFacts>, GatewayError> {
        let current = self.backend.facts_version(key);
        if let Some(cached) = &entry.facts
            && cached.fresh(current.as_ref(), self.config.facts_ttl)
        {
            return Ok(cached.facts.clone());
        }
        let ep = self
            .backend
            .endpoint(key)
            .await
            .map_err(GatewayError::from)?
            .ok_or_else(|| GatewayError::UnknownEndpoint(key.to_string()))?;
        let facts = Arc::new(self.load_facts(&ep).await?);
        // The version of what was read: the object's own resourceVersion, and the change count
        // from before the read (a policy change during it makes the next request read again).
        let version = current
            .zip(ep.metadata.resource_version.clone())
            .map(|(c, rv)| crate::store::FactsVersion {
                endpoint: rv,
                context: c.context,
            });
        entry.facts = Some(CachedFacts {
            facts: facts.clone(),
            loaded: Instant::now(),
            version,
        });
        Ok(facts)
    }

    async fn load_facts(&self, ep: &Endpoint) -> Result<EndpointFacts, GatewayError> {
        let ns = recast_crds::namespace_of(&ep.metadata);
        let store = GatewayError::from;
        let policy = policy_view_for(self.backend.as_ref(), ep)
            .await
            .map_err(store)?;
        let images = self.backend.golden_images(ns).await.map_err(store)?;
        let image = resolve_image(&ep.spec.image, &images);
        let events_after = ep.status.as_ref().and_then(derive::last_reimage_end);
        Ok(EndpointFacts {
            heartbeat_timeout: policy.heartbeat_timeout,
            update_mode: hold::effective_mode(&ep.spec, &policy),
            hold: HoldFacts::of(&ep.spec, ep.status.as_ref(), &policy),
            minimum_build: image.and_then(|i| i.minimum_build),
            events_after,
            stored_report_at: ep.status.as_ref().and_then(derive::last_report_at),
            restart_order: ep.status.as_ref().and_then(|st| {
                recast_core::power::restart_order(st, &ep.spec.identity.mac_addresses)
            }),
        })
    }

    /// Starts sessions for every endpoint that has reported before, so one that never reports
    /// again after a restart is still judged for HeartbeatLost.
    pub async fn prime(&self) -> Result<usize, GatewayError> {
        let eps = self.backend.endpoints().await.map_err(GatewayError::from)?;
        let marks: HashMap<Key, u64> = self.credentials.sequences().await?.into_iter().collect();
        let mut n = 0;
        let mut entries = lock(&self.entries);
        for ep in eps {
            if ep
                .status
                .as_ref()
                .and_then(|s| s.last_report.as_ref())
                .is_none()
            {
                continue;
            }
            let key = Key::of(&ep);
            let seq = marks.get(&key).copied().unwrap_or(0);
            entries.entry(key).or_insert_with(|| {
                n += 1;
                Arc::new(tokio::sync::Mutex::new(Some(Entry {
                    session: Session::new(stored_state(&ep, seq)),
                    facts: None,
                    token_hash: None,
                })))
            });
        }
        Ok(n)
    }

    /// One sweep: posts a new signal set for every endpoint whose signals changed with time
    /// alone (HeartbeatLost). Returns how many were posted.
    pub async fn sweep(&self) -> usize {
        let slots: Vec<(Key, Arc<tokio::sync::Mutex<Option<Entry>>>)> = lock(&self.entries)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut posted = 0;
        for (key, slot) in slots {
            let mut guard = slot.lock().await;
            let Some(entry) = guard.as_mut() else {
                continue;
            };
            let facts = match self.facts(&key, entry).await {
                Ok(f) => f,
                Err(GatewayError::UnknownEndpoint(_)) => {
                    *guard = None;
                    continue;
                }
                Err(e) => {
                    tracing::warn!(endpoint = %key, error = %e, "heartbeat sweep skipped");
                    continue;
                }
            };
            let mut next = entry.session.clone();
            if let Some(signals) = next.tick(self.clock.now(), &facts) {
                match self.post(&key, &Input::Signals(signals)).await {
                    Ok(()) => {
                        entry.session = next;
                        posted += 1;
                    }
                    Err(e) => {
                        tracing::warn!(endpoint = %key, error = %e, "heartbeat signal not posted")
                    }
                }
            }
        }
        posted
    }

    /// Saves the accepted sequences not yet saved (the marks of reports at rest, and any whose
    /// commit failed): [`FLUSH_BATCH`] per SQLite transaction, all in one call on the
    /// apiserver (one write per shard), on the blocking pool for SQLite. An endpoint whose
    /// report is being decided right now is skipped: its mark waits for the next flush, so a
    /// slow request never holds the flusher (or the sweep beside it). Returns how many marks
    /// were saved; an error is the first mark that could not be written (the other marks'
    /// outcomes are kept).
    pub async fn flush_sequences(&self) -> Result<usize, GatewayError> {
        let slots: Vec<(Key, Arc<tokio::sync::Mutex<Option<Entry>>>)> = lock(&self.entries)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut marks = Vec::new();
        let mut marked = Vec::new();
        for (key, slot) in slots {
            let Ok(guard) = slot.try_lock() else {
                continue;
            };
            if let Some(e) = guard.as_ref()
                && e.session.last_sequence > e.session.persisted_sequence
                && let Some(hash) = &e.token_hash
            {
                marks.push((key, hash.clone(), e.session.last_sequence));
                drop(guard);
                marked.push(slot);
            }
        }
        let mut saved = 0;
        let mut failed = None;
        let mut slots = marked.into_iter();
        for batch in marks.chunks(self.credentials.marks_per_flush()) {
            let outcomes = self.credentials.save_sequences(batch.to_vec()).await;
            // One transaction on SQLite; each shard written on the apiserver.
            self.stats
                .store_writes
                .fetch_add(self.credentials.writes_per_commit(), Ordering::Relaxed);
            for ((_, hash, seq), (outcome, slot)) in
                batch.iter().zip(outcomes.into_iter().zip(slots.by_ref()))
            {
                match outcome {
                    // Saved, superseded (another replica saved it or a later one) or its token
                    // gone (nothing more to save in that token's sequence space): done up to
                    // `seq`, for the session that still has this token. A session whose token
                    // changed meanwhile started a new space and keeps its own bookkeeping.
                    Ok(o) => {
                        if let Some(e) = slot.lock().await.as_mut()
                            && e.token_hash.as_deref() == Some(hash.as_str())
                        {
                            e.session.persisted_sequence = e.session.persisted_sequence.max(*seq);
                        }
                        saved += usize::from(o == MarkOutcome::Saved);
                    }
                    // Tried again at the next flush.
                    Err(e) => {
                        failed.get_or_insert(e);
                    }
                }
            }
        }
        match failed {
            Some(e) => Err(GatewayError::Store(StoreUnavailable::Sequences(e))),
            None => Ok(saved),
        }
    }

    /// (accepted, refused, store writes): the writes are the inputs handed to the controller,
    /// the sequence flushes and every group commit of accepted sequences (a transaction on
    /// SQLite; a shard written on the apiserver).
    pub fn stats_snapshot(&self) -> (u64, u64, u64) {
        let (accepted, refused, writes) = self.stats.snapshot();
        (
            accepted,
            refused,
            writes + self.sequences.commits.load(Ordering::Relaxed),
        )
    }

    /// Runs the sweep and the flusher until `shutdown`, then flushes once more.
    pub async fn run_background(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut sweep = tokio::time::interval(self.config.sweep_interval);
        let mut flush = tokio::time::interval(self.config.flush_interval);
        let mut logged = (0, 0, 0);
        loop {
            tokio::select! {
                _ = sweep.tick() => { self.sweep().await; }
                _ = flush.tick() => {
                    if let Err(e) = self.flush_sequences().await {
                        tracing::warn!(error = %e, "saving report sequences failed; will retry");
                    }
                    let now = self.stats_snapshot();
                    if now != logged {
                        tracing::info!(
                            accepted = now.0,
                            refused = now.1,
                            store_writes = now.2,
                            "gateway stats"
                        );
                        logged = now;
                    }
                }
                _ = stopped(&mut shutdown) => break,
            }
        }
        if let Err(e) = self.flush_sequences().await {
            tracing::warn!(error = %e, "saving report sequences at shutdown failed");
        }
    }
}

/// Resolves once `shutdown` turns true (or its sender is gone). The borrow guard stays inside,
/// so callers' futures remain Send.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

fn stored_state(ep: &Endpoint, sequence: u64) -> StoredState {
    let status = ep.status.clone().unwrap_or_default();
    let last = status.last_report.as_ref();
    StoredState {
        last_report_at: derive::last_report_at(&status),
        build: last.and_then(|r| r.build.parse::<Build>().ok()),
        signals: status
            .signals
            .iter()
            .map(|s| (s.type_, s.message.clone()))
            .collect(),
        sequence,
    }
}

/// The answer to a refused request: the status, a JSON `{"error": ...}`, Retry-After on 429,
/// WWW-Authenticate on 401.
fn refusal(e: &GatewayError) -> Response {
    let status = e.status();
    tracing::debug!(%status, error = %e, "request refused");
    let body = serde_json::json!({ "error": e.to_string() }).to_string();
    let mut resp = (status, [(header::CONTENT_TYPE, "application/json")], body).into_response();
    if let GatewayError::RateLimited { retry_after, .. } = e {
        let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
        if let Ok(v) = HeaderValue::from_str(&secs.max(1).to_string()) {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
    }
    if matches!(e, GatewayError::NoToken | GatewayError::BadToken) {
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    if matches!(e, GatewayError::BodyTimeout(_)) {
        // The rest of a body that stalled is not worth waiting for: close the connection.
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

async fn post_report<B: Backend>(
    State(gw): State<Arc<Gateway<B>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match gw.handle(&headers, &body).await {
        Ok(reply) => (StatusCode::OK, axum::Json(reply)).into_response(),
        Err(e) => refusal(&e),
    }
}

/// Before any route: the source address's rate limit, then the body, read in full within
/// `body_timeout` (a client that trickles its body is cut off, slowloris) and within the
/// report size limit. Applies to every route, enrollment included.
async fn admit<B: Backend>(
    State(gw): State<Arc<Gateway<B>>>,
    peer: Option<axum::Extension<Peer>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if let Some(axum::Extension(Peer(addr))) = peer
        && let Err(e) = gw.admit_address(addr.ip())
    {
        gw.stats.refused.fetch_add(1, Ordering::Relaxed);
        return refusal(&e);
    }
    let (parts, body) = req.into_parts();
    let limit = gw.config.body_timeout;
    let bytes =
        match tokio::time::timeout(limit, axum::body::to_bytes(body, MAX_REPORT_BYTES)).await {
            Ok(Ok(b)) => b,
            Ok(Err(_)) => {
                gw.stats.refused.fetch_add(1, Ordering::Relaxed);
                return refusal(&GatewayError::BodyTooLarge);
            }
            Err(_) => {
                gw.stats.refused.fetch_add(1, Ordering::Relaxed);
                return refusal(&GatewayError::BodyTimeout(limit));
            }
        };
    next.run(axum::extract::Request::from_parts(
        parts,
        axum::body::Body::from(bytes),
    ))
    .await
}

/// The gateway's routes. Bodies above the report limit are refused with 413 before they are
/// read in full.
pub fn router<B: Backend>(gw: Arc<Gateway<B>>) -> Router {
    Router::new()
        .route("/v1/reports", post(post_report::<B>))
        .route("/v1/enroll", post(enroll::post_enroll::<B>))
        .layer(DefaultBodyLimit::max(MAX_REPORT_BYTES))
        .layer(axum::middleware::from_fn_with_state(gw.clone(), admit::<B>))
        .with_state(gw)
}
