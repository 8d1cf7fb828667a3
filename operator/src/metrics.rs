//! Prometheus metrics (text format on /metrics).

use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use recast_crds::endpoint::{AttemptRecord, EndpointPhase};

use crate::store::BackendError;
use recast_core::lifecycle::ActionKind;
use recast_core::transitions::Edge;

type Labels = Vec<(String, String)>;

pub struct Metrics {
    registry: Registry,
    reconciles: Counter,
    reconcile_errors: Family<Labels, Counter>,
    reconcile_seconds: Histogram,
    status_writes: Counter,
    transitions: Family<Labels, Counter>,
    actions: Family<Labels, Counter>,
    power_ways: Family<Labels, Counter>,
    attempt_seconds: Family<Labels, Histogram>,
    endpoints: Family<Labels, Gauge>,
    boot_requests: Family<Labels, Counter>,
    dhcp_replies: Family<Labels, Counter>,
    /// The TFTP server's metrics, registered here so /metrics serves them.
    pub tftp: TftpMetrics,
    /// The boot service's multicast sessions.
    pub multicast: MulticastMetrics,
}

/// Prometheus metrics of the multicast sessions, labelled by session (`GROUP:PORT`).
#[derive(Clone, Default, Debug)]
pub struct MulticastMetrics {
    receivers: Family<Labels, Gauge>,
    dropped: Family<Labels, Gauge>,
    bytes: Family<Labels, Gauge>,
    sessions: Family<Labels, Counter>,
}

impl MulticastMetrics {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "multicast_session_receivers",
            "Receivers that joined each multicast session",
            self.receivers.clone(),
        );
        registry.register(
            "multicast_session_dropped",
            "Receivers each multicast session dropped (they download over HTTP)",
            self.dropped.clone(),
        );
        registry.register(
            "multicast_session_bytes",
            "Bytes of the image each multicast session has sent (udp-sender's count)",
            self.bytes.clone(),
        );
        registry.register(
            "multicast_sessions",
            "Multicast sessions by how they ended (started, complete, ended without completing)",
            self.sessions.clone(),
        );
    }

    pub fn session(&self, session: &str, receivers: u32, dropped: u32, bytes: u64) {
        let l = label("session", session);
        self.receivers.get_or_create(&l).set(receivers.into());
        self.dropped.get_or_create(&l).set(dropped.into());
        self.bytes
            .get_or_create(&l)
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    pub fn session_event(&self, outcome: &str) {
        self.sessions
            .get_or_create(&label("outcome", outcome))
            .inc();
    }
}

