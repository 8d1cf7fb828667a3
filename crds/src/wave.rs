//! ReimageWave: a rollout of reimages over selected endpoints, batch by batch.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{Condition, MaintenanceWindow};

/// Moves the selected endpoints onto `image`, a batch at a time, and stops at the first sign of
/// trouble (more failures than `strategy.maxFailures`).
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "recast.dev",
    version = "v1alpha1",
    kind = "ReimageWave",
    plural = "reimagewaves",
    singular = "reimagewave",
    shortname = "wave",
    category = "recast",
    namespaced,
    status = "ReimageWaveStatus",
    derive = "PartialEq",
    printcolumn(name = "Image", type_ = "string", json_path = ".spec.image"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Batch", type_ = "integer", json_path = ".status.currentBatch"),
    printcolumn(
        name = "Selected",
        type_ = "integer",
        json_path = ".status.counts.selected"
    ),
    printcolumn(
        name = "Succeeded",
        type_ = "integer",
        json_path = ".status.counts.succeeded"
    ),
    printcolumn(
        name = "Failed",
        type_ = "integer",
        json_path = ".status.counts.failed"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ReimageWaveSpec {
    /// Which endpoints (by label). Must not be empty: an empty selector would select the whole
    /// fleet.
    #[x_kube(validation = Rule::new("(has(self.matchLabels) && size(self.matchLabels) > 0) || (has(self.matchExpressions) && size(self.matchExpressions) > 0)").message("spec.selector must have matchLabels or matchExpressions: an empty selector would reimage every endpoint"))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.selector is immutable: create a new wave instead"))]
    pub selector: LabelSelector,
    /// GoldenImage to move the endpoints onto.
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$')").message("spec.image must be the name of a GoldenImage"))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.image is immutable: create a new wave instead"))]
    #[schemars(length(max = 253))]
    pub image: String,
    #[serde(default)]
    pub strategy: WaveStrategy,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance_window: Option<MaintenanceWindow>,
    /// Hold the wave until someone approves it (`recastctl wave approve`).
    #[serde(default)]
    pub require_approval: bool,
    /// Set by `recastctl wave approve`: who approved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub approved_by: Option<String>,
    /// Pause: no new batch starts; running attempts finish.
    #[serde(default)]
    pub paused: bool,
    /// Abort: no new attempt is armed; running attempts finish; the wave ends Aborted.
    #[serde(default)]
    pub aborted: bool,
    /// How the boot service sends the image to each batch when it runs multicast sessions
    /// (`--multicast-interface`): one udpcast session per batch, machines that miss it download
    /// over HTTP. Ignored by a boot service without multicast.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multicast: Option<WaveMulticast>,
    /// Why the wave exists, for the audit trail.
    #[x_kube(validation = Rule::new("size(self) >= 1 && size(self) <= 1024").message("spec.reason is required (1 to 1024 characters): say why these machines are reimaged"))]
    #[schemars(length(max = 1024))]
    pub reason: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.batchSize) && has(self.maxUnavailable))").message("strategy must set at most one of batchSize and maxUnavailable"))]
pub struct WaveStrategy {
    /// Endpoints per batch: a count or a percentage of the selected endpoints (rounded up).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("string(self).matches('^([1-9][0-9]{0,5}|([1-9][0-9]?|100)%)$')").message("strategy.batchSize must be a positive integer or a percentage from 1% to 100%"))]
    pub batch_size: Option<IntOrString>,
    /// Endpoints reimaging at once: a count or a percentage (rounded down, at least 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("string(self).matches('^([1-9][0-9]{0,5}|([1-9][0-9]?|100)%)$')").message("strategy.maxUnavailable must be a positive integer or a percentage from 1% to 100%"))]
    pub max_unavailable: Option<IntOrString>,
    /// Failed endpoints the wave tolerates before it stops as Failed: a count or a percentage of
    /// the selected endpoints (rounded down). Defaults to 0: the first failure stops the wave.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("string(self).matches('^(0|[1-9][0-9]{0,5}|([0-9]|[1-9][0-9]|100)%)$')").message("strategy.maxFailures must be zero or more, or a percentage from 0% to 100%"))]
    pub max_failures: Option<IntOrString>,
    /// Wait between batches, such as "15m".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+(d|h|m|s))+$')").message("strategy.pauseBetweenBatches must be a duration such as 90s, 15m or 1h"))]
    #[schemars(length(max = 32))]
    pub pause_between_batches: Option<String>,
    /// Size of a first, canary batch that must fully succeed before the rest start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("string(self).matches('^([1-9][0-9]{0,5}|([1-9][0-9]?|100)%)$')").message("strategy.canary must be a positive integer or a percentage from 1% to 100%"))]
    pub canary: Option<IntOrString>,
}

/// A batch's multicast session, as the wave asks for it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct WaveMulticast {
    /// false: every machine of this wave downloads over HTTP.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// The session starts once this many of the batch's machines joined. Defaults to the
    /// batch's size (every member); fewer starts sooner, and the late ones use HTTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 100000").message("multicast.minReceivers must be 1 to 100000"))]
    pub min_receivers: Option<u32>,
    /// ... or this long after the first one joined, such as "2m" (default 2m; longer than 30m
    /// is held to 30m). Machines boot minutes apart; a machine that joins after the start
    /// downloads over HTTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+(h|m|s))+$')").message("multicast.maxWait must be a duration such as 90s or 5m"))]
    #[schemars(length(max = 32))]
    pub max_wait: Option<String>,
}

fn yes() -> bool {
    true
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum WavePhase {
    Pending,
    AwaitingApproval,
    WaitingForWindow,
    Running,
    Paused,
    Succeeded,
    Failed,
    Aborted,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WaveCounts {
    pub selected: u32,
    pub skipped: u32,
    pub pending: u32,
    pub running: u32,
    pub succeeded: u32,
    pub failed: u32,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WaveBatch {
    /// Position in status.batches, from 0 (batch number index+1).
    pub index: u32,
    pub endpoints: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    #[serde(default)]
    pub canary: bool,
    /// Members on the new image, as of the last reconcile.
    #[serde(default)]
    pub succeeded: u32,
    /// Members whose attempt failed.
    #[serde(default)]
    pub failed: u32,
    /// Members reimaging now.
    #[serde(default)]
    pub running: u32,
    /// Members left out after planning (deleted, or protected, paused or Quarantined before
    /// their attempt started).
    #[serde(default)]
    pub skipped: u32,
    /// The batch's multicast session, as the boot service that runs it last saw it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multicast: Option<BatchMulticast>,
}

/// A batch's multicast session (udp-sender's own figures; the boot service's interface
/// counters are the truth about the wire).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BatchMulticast {
    /// `GROUP:PORT`.
    pub session: String,
    pub phase: MulticastPhase,
    /// The session starts once this many machines joined (or its maxWait passed).
    pub min_receivers: u32,
    /// Machines that joined.
    pub receivers: u32,
    /// Machines the sender dropped (they download over HTTP).
    #[serde(default)]
    pub dropped: u32,
    /// Bytes of the image sent so far, of `size`.
    pub bytes: u64,
    pub size: u64,
    /// Mbit/s over the sending time so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_mbps: Option<u32>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum MulticastPhase {
    /// Waiting for the batch's machines to join.
    Waiting,
    Sending,
    /// Every byte sent.
    Complete,
    /// The sender stopped before the end (nobody joined in time, or it failed): its machines
    /// download over HTTP.
    Ended,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SkippedEndpoint {
    pub name: String,
    /// Protected, Paused, Quarantined, ...
    pub reason: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReimageWaveStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<WavePhase>,
    /// Number of the batch in progress, counted from 1 as recastctl shows it (batches[n-1]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_batch: Option<u32>,
    #[serde(default)]
    pub counts: WaveCounts,
    /// Failures the wave tolerates (strategy.maxFailures resolved against the selection).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_failures: Option<u32>,
    /// When the first batch started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// When the wave reached Succeeded, Failed or Aborted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// Earliest time the next batch may start (pauseBetweenBatches).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_batch_at: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub batches: Vec<WaveBatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<SkippedEndpoint>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed_endpoints: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub messages: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}