fn label(k: &str, v: &str) -> Labels {
    vec![(k.to_string(), v.to_string())]
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("recast");
        let reconciles = Counter::default();
        let reconcile_errors = Family::<Labels, Counter>::default();
        let reconcile_seconds = Histogram::new(exponential_buckets(0.0005, 4.0, 10));
        let status_writes = Counter::default();
        let transitions = Family::<Labels, Counter>::default();
        let actions = Family::<Labels, Counter>::default();
        let power_ways = Family::<Labels, Counter>::default();
        let attempt_seconds = Family::<Labels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(60.0, 2.0, 10))
        });
        let endpoints = Family::<Labels, Gauge>::default();
        let boot_requests = Family::<Labels, Counter>::default();
        let dhcp_replies = Family::<Labels, Counter>::default();
        let tftp = TftpMetrics::default();
        tftp.register(&mut registry);
        let multicast = MulticastMetrics::default();
        multicast.register(&mut registry);
        registry.register(
            "boot_requests",
            "Per-machine boot scripts served, by what the machine was told to do",
            boot_requests.clone(),
        );
        registry.register(
            "dhcp_replies",
            "DHCP and proxyDHCP answers, by kind",
            dhcp_replies.clone(),
        );
        registry.register("reconciles", "Endpoint reconciles", reconciles.clone());
        registry.register(
            "reconcile_errors",
            "Failed reconciles by kind of error",
            reconcile_errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time per reconcile",
            reconcile_seconds.clone(),
        );
        registry.register(
            "status_writes",
            "Endpoint status writes",
            status_writes.clone(),
        );
        registry.register(
            "lifecycle_transitions",
            "Lifecycle transitions by edge",
            transitions.clone(),
        );
        registry.register(
            "actions",
            "Actions executed (side effects, once per idempotency key)",
            actions.clone(),
        );
        registry.register(
            "power_way",
            "Tries by the way their machine was brought to network-boot (Redfish, Agent, WakeOnLan, Person)",
            power_ways.clone(),
        );
        registry.register(
            "attempt_duration_seconds",
            "Reimage attempt duration by outcome",
            attempt_seconds.clone(),
        );
        registry.register("endpoints", "Endpoints per phase", endpoints.clone());
        Metrics {
            registry,
            reconciles,
            reconcile_errors,
            reconcile_seconds,
            status_writes,
            transitions,
            actions,
            power_ways,
            attempt_seconds,
            endpoints,
            boot_requests,
            dhcp_replies,
            tftp,
            multicast,
        }
    }

    pub fn observe_reconcile(&self, took: Duration, error: Option<&BackendError>) {
        self.reconciles.inc();
        self.reconcile_seconds.observe(took.as_secs_f64());
        if let Some(e) = error {
            let kind = e.category().as_str();
            self.reconcile_errors
                .get_or_create(&label("kind", kind))
                .inc();
        }
    }

    /// Endpoint reconciles so far.
    pub fn reconciles(&self) -> u64 {
        self.reconciles.get()
    }

    pub fn status_write(&self) {
        self.status_writes.inc();
    }

    pub fn status_writes(&self) -> u64 {
        self.status_writes.get()
    }

    pub fn transition(&self, edge: Edge) {
        self.transitions
            .get_or_create(&label("edge", &format!("{edge:?}")))
            .inc();
    }

    pub fn action(&self, kind: ActionKind) {
        self.actions
            .get_or_create(&label("action", kind.as_str()))
            .inc();
    }

    /// A try's way was chosen (or changed: a refusal or a failed wake falls back).
    pub fn power_way(&self, way: recast_crds::endpoint::PowerWay) {
        self.power_ways
            .get_or_create(&label("way", way.as_str()))
            .inc();
    }

    pub fn attempt_finished(&self, h: &AttemptRecord) {
        let secs = match (
            recast_core::time::parse(&h.started_at),
            recast_core::time::parse(&h.finished_at),
        ) {
            (Some(s), Some(f)) => recast_core::time::since(f, s).as_secs_f64(),
            _ => 0.0,
        };
        self.attempt_seconds
            .get_or_create(&label("outcome", &format!("{:?}", h.outcome)))
            .observe(secs);
    }

    /// Sets the per-phase endpoint gauge from every endpoint's phase (phases with no endpoint
    /// read 0, so a dashboard sees them drain).
    pub fn set_phases(&self, phases: impl Iterator<Item = Option<EndpointPhase>>) {
        let mut counts: std::collections::BTreeMap<String, i64> = [
            EndpointPhase::Pending,
            EndpointPhase::Ready,
            EndpointPhase::Degraded,
            EndpointPhase::ReimageScheduled,
            EndpointPhase::Reimaging,
            EndpointPhase::Failed,
            EndpointPhase::Quarantined,
        ]
        .into_iter()
        .map(|p| (format!("{p:?}"), 0))
        .collect();
        for p in phases {
            *counts
                .entry(p.map_or("None".to_string(), |p| format!("{p:?}")))
                .or_insert(0) += 1;
        }
        for (phase, n) in counts {
            self.endpoints.get_or_create(&label("phase", &phase)).set(n);
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    pub fn boot_choice(&self, choice: &str) {
        self.boot_requests
            .get_or_create(&label("choice", choice))
            .inc();
    }

    pub fn dhcp_reply(&self, kind: &str) {
        self.dhcp_replies.get_or_create(&label("kind", kind)).inc();
    }
}

/// Prometheus metrics of the TFTP server (registered under the caller's registry).
#[derive(Clone, Default, Debug)]
pub struct TftpMetrics {
    /// Finished transfers by outcome (completed, timed_out, refused, ...).
    pub transfers: Family<Labels, Counter>,
    /// Requests refused before a transfer started, by reason.
    pub refused: Family<Labels, Counter>,
    pub active: Gauge,
    pub bytes_sent: Counter,
    pub retransmits: Counter,
    pub wrong_tid: Counter,
    pub malformed: Counter,
    /// Transfer tasks that panicked: always a bug, reported so tests and alerts can see it.
    pub panics: Counter,
}

impl TftpMetrics {
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("tftp");
        r.register(
            "transfers",
            "Finished TFTP transfers by outcome",
            self.transfers.clone(),
        );
        r.register(
            "requests_refused",
            "TFTP requests refused before a transfer started, by reason",
            self.refused.clone(),
        );
        r.register(
            "active_transfers",
            "TFTP transfers in progress",
            self.active.clone(),
        );
        r.register(
            "sent_bytes",
            "File bytes sent over TFTP",
            self.bytes_sent.clone(),
        );
        r.register(
            "retransmitted_packets",
            "TFTP packets sent again after a timeout",
            self.retransmits.clone(),
        );
        r.register(
            "wrong_tid_packets",
            "Packets from an unknown transfer id (answered with ERROR 5)",
            self.wrong_tid.clone(),
        );
        r.register(
            "malformed_packets",
            "Datagrams that are not valid TFTP requests",
            self.malformed.clone(),
        );
        r.register(
            "task_panics",
            "TFTP transfer tasks that panicked (a bug)",
            self.panics.clone(),
        );
    }

    pub fn transfers_with(&self, outcome: &str) -> u64 {
        self.transfers
            .get_or_create(&vec![("outcome".to_string(), outcome.to_string())])
            .get()
    }

    pub fn refused_with(&self, reason: &str) -> u64 {
        self.refused
            .get_or_create(&vec![("reason".to_string(), reason.to_string())])
            .get()
    }
}
