//! Reimage waves: which endpoints a wave takes, in which batches, and what the wave does next.
//!
//! Pure, like the rest of `core`: the wave controller hands in the wave, the endpoints as they
//! are now and `now`, and gets back the wave's next status and the endpoints whose attempt is
//! due. The plan is made once and kept in status (`batches`, `skipped`), so a restart resumes
//! the same plan instead of making a new one from a fleet that has moved on.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use recast_crds::endpoint::{AttemptOutcome, EndpointPhase, EndpointSpec, EndpointStatus};
use recast_crds::wave::{
    ReimageWaveSpec, ReimageWaveStatus, SkippedEndpoint, WaveBatch, WaveCounts, WavePhase,
    WaveStrategy,
};

use super::lifecycle::{Notice, NoticeType};
use super::time;
use super::window;

/// When neither batchSize nor maxUnavailable is set: Kubernetes' default for a Deployment's
/// maxUnavailable.
pub const DEFAULT_MAX_UNAVAILABLE: &str = "25%";

/// How often a wave that waits for something outside its own status (a window, a slot, its
/// members' attempts) is looked at again.
pub const WAVE_REQUEUE: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WaveError {
    #[error(
        "spec.selector.matchExpressions: operator {0:?} is unknown; use In, NotIn, Exists or DoesNotExist"
    )]
    Operator(String),
    #[error("spec.selector.matchExpressions: {0} needs at least one value")]
    NoValues(String),
    #[error("spec.selector.matchExpressions: {0} takes no values")]
    UnexpectedValues(String),
    #[error(
        "spec.selector is empty and would select every endpoint; add matchLabels or matchExpressions"
    )]
    EmptySelector,
    #[error(
        "strategy.{field}: {value:?} is not a count or a percentage; write a number such as 5 or a percentage such as 20%"
    )]
    Amount { field: &'static str, value: String },
    #[error("strategy.{field} must be at least 1")]
    Zero { field: &'static str },
    #[error("strategy: set batchSize or maxUnavailable, not both")]
    BothSizes,
    #[error("strategy.pauseBetweenBatches: {0}")]
    Pause(#[from] recast_crds::duration::DurationError),
    #[error("{0}")]
    Window(#[from] window::WindowError),
}

// ---- selection ---------------------------------------------------------------------------

/// True when `labels` satisfy `selector` (matchLabels and every matchExpression), as Kubernetes
/// label selectors do. An empty selector is an error, never "everything": a wave must not
/// reimage the fleet by omission.
pub fn selects(
    selector: &LabelSelector,
    labels: &BTreeMap<String, String>,
) -> Result<bool, WaveError> {
    let match_labels = selector.match_labels.as_ref().filter(|m| !m.is_empty());
    let exprs = selector
        .match_expressions
        .as_deref()
        .filter(|e| !e.is_empty());
    if match_labels.is_none() && exprs.is_none() {
        return Err(WaveError::EmptySelector);
    }
    let mut ok = match_labels.is_none_or(|m| m.iter().all(|(k, v)| labels.get(k) == Some(v)));
    for e in exprs.unwrap_or_default() {
        let values = e.values.as_deref().unwrap_or_default();
        let has = labels.get(&e.key);
        let matched = match e.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => {
                return Err(WaveError::NoValues(format!("{} {}", e.key, e.operator)));
            }
            "Exists" | "DoesNotExist" if !values.is_empty() => {
                return Err(WaveError::UnexpectedValues(format!(
                    "{} {}",
                    e.key, e.operator
                )));
            }
            "In" => has.is_some_and(|v| values.contains(v)),
            "NotIn" => has.is_none_or(|v| !values.contains(v)),
            "Exists" => has.is_some(),
            "DoesNotExist" => has.is_none(),
            other => return Err(WaveError::Operator(other.to_string())),
        };
        // Keep validating the remaining expressions even once one fails to match, so a typo
        // in a later operator is reported rather than hidden by an earlier mismatch.
        ok &= matched;
    }
    Ok(ok)
}

/// An endpoint as planning sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub protected: bool,
    pub paused: bool,
    pub quarantined: bool,
}

impl Candidate {
    pub fn new(
        name: &str,
        labels: BTreeMap<String, String>,
        spec: &EndpointSpec,
        status: Option<&EndpointStatus>,
    ) -> Self {
        Candidate {
            name: name.to_string(),
            labels,
            protected: spec.protected,
            paused: spec.paused,
            quarantined: status.and_then(|s| s.phase) == Some(EndpointPhase::Quarantined),
        }
    }

    /// Why this endpoint must not be reimaged by a wave now; None when it may.
    fn skip_reason(&self) -> Option<&'static str> {
        if self.protected {
            Some(SKIP_PROTECTED)
        } else if self.paused {
            Some(SKIP_PAUSED)
        } else if self.quarantined {
            Some(SKIP_QUARANTINED)
        } else {
            None
        }
    }
}

pub const SKIP_PROTECTED: &str = "Protected";
pub const SKIP_PAUSED: &str = "Paused";
pub const SKIP_QUARANTINED: &str = "Quarantined";
pub const SKIP_DELETED: &str = "Deleted";
/// Its batch finished while it could not be reimaged; it is not picked up later.
pub const SKIP_MISSED: &str = "MissedItsBatch";

// ---- amounts -----------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Round {
    Up,
    Down,
}

/// A count or a percentage of `total`. Percentages round as Kubernetes rounds them: up for
/// sizes that must make progress (batchSize, canary, like maxSurge), down for limits
/// (maxUnavailable, maxFailures).
fn amount(
    field: &'static str,
    value: &IntOrString,
    total: u32,
    round: Round,
) -> Result<u32, WaveError> {
    let bad = |v: String| WaveError::Amount { field, value: v };
    match value {
        IntOrString::Int(n) => u32::try_from(*n).map_err(|_| bad(n.to_string())),
        IntOrString::String(s) => {
            if let Some(p) = s.strip_suffix('%') {
                let p: u64 = p
                    .parse()
                    .ok()
                    .filter(|p| *p <= 100)
                    .ok_or_else(|| bad(s.clone()))?;
                let scaled = u64::from(total) * p;
                let n = match round {
                    Round::Up => scaled.div_ceil(100),
                    Round::Down => scaled / 100,
                };
                Ok(n as u32)
            } else {
                s.parse().map_err(|_| bad(s.clone()))
            }
        }
    }
}

/// The strategy with every amount resolved against the number of eligible endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sizes {
    pub batch: u32,
    pub canary: u32,
    pub max_failures: u32,
}

/// Resolves the strategy for `eligible` endpoints. Batches hold `batchSize` endpoints (a
/// percentage rounds up), or `maxUnavailable` (rounds down, but at least 1 so a wave always
/// moves): a batch is the set of endpoints allowed to be down at once. maxFailures is a count
/// or a percentage of the eligible endpoints, rounded down (0% and 0 mean the first failure
/// stops the wave).
pub fn sizes(strategy: &WaveStrategy, eligible: u32) -> Result<Sizes, WaveError> {
    let batch = match (&strategy.batch_size, &strategy.max_unavailable) {
        (Some(_), Some(_)) => return Err(WaveError::BothSizes),
        (Some(b), None) => {
            let n = amount("batchSize", b, eligible, Round::Up)?;
            if n == 0 && !matches!(b, IntOrString::String(s) if s.ends_with('%')) {
                return Err(WaveError::Zero { field: "batchSize" });
            }
            n.max(1)
        }
        (None, Some(u)) => {
            let n = amount("maxUnavailable", u, eligible, Round::Down)?;
            if n == 0 && !matches!(u, IntOrString::String(s) if s.ends_with('%')) {
                return Err(WaveError::Zero {
                    field: "maxUnavailable",
                });
            }
            n.max(1)
        }
        (None, None) => amount(
            "maxUnavailable",
            &IntOrString::String(DEFAULT_MAX_UNAVAILABLE.into()),
            eligible,
            Round::Down,
        )?
        .max(1),
    };
    let canary = match &strategy.canary {
        Some(c) => {
            let n = amount("canary", c, eligible, Round::Up)?;
            if n == 0 && !matches!(c, IntOrString::String(s) if s.ends_with('%')) {
                return Err(WaveError::Zero { field: "canary" });
            }
            n.max(1).min(eligible)
        }
        None => 0,
    };
    let max_failures = match &strategy.max_failures {
        Some(f) => amount("maxFailures", f, eligible, Round::Down)?,
        None => 0,
    };
    Ok(Sizes {
        batch,
        canary,
        max_failures,
    })
}

// ---- planning ----------------------------------------------------------------------------

/// Which endpoints the wave takes, in which batches, and which it leaves out and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub batches: Vec<WaveBatch>,
    pub skipped: Vec<SkippedEndpoint>,
    pub max_failures: u32,
}

impl Plan {
    pub fn planned(&self) -> usize {
        self.batches.iter().map(|b| b.endpoints.len()).sum()
    }
}

/// Plans a wave over `candidates` (every endpoint of the wave's namespace). Endpoints are taken
/// in name order so the same fleet always gives the same plan; the canary batch, when asked
/// for, comes first.
pub fn plan(spec: &ReimageWaveSpec, candidates: &[Candidate]) -> Result<Plan, WaveError> {
    let mut eligible: Vec<&str> = Vec::new();
    let mut skipped = Vec::new();
    for c in candidates {
        if !selects(&spec.selector, &c.labels)? {
            continue;
        }
        match c.skip_reason() {
            Some(reason) => skipped.push(SkippedEndpoint {
                name: c.name.clone(),
                reason: reason.into(),
            }),
            None => eligible.push(&c.name),
        }
    }
    eligible.sort_unstable();
    eligible.dedup();
    skipped.sort_by(|a, b| a.name.cmp(&b.name));
    let sizes = sizes(&spec.strategy, eligible.len() as u32)?;
    let mut batches = Vec::new();
    let mut rest = &eligible[..];
    let batch = |index: usize, names: &[&str], canary: bool| WaveBatch {
        multicast: None,
        index: index as u32,
        endpoints: names.iter().map(|n| n.to_string()).collect(),
        started_at: None,
        finished_at: None,
        canary,
        succeeded: 0,
        failed: 0,
        running: 0,
        skipped: 0,
    };
    if sizes.canary > 0 {
        let (head, tail) = rest.split_at(sizes.canary as usize);
        batches.push(batch(0, head, true));
        rest = tail;
    }
    for chunk in rest.chunks(sizes.batch as usize) {
        batches.push(batch(batches.len(), chunk, false));
    }
    Ok(Plan {
        batches,
        skipped,
        max_failures: sizes.max_failures,
    })
}

// ---- members -----------------------------------------------------------------------------

/// Where one planned endpoint stands with respect to this wave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Member {
    /// The wave has not reimaged it yet.
    Waiting,
    /// Its attempt for this wave is running.
    Running,
    /// Its attempt for this wave checked in on the new image.
    Succeeded,
    /// Its attempt for this wave failed (or was aborted).
    Failed,
    /// Left out after planning, with the reason (deleted, protected, paused, Quarantined).
    Skipped(&'static str),
}

impl Member {
    /// Nothing more will happen to it in this wave.
    pub fn resolved(&self) -> bool {
        !matches!(self, Member::Waiting | Member::Running)
    }

    /// What the endpoint's spec and status say about wave `wave`; `None` for an endpoint that
    /// no longer exists.
    pub fn of(wave: &str, endpoint: Option<(&EndpointSpec, &EndpointStatus)>) -> Member {
        let Some((spec, status)) = endpoint else {
            return Member::Skipped(SKIP_DELETED);
        };
        if status
            .active_attempt
            .as_ref()
            .is_some_and(|a| a.wave.as_deref() == Some(wave))
        {
            return Member::Running;
        }
        if let Some(h) = status
            .history
            .iter()
            .find(|h| h.wave.as_deref() == Some(wave))
        {
            return match h.outcome {
                // A hand-off to WDS is recast's part done: the batch moves on.
                AttemptOutcome::Succeeded | AttemptOutcome::HandedOff => Member::Succeeded,
                AttemptOutcome::Failed | AttemptOutcome::Aborted => Member::Failed,
            };
        }
        let candidate = Candidate {
            name: String::new(),
            labels: BTreeMap::new(),
            protected: spec.protected,
            paused: spec.paused,
            quarantined: status.phase == Some(EndpointPhase::Quarantined),
        };
        match candidate.skip_reason() {
            Some(r) => Member::Skipped(r),
            None => Member::Waiting,
        }
    }
}

// ---- the next step -----------------------------------------------------------------------

/// The wave as the core sees it.
#[derive(Clone, Copy, Debug)]
pub struct WaveInput<'a> {
    pub name: &'a str,
    pub spec: &'a ReimageWaveSpec,
    pub status: &'a ReimageWaveStatus,
    /// Whether the wave's image is KnownGood. An image that has not proven itself runs only
    /// the wave's canary batch; the rest waits until it is KnownGood.
    pub image_known_good: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct WaveDecision {
    pub status: ReimageWaveStatus,
    /// Endpoints whose wave attempt may start now (members of the running batch that have not
    /// started yet). The lifecycle still applies every other guard, the global and per-site
    /// concurrency limits among them.
    pub due: Vec<String>,
    pub notices: Vec<Notice>,
    pub requeue_after: Option<Duration>,
}

/// A wave that ended with no attempt left running: nothing its endpoints do can move it.
pub fn settled(status: &ReimageWaveStatus) -> bool {
    terminal(status.phase) && status.counts.running == 0
}

fn terminal(p: Option<WavePhase>) -> bool {
    matches!(
        p,
        Some(WavePhase::Succeeded | WavePhase::Failed | WavePhase::Aborted)
    )
}

/// Decides the wave's next step. `candidates` are used only to make the plan (the first time);
/// `members` says where each planned endpoint stands (a planned name missing from it counts as
/// deleted).
pub fn decide(
    wave: WaveInput<'_>,
    candidates: &[Candidate],
    members: &BTreeMap<String, Member>,
    now: Timestamp,
) -> WaveDecision {
    let mut d = Deciding::new(wave, now);
    // max_failures is written together with the plan: its presence means "planned".
    if d.st.max_failures.is_none() {
        if wave.spec.aborted {
            return d.aborted_before_start();
        }
        if let Err(e) = d.plan_batches(candidates) {
            return d.cannot_plan(e);
        }
    }
    let members = Members::new(members, &d.st.batches);
    let counts = d.tally(&members);
    let mut next = d.next_step(&members, &counts);
    d.announce(&mut next, &counts);
    d.finish(next)
}

/// One `decide` call at work: the wave's status as it is rewritten, and the notices raised on
/// the way.
struct Deciding<'a> {
    wave: WaveInput<'a>,
    now: Timestamp,
    now_s: String,
    st: ReimageWaveStatus,
    notices: Vec<Notice>,
}

/// What the wave does next: the phase it is in after this decision, the one message that says
/// why, and what the controller starts or waits for.
struct NextStep {
    phase: WavePhase,
    message: String,
    requeue: Option<Duration>,
    due: Vec<String>,
    /// A batch started in this decision (its BatchStarted notice already says the wave runs).
    batch_started: bool,
}

impl NextStep {
    /// A step that starts nothing and looks again after [`WAVE_REQUEUE`].
    fn to(phase: WavePhase, message: String) -> Self {
        NextStep {
            phase,
            message,
            requeue: Some(WAVE_REQUEUE),
            due: Vec::new(),
            batch_started: false,
        }
    }

    fn requeue_after(self, requeue: Option<Duration>) -> Self {
        NextStep { requeue, ..self }
    }
}

/// Where each planned endpoint stands now, as the wave counts it.
struct Members<'m> {
    members: &'m BTreeMap<String, Member>,
    /// The endpoints of the batches that had finished before this decision.
    finished: std::collections::HashSet<String>,
}

impl<'m> Members<'m> {
    fn new(members: &'m BTreeMap<String, Member>, batches: &[WaveBatch]) -> Self {
        let finished = batches
            .iter()
            .filter(|b| b.finished_at.is_some())
            .flat_map(|b| b.endpoints.iter().cloned())
            .collect();
        Members { members, finished }
    }

    fn of(&self, n: &str) -> Member {
        let m = self
            .members
            .get(n)
            .cloned()
            .unwrap_or(Member::Skipped(SKIP_DELETED));
        // A member of a finished batch that is eligible again (unpaused, say) is not reimaged
        // late: its batch is over and a later one may already run.
        match m {
            Member::Waiting if self.finished.contains(n) => Member::Skipped(SKIP_MISSED),
            m => m,
        }
    }

    fn all_resolved(&self, b: &WaveBatch) -> bool {
        b.endpoints.iter().all(|n| self.of(n).resolved())
    }
}

/// The wave's totals as the batches are counted.
#[derive(Default)]
struct Tally {
    counts: WaveCounts,
    failed_endpoints: Vec<String>,
    late_skips: Vec<SkippedEndpoint>,
}

impl Tally {
    /// Counts one batch's members into the batch and into the wave's totals.
    fn count_batch(&mut self, b: &mut WaveBatch, members: &Members) {
        (b.succeeded, b.failed, b.running, b.skipped) = (0, 0, 0, 0);
        for n in &b.endpoints {
            match members.of(n) {
                Member::Waiting => self.counts.pending += 1,
                Member::Running => {
                    self.counts.running += 1;
                    b.running += 1
                }
                Member::Succeeded => {
                    self.counts.succeeded += 1;
                    b.succeeded += 1
                }
                Member::Failed => {
                    self.counts.failed += 1;
                    b.failed += 1;
                    self.failed_endpoints.push(n.clone());
                }
                Member::Skipped(r) => {
                    b.skipped += 1;
                    self.late_skips.push(SkippedEndpoint {
                        name: n.clone(),
                        reason: r.into(),
                    });
                }
            }
        }
    }
}

fn notice(type_: NoticeType, reason: &str, message: String) -> Notice {
    Notice {
        type_,
        reason: reason.into(),
        message,
    }
}

/// The notice a wave raises when it enters `phase`.
fn phase_notice(phase: WavePhase) -> (NoticeType, &'static str) {
    match phase {
        WavePhase::Succeeded => (NoticeType::Normal, "WaveSucceeded"),
        WavePhase::Aborted => (NoticeType::Normal, "WaveAborted"),
        WavePhase::Failed => (NoticeType::Warning, "WaveFailed"),
        // A plan that cannot run (bad window or pause) is news for whoever made it.
        WavePhase::Pending => (NoticeType::Warning, "WaveBlocked"),
        WavePhase::AwaitingApproval => (NoticeType::Normal, "WaveAwaitingApproval"),
        WavePhase::WaitingForWindow => (NoticeType::Normal, "WaveWaitingForWindow"),
        WavePhase::Paused => (NoticeType::Normal, "WavePaused"),
        WavePhase::Running => (NoticeType::Normal, "WaveRunning"),
    }
}

impl<'a> Deciding<'a> {
    fn new(wave: WaveInput<'a>, now: Timestamp) -> Self {
        Deciding {
            wave,
            now,
            now_s: time::format(now),
            st: wave.status.clone(),
            notices: Vec::new(),
        }
    }

    fn note(&mut self, t: NoticeType, reason: &str, message: String) {
        self.notices.push(notice(t, reason, message));
    }

    fn decision(self, due: Vec<String>, requeue_after: Option<Duration>) -> WaveDecision {
        WaveDecision {
            status: self.st,
            due,
            notices: self.notices,
            requeue_after,
        }
    }

    /// A wave aborted before it was ever planned ends at once, with no plan.
    fn aborted_before_start(mut self) -> WaveDecision {
        self.st.phase = Some(WavePhase::Aborted);
        self.st.finished_at = Some(self.now_s.clone());
        self.st.messages = vec!["aborted before it started; nothing was reimaged".into()];
        self.note(
            NoticeType::Normal,
            "WaveAborted",
            "aborted before it started".into(),
        );
        self.decision(vec![], None)
    }

    /// Makes the plan (once: it is kept in status, so a restart resumes the same plan).
    fn plan_batches(&mut self, candidates: &[Candidate]) -> Result<(), WaveError> {
        let p = plan(self.wave.spec, candidates)?;
        self.note(
            NoticeType::Normal,
            "WavePlanned",
            format!(
                "{} endpoints in {} batches onto {}; {} skipped",
                p.planned(),
                p.batches.len(),
                self.wave.spec.image,
                p.skipped.len()
            ),
        );
        self.st.batches = p.batches;
        self.st.skipped = p.skipped;
        self.st.max_failures = Some(p.max_failures);
        self.st.phase = Some(WavePhase::Pending);
        Ok(())
    }

    /// A spec that cannot be planned keeps the wave Pending and is looked at again; the
    /// warning is raised once per reason (the kept message says which was last).
    fn cannot_plan(mut self, e: WaveError) -> WaveDecision {
        let msg = format!("cannot plan the wave: {e}");
        if self.st.messages.first() != Some(&msg) {
            self.note(NoticeType::Warning, "WaveInvalid", msg.clone());
        }
        self.st.phase = Some(WavePhase::Pending);
        self.st.messages = vec![msg];
        self.decision(vec![], Some(WAVE_REQUEUE))
    }

    /// Tallies every batch from the members as they are now, finishes the started batches
    /// whose members are all resolved, and rewrites the wave's counts, failed endpoints and
    /// skips.
    fn tally(&mut self, members: &Members) -> WaveCounts {
        let mut tally = Tally::default();
        for b in &mut self.st.batches {
            tally.count_batch(b, members);
            if b.started_at.is_some() && b.finished_at.is_none() && members.all_resolved(b) {
                b.finished_at = Some(self.now_s.clone());
                self.notices.push(notice(
                    NoticeType::Normal,
                    "BatchFinished",
                    format!(
                        "batch {} finished: {} succeeded, {} failed, {} skipped",
                        b.index + 1,
                        b.succeeded,
                        b.failed,
                        b.skipped
                    ),
                ));
            }
        }
        let mut counts = tally.counts;
        counts.skipped = self.list_skips(tally.late_skips);
        counts.selected =
            counts.skipped + counts.pending + counts.running + counts.succeeded + counts.failed;
        self.st.counts = counts.clone();
        self.st.failed_endpoints = tally.failed_endpoints;
        counts
    }

    /// Rewrites status.skipped and returns how many it lists: skips found at planning stay as
    /// they were; endpoints that left later are listed after.
    fn list_skips(&mut self, late_skips: Vec<SkippedEndpoint>) -> u32 {
        let in_batches: std::collections::HashSet<&str> = self
            .st
            .batches
            .iter()
            .flat_map(|b| b.endpoints.iter().map(String::as_str))
            .collect();
        let mut skipped: Vec<SkippedEndpoint> = self
            .st
            .skipped
            .iter()
            .filter(|s| !in_batches.contains(s.name.as_str()))
            .cloned()
            .collect();
        skipped.extend(late_skips);
        let n = skipped.len() as u32;
        self.st.skipped = skipped;
        n
    }

    /// The phase the wave is in after this decision, in order of precedence: a finished wave
    /// stays finished, then abort, then too many failures, then a failed canary, then the
    /// first unresolved batch; no such batch left means success.
    fn next_step(&mut self, members: &Members, counts: &WaveCounts) -> NextStep {
        let before = self.wave.status.phase;
        let max_failures = self.st.max_failures.unwrap_or(0);
        let current = self
            .st
            .batches
            .iter()
            .position(|b| !members.all_resolved(b));
        let canary_failed = self
            .st
            .batches
            .first()
            .is_some_and(|b| b.canary && b.failed > 0);

        if terminal(before) {
            // Finished waves only keep their counts current (attempts that were running when
            // the wave stopped still finish).
            NextStep::to(
                before.unwrap_or(WavePhase::Failed),
                self.st.messages.first().cloned().unwrap_or_default(),
            )
            .requeue_after((counts.running > 0).then_some(WAVE_REQUEUE))
        } else if self.wave.spec.aborted {
            NextStep::to(
                WavePhase::Aborted,
                format!(
                    "aborted: no new attempt starts; {} running attempts finish",
                    counts.running
                ),
            )
        } else if counts.failed > max_failures {
            NextStep::to(
                WavePhase::Failed,
                format!(
                    "stopped: {} endpoints failed, more than maxFailures ({max_failures}); look at {}, then start a new wave",
                    counts.failed,
                    self.st
                        .failed_endpoints
                        .iter()
                        .take(5)
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        } else if canary_failed {
            NextStep::to(
                WavePhase::Failed,
                "stopped: the canary batch had a failure; look at the failed endpoints, then start a new wave".into(),
            )
        } else if let Some(i) = current {
            self.step_in_batch(i, members, counts)
        } else {
            NextStep::to(
                WavePhase::Succeeded,
                format!(
                    "{} endpoints on {}; {} failed, {} skipped",
                    counts.succeeded, self.wave.spec.image, counts.failed, counts.skipped
                ),
            )
        }
    }

    /// Batch `i` is the first one not resolved: what holds it (a bad spec, approval, pause,
    /// the pause between batches, the window), or else run it.
    fn step_in_batch(&mut self, i: usize, members: &Members, counts: &WaveCounts) -> NextStep {
        let spec = self.wave.spec;
        let started = self.st.batches[i].started_at.is_some();
        let window_open = self.window_open();
        let not_before = self.not_before(i);
        self.st.next_batch_at = None;
        match (window_open, not_before) {
            (Err(e), _) => NextStep::to(
                WavePhase::Pending,
                format!("{e}; fix spec.maintenanceWindow"),
            ),
            (_, Err(e)) => NextStep::to(
                WavePhase::Pending,
                format!(
                    "strategy.pauseBetweenBatches: {e}; fix it with kubectl edit or recastctl"
                ),
            ),
            _ if !started && i == 0 && spec.require_approval && spec.approved_by.is_none() => {
                NextStep::to(
                    WavePhase::AwaitingApproval,
                    format!(
                        "waiting for approval: run `recastctl wave approve {}` after reviewing `recastctl wave plan {}`",
                        self.wave.name, self.wave.name
                    ),
                )
                .requeue_after(None)
            }
            _ if spec.paused => NextStep::to(
                WavePhase::Paused,
                format!(
                    "paused at batch {}: no new attempt starts; {} running attempts finish",
                    i + 1,
                    counts.running
                ),
            )
            .requeue_after((counts.running > 0).then_some(WAVE_REQUEUE)),
            _ if !started && !self.st.batches[i].canary && !self.wave.image_known_good => {
                let has_canary = self.st.batches.first().is_some_and(|b| b.canary);
                NextStep::to(
                    WavePhase::Pending,
                    if has_canary {
                        format!(
                            "the image {} is not KnownGood: the canary batch ran; batch {} waits until the image is KnownGood (spec.promotion's soak, or `recastctl image promote {} --reason ...`)",
                            spec.image,
                            i + 1,
                            spec.image
                        )
                    } else {
                        format!(
                            "the image {} is not KnownGood, and this wave has no canary batch (strategy.canary): nothing starts until the image is KnownGood (spec.promotion's soak, or `recastctl image promote {} --reason ...`), or create the wave with a canary batch",
                            spec.image, spec.image
                        )
                    },
                )
            }
            (_, Ok(Some(at))) if !started && self.now < at => {
                self.st.next_batch_at = Some(time::format(at));
                NextStep::to(
                    WavePhase::Running,
                    format!("batch {} starts at {}", i + 1, time::format(at)),
                )
                .requeue_after(Some(
                    time::since(at, self.now)
                        .min(WAVE_REQUEUE)
                        .max(Duration::from_secs(1)),
                ))
            }
            (Ok(false), _) => NextStep::to(
                WavePhase::WaitingForWindow,
                format!(
                    "waiting for the maintenance window to start batch {}{}",
                    i + 1,
                    if counts.running > 0 {
                        format!("; {} attempts running", counts.running)
                    } else {
                        String::new()
                    }
                ),
            ),
            (Ok(true), _) => self.run_batch(i, started, members),
        }
    }

    /// Whether the maintenance window (if any) is open now.
    fn window_open(&self) -> Result<bool, window::WindowError> {
        match &self.wave.spec.maintenance_window {
            None => Ok(true),
            Some(w) => window::is_open(w, self.now),
        }
    }

    /// When batch `i` may start: pauseBetweenBatches after the previous batch finished (None
    /// for the first batch, an unfinished previous one, or no pause).
    fn not_before(
        &self,
        i: usize,
    ) -> Result<Option<Timestamp>, recast_crds::duration::DurationError> {
        i.checked_sub(1)
            .and_then(|p| self.st.batches[p].finished_at.as_deref())
            .and_then(time::parse)
            .zip(self.wave.spec.strategy.pause_between_batches.as_deref())
            .map(|(finished, pause)| {
                recast_crds::duration::parse(pause).map(|d| time::add(finished, d))
            })
            .transpose()
    }

    /// Nothing holds batch `i`: start it if it has not started, and hand out its members that
    /// have not started yet.
    fn run_batch(&mut self, i: usize, started: bool, members: &Members) -> NextStep {
        let waiting_members: Vec<String> = self.st.batches[i]
            .endpoints
            .iter()
            .filter(|n| members.of(n) == Member::Waiting)
            .cloned()
            .collect();
        if !started {
            self.start_batch(i);
        }
        self.st.current_batch = Some(i as u32 + 1);
        let message = format!(
            "batch {}/{}: {} running, {} not started yet (each endpoint's status says what it waits for)",
            i + 1,
            self.st.batches.len(),
            self.st.batches[i].running,
            waiting_members.len()
        );
        NextStep {
            due: waiting_members,
            batch_started: !started,
            ..NextStep::to(WavePhase::Running, message)
        }
    }

    /// Stamps batch `i` (and the wave, on its first batch) as started, and says so.
    fn start_batch(&mut self, i: usize) {
        self.st.batches[i].started_at = Some(self.now_s.clone());
        self.st.started_at.get_or_insert_with(|| self.now_s.clone());
        let b = &self.st.batches[i];
        let message = format!(
            "batch {}/{}{} started: {} endpoints",
            i + 1,
            self.st.batches.len(),
            if b.canary { " (canary)" } else { "" },
            b.endpoints.len()
        );
        self.note(NoticeType::Normal, "BatchStarted", message);
    }

    /// A finished wave keeps the outcome message it ended with. Otherwise a change of phase
    /// is announced, and a wave that ends now is stamped finished.
    fn announce(&mut self, next: &mut NextStep, counts: &WaveCounts) {
        let before = self.wave.status.phase;
        if terminal(before) {
            // The outcome message stays as it was when the wave ended.
            if let Some(m) = self.st.messages.first() {
                next.message = m.clone();
            }
        } else if Some(next.phase) != before {
            let (t, reason) = phase_notice(next.phase);
            if terminal(Some(next.phase)) {
                self.st.finished_at = Some(self.now_s.clone());
                self.st.next_batch_at = None;
                next.requeue = (counts.running > 0).then_some(WAVE_REQUEUE);
            }
            // Batch starts already say that the wave runs.
            if !(next.phase == WavePhase::Running && next.batch_started) {
                self.note(t, reason, next.message.clone());
            }
        }
    }

    fn finish(mut self, next: NextStep) -> WaveDecision {
        self.st.phase = Some(next.phase);
        self.st.messages = vec![next.message];
        self.decision(next.due, next.requeue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;
    use proptest::prelude::*;
    use recast_crds::MaintenanceWindow;

    const T0: &str = "2026-01-14T10:00:00Z";

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn ring(r: &str) -> LabelSelector {
        LabelSelector {
            match_labels: Some(labels(&[("ring", r)])),
            match_expressions: None,
        }
    }

    fn spec(strategy: WaveStrategy) -> ReimageWaveSpec {
        ReimageWaveSpec {
            multicast: None,
            selector: ring("pilot"),
            image: "win11-24h2-2026-01".into(),
            strategy,
            maintenance_window: None,
            require_approval: false,
            approved_by: None,
            paused: false,
            aborted: false,
            reason: "January rollup".into(),
        }
    }

    fn candidate(name: &str, ring: &str) -> Candidate {
        Candidate {
            name: name.into(),
            labels: labels(&[("ring", ring)]),
            protected: false,
            paused: false,
            quarantined: false,
        }
    }

    fn fleet(n: usize) -> Vec<Candidate> {
        (0..n)
            .map(|i| candidate(&format!("ep-{i:05}"), "pilot"))
            .collect()
    }

    fn int(n: i32) -> Option<IntOrString> {
        Some(IntOrString::Int(n))
    }
    fn pct(s: &str) -> Option<IntOrString> {
        Some(IntOrString::String(s.into()))
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: (!values.is_empty()).then(|| values.iter().map(|v| v.to_string()).collect()),
        }
    }

    #[test]
    fn selectors_match_like_kubernetes() {
        let l = labels(&[("ring", "pilot"), ("site", "berlin")]);
        let sel = |exprs: Vec<LabelSelectorRequirement>| LabelSelector {
            match_labels: None,
            match_expressions: Some(exprs),
        };
        assert!(selects(&ring("pilot"), &l).unwrap());
        assert!(!selects(&ring("broad"), &l).unwrap());
        assert!(selects(&sel(vec![expr("site", "In", &["berlin", "paris"])]), &l).unwrap());
        assert!(!selects(&sel(vec![expr("site", "NotIn", &["berlin"])]), &l).unwrap());
        // NotIn matches an endpoint without the label, as in Kubernetes.
        assert!(selects(&sel(vec![expr("tier", "NotIn", &["gold"])]), &l).unwrap());
        assert!(selects(&sel(vec![expr("site", "Exists", &[])]), &l).unwrap());
        assert!(selects(&sel(vec![expr("tier", "DoesNotExist", &[])]), &l).unwrap());
        // matchLabels and matchExpressions must all hold.
        let both = LabelSelector {
            match_labels: Some(labels(&[("ring", "pilot")])),
            match_expressions: Some(vec![expr("site", "In", &["paris"])]),
        };
        assert!(!selects(&both, &l).unwrap());
    }

    #[test]
    fn bad_selectors_are_errors() {
        let l = labels(&[("ring", "pilot")]);
        let sel = |e| LabelSelector {
            match_labels: None,
            match_expressions: Some(vec![e]),
        };
        assert_eq!(
            selects(&sel(expr("ring", "Matches", &["x"])), &l),
            Err(WaveError::Operator("Matches".into()))
        );
        assert!(matches!(
            selects(&sel(expr("ring", "In", &[])), &l),
            Err(WaveError::NoValues(_))
        ));
        assert!(matches!(
            selects(&sel(expr("ring", "Exists", &["x"])), &l),
            Err(WaveError::UnexpectedValues(_))
        ));
        assert_eq!(
            selects(&LabelSelector::default(), &l),
            Err(WaveError::EmptySelector)
        );
        // A typo in a later expression is reported even when an earlier one does not match.
        let two = LabelSelector {
            match_labels: Some(labels(&[("ring", "broad")])),
            match_expressions: Some(vec![expr("x", "Exist", &[])]),
        };
        assert!(selects(&two, &l).is_err());
    }

    #[test]
    fn percentages_round_as_kubernetes_does() {
        let s = |b, u, c, f| WaveStrategy {
            batch_size: b,
            max_unavailable: u,
            max_failures: f,
            pause_between_batches: None,
            canary: c,
        };
        // batchSize rounds up, maxUnavailable down (at least 1), maxFailures down.
        assert_eq!(
            sizes(&s(pct("10%"), None, None, None), 15).unwrap().batch,
            2
        );
        assert_eq!(
            sizes(&s(None, pct("10%"), None, None), 15).unwrap().batch,
            1
        );
        assert_eq!(sizes(&s(None, pct("10%"), None, None), 5).unwrap().batch, 1);
        assert_eq!(
            sizes(&s(None, pct("30%"), None, None), 10).unwrap().batch,
            3
        );
        assert_eq!(sizes(&s(None, int(4), None, None), 10).unwrap().batch, 4);
        assert_eq!(
            sizes(&s(None, None, None, pct("5%")), 39)
                .unwrap()
                .max_failures,
            1
        );
        assert_eq!(
            sizes(&s(None, None, None, pct("5%")), 19)
                .unwrap()
                .max_failures,
            0
        );
        assert_eq!(
            sizes(&s(None, None, None, int(3)), 19)
                .unwrap()
                .max_failures,
            3
        );
        // Canary rounds up and never exceeds the selection.
        assert_eq!(
            sizes(&s(None, None, pct("1%"), None), 150).unwrap().canary,
            2
        );
        assert_eq!(sizes(&s(None, None, int(10), None), 4).unwrap().canary, 4);
        // Neither size: Kubernetes' default maxUnavailable of 25%.
        assert_eq!(sizes(&s(None, None, None, None), 50).unwrap().batch, 12);
        assert_eq!(sizes(&s(None, None, None, None), 2).unwrap().batch, 1);
        // Bad input says which field and what to write.
        assert_eq!(
            sizes(&s(pct("ten"), None, None, None), 10),
            Err(WaveError::Amount {
                field: "batchSize",
                value: "ten".into()
            })
        );
        assert!(matches!(
            sizes(&s(pct("150%"), None, None, None), 10),
            Err(WaveError::Amount { .. })
        ));
        assert_eq!(
            sizes(&s(int(0), None, None, None), 10),
            Err(WaveError::Zero { field: "batchSize" })
        );
        assert_eq!(
            sizes(&s(int(-1), None, None, None), 10),
            Err(WaveError::Amount {
                field: "batchSize",
                value: "-1".into()
            })
        );
        assert_eq!(
            sizes(&s(int(1), int(1), None, None), 10),
            Err(WaveError::BothSizes)
        );
    }

    #[test]
    fn plan_skips_protected_paused_and_quarantined_with_the_reason() {
        let mut c = fleet(6);
        c[1].protected = true;
        c[2].paused = true;
        c[3].quarantined = true;
        c.push(candidate("other", "broad"));
        let p = plan(
            &spec(WaveStrategy {
                batch_size: int(2),
                canary: int(1),
                ..Default::default()
            }),
            &c,
        )
        .unwrap();
        let reasons: Vec<(&str, &str)> = p
            .skipped
            .iter()
            .map(|s| (s.name.as_str(), s.reason.as_str()))
            .collect();
        assert_eq!(
            reasons,
            [
                ("ep-00001", "Protected"),
                ("ep-00002", "Paused"),
                ("ep-00003", "Quarantined")
            ]
        );
        let batches: Vec<(Vec<String>, bool)> = p
            .batches
            .iter()
            .map(|b| (b.endpoints.clone(), b.canary))
            .collect();
        assert_eq!(
            batches,
            [
                (vec!["ep-00000".to_string()], true),
                (vec!["ep-00004".to_string(), "ep-00005".to_string()], false)
            ]
        );
    }

    /// A tiny fleet simulator: endpoints start their wave attempt when due (within a global
    /// limit), and finish with a chosen outcome a few steps later.
    struct Sim {
        spec: ReimageWaveSpec,
        status: ReimageWaveStatus,
        candidates: Vec<Candidate>,
        members: BTreeMap<String, Member>,
        now: Timestamp,
        global_limit: usize,
        /// Whether the wave's image is KnownGood.
        known_good: bool,
        /// Endpoints whose attempt fails.
        failing: std::collections::BTreeSet<String>,
        history: Vec<WaveDecision>,
    }

    impl Sim {
        fn new(spec: ReimageWaveSpec, n: usize) -> Sim {
            let candidates = fleet(n);
            Sim {
                members: candidates
                    .iter()
                    .map(|c| (c.name.clone(), Member::Waiting))
                    .collect(),
                spec,
                status: ReimageWaveStatus::default(),
                candidates,
                now: t(T0),
                global_limit: usize::MAX,
                known_good: true,
                failing: Default::default(),
                history: vec![],
            }
        }

        fn decide(&mut self) -> WaveDecision {
            let d = decide(
                WaveInput {
                    name: "jan",
                    spec: &self.spec,
                    status: &self.status,
                    image_known_good: self.known_good,
                },
                &self.candidates,
                &self.members,
                self.now,
            );
            // Deterministic and idempotent: the same inputs give the same decision, and
            // deciding again on its own output changes nothing but notices.
            assert_eq!(
                d,
                decide(
                    WaveInput {
                        name: "jan",
                        spec: &self.spec,
                        status: &self.status,
                        image_known_good: self.known_good,
                    },
                    &self.candidates,
                    &self.members,
                    self.now
                )
            );
            self.status = d.status.clone();
            self.history.push(d.clone());
            d
        }

        /// One tick: decide, start the due attempts within the global limit, then finish the
        /// attempts that were already running.
        fn tick(&mut self) -> WaveDecision {
            let d = self.decide();
            let running: Vec<String> = self
                .members
                .iter()
                .filter(|(_, m)| **m == Member::Running)
                .map(|(n, _)| n.clone())
                .collect();
            for n in &running {
                let outcome = if self.failing.contains(n) {
                    Member::Failed
                } else {
                    Member::Succeeded
                };
                self.members.insert(n.clone(), outcome);
            }
            // Attempts that were running finished above, so every slot is free again.
            for n in d.due.iter().take(self.global_limit) {
                self.members.insert(n.clone(), Member::Running);
            }
            self.now = time::add(self.now, Duration::from_secs(60));
            d
        }

        fn run(&mut self, max_ticks: usize) -> WavePhase {
            for _ in 0..max_ticks {
                let d = self.tick();
                if terminal(d.status.phase) && d.status.counts.running == 0 {
                    break;
                }
            }
            self.status.phase.unwrap()
        }
    }

    #[test]
    fn a_wave_runs_batch_by_batch_to_success() {
        let mut s = Sim::new(
            spec(WaveStrategy {
                batch_size: int(3),
                canary: int(1),
                ..Default::default()
            }),
            10,
        );
        assert_eq!(s.run(100), WavePhase::Succeeded);
        assert_eq!(s.status.counts.succeeded, 10);
        assert_eq!(s.status.counts.selected, 10);
        assert_eq!(s.status.batches.len(), 4);
        assert!(s.status.batches.iter().all(|b| b.finished_at.is_some()));
        let reasons: Vec<&str> = s
            .history
            .iter()
            .flat_map(|d| d.notices.iter().map(|n| n.reason.as_str()))
            .collect();
        assert_eq!(reasons.first(), Some(&"WavePlanned"));
        assert_eq!(reasons.last(), Some(&"WaveSucceeded"));
        assert_eq!(reasons.iter().filter(|r| **r == "BatchStarted").count(), 4);
    }

    #[test]
    fn the_failure_budget_stops_the_wave() {
        let mut s = Sim::new(
            spec(WaveStrategy {
                batch_size: int(4),
                max_failures: int(1),
                ..Default::default()
            }),
            20,
        );
        s.failing = ["ep-00001", "ep-00005", "ep-00006"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(s.run(100), WavePhase::Failed);
        assert_eq!(s.status.counts.failed, 3);
        assert_eq!(
            s.status.failed_endpoints,
            ["ep-00001", "ep-00005", "ep-00006"]
        );
        // The third batch never started.
        assert!(s.status.batches[2].started_at.is_none());
        assert!(s.status.messages[0].contains("more than maxFailures (1)"));
        assert_eq!(s.decide().due, Vec::<String>::new());
    }

    #[test]
    fn a_failed_canary_stops_the_wave_whatever_the_budget() {
        let mut s = Sim::new(
            spec(WaveStrategy {
                batch_size: int(4),
                canary: int(2),
                max_failures: pct("50%"),
                ..Default::default()
            }),
            20,
        );
        s.failing.insert("ep-00000".into());
        assert_eq!(s.run(100), WavePhase::Failed);
        assert!(s.status.batches[1].started_at.is_none());
        assert!(s.status.messages[0].contains("canary"));
    }

    #[test]
    fn an_image_that_is_not_known_good_runs_only_the_canary_batch() {
        let mut s = Sim::new(
            spec(WaveStrategy {
                batch_size: int(4),
                canary: int(2),
                ..Default::default()
            }),
            10,
        );
        s.known_good = false;
        // The canary batch runs and finishes; batch 2 waits, saying why.
        s.run(20);
        assert!(s.status.batches[0].finished_at.is_some(), "{:?}", s.status);
        assert!(s.status.batches[1].started_at.is_none());
        assert_eq!(s.status.phase, Some(WavePhase::Pending));
        assert!(
            s.status.messages[0].starts_with(
                "the image win11-24h2-2026-01 is not KnownGood: the canary batch ran; batch 2 waits"
            ),
            "{:?}",
            s.status.messages
        );
        // KnownGood (the soak, or a promotion): the wave goes on.
        s.known_good = true;
        assert_eq!(s.run(100), WavePhase::Succeeded);
        // Without a canary batch, nothing starts onto an image that is not KnownGood.
        let mut s = Sim::new(
            spec(WaveStrategy {
                batch_size: int(4),
                ..Default::default()
            }),
            10,
        );
        s.known_good = false;
        let d = s.tick();
        assert!(d.due.is_empty());
        assert!(s.status.batches.iter().all(|b| b.started_at.is_none()));
        assert!(
            s.status.messages[0].contains("this wave has no canary batch"),
            "{:?}",
            s.status.messages
        );
        // Paused says paused, whatever the image.
        s.spec.paused = true;
        assert_eq!(s.tick().status.phase, Some(WavePhase::Paused));
    }

    #[test]
    fn approval_gates_the_first_batch() {
        let mut sp = spec(WaveStrategy::default());
        sp.require_approval = true;
        let mut s = Sim::new(sp, 4);
        let d = s.tick();
        assert_eq!(d.status.phase, Some(WavePhase::AwaitingApproval));
        assert!(d.due.is_empty());
        assert!(d.status.messages[0].contains("recastctl wave approve jan"));
        s.spec.approved_by = Some("alice".into());
        assert_eq!(s.tick().status.phase, Some(WavePhase::Running));
        assert_eq!(s.run(100), WavePhase::Succeeded);
    }

    #[test]
    fn pause_stops_new_attempts_and_resume_continues() {
        let mut s = Sim::new(
            spec(WaveStrategy {
                batch_size: int(2),
                ..Default::default()
            }),
            6,
        );
        s.global_limit = 1;
        s.tick(); // batch 1 starts, ep-0 runs
        s.spec.paused = true;
        let d = s.tick(); // ep-0 finishes; ep-1 would be next but the wave is paused
        assert_eq!(d.status.phase, Some(WavePhase::Paused));
        assert!(d.due.is_empty());
        let d = s.tick();
        assert!(d.due.is_empty());
        assert_eq!(s.members["ep-00001"], Member::Waiting);
        s.spec.paused = false;
        assert_eq!(s.tick().due, ["ep-00001"]);
        assert_eq!(s.run(100), WavePhase::Succeeded);
    }

    #[test]
    fn abort_arms_nothing_new_and_lets_running_attempts_finish() {
        let mut s = Sim::new(
            spec(WaveStrategy {
                batch_size: int(3),
                ..Default::default()
            }),
            9,
        );
        s.tick();
        assert_eq!(s.status.counts.running, 0);
        s.tick();
        s.spec.aborted = true;
        let d = s.decide();
        assert_eq!(d.status.phase, Some(WavePhase::Aborted));
        assert!(d.due.is_empty());
        assert!(d.requeue_after.is_none() || d.status.counts.running > 0);
        // Members never started stay untouched.
        assert_eq!(s.members["ep-00008"], Member::Waiting);
        let reasons: Vec<&str> = d.notices.iter().map(|n| n.reason.as_str()).collect();
        assert!(reasons.contains(&"WaveAborted"));
    }

    #[test]
    fn pause_between_batches_holds_the_next_batch() {
        let mut s = Sim::new(
            spec(WaveStrategy {
                batch_size: int(2),
                pause_between_batches: Some("10m".into()),
                ..Default::default()
            }),
            4,
        );
        s.tick(); // batch 1 starts
        s.tick(); // batch 1 running -> done
        let d = s.tick(); // batch 1 finished: batch 2 waits 10 minutes
        assert!(d.status.batches[0].finished_at.is_some());
        assert!(d.due.is_empty());
        assert!(d.status.next_batch_at.is_some());
        assert!(d.status.messages[0].starts_with("batch 2 starts at"));
        let mut waited = 0;
        while s.tick().due.is_empty() {
            waited += 1;
            assert!(waited < 20, "batch 2 never started");
        }
        assert!(waited >= 8, "batch 2 started after {waited} minutes");
    }

    #[test]
    fn batches_start_only_inside_the_maintenance_window() {
        let mut sp = spec(WaveStrategy::default());
        // 22:00 in Berlin is 21:00 UTC in January.
        sp.maintenance_window = Some(MaintenanceWindow {
            start: "22:00".into(),
            duration: "2h".into(),
            days: vec![],
            time_zone: Some("Europe/Berlin".into()),
        });
        let mut s = Sim::new(sp, 4);
        s.now = t("2026-01-14T20:30:00Z");
        let d = s.tick();
        assert_eq!(d.status.phase, Some(WavePhase::WaitingForWindow));
        assert!(d.due.is_empty());
        s.now = t("2026-01-14T21:00:00Z");
        let d = s.tick();
        assert_eq!(d.status.phase, Some(WavePhase::Running));
        assert_eq!(d.due.len(), 1);
    }

    #[test]
    fn a_bad_window_blocks_with_a_message_that_says_what_to_fix() {
        let mut sp = spec(WaveStrategy::default());
        sp.maintenance_window = Some(MaintenanceWindow {
            start: "22:00".into(),
            duration: "2h".into(),
            days: vec![],
            time_zone: Some("Mars/Olympus".into()),
        });
        let mut s = Sim::new(sp, 2);
        let d = s.tick();
        assert_eq!(d.status.phase, Some(WavePhase::Pending));
        assert!(d.due.is_empty());
        assert!(d.status.messages[0].contains("Mars/Olympus"));
        assert!(d.status.messages[0].contains("fix spec.maintenanceWindow"));
    }

    #[test]
    fn an_invalid_strategy_is_reported_and_planned_once_fixed() {
        let mut s = Sim::new(
            spec(WaveStrategy {
                batch_size: pct("lots"),
                ..Default::default()
            }),
            3,
        );
        let d = s.tick();
        assert!(d.status.batches.is_empty());
        assert!(d.status.messages[0].contains("strategy.batchSize"));
        assert_eq!(d.notices[0].reason, "WaveInvalid");
        // The same problem is not announced again on every reconcile.
        assert!(s.tick().notices.is_empty());
        s.spec.strategy.batch_size = int(3);
        assert_eq!(s.run(20), WavePhase::Succeeded);
    }

    #[test]
    fn endpoints_that_leave_after_planning_are_skipped_with_the_reason() {
        let mut s = Sim::new(
            spec(WaveStrategy {
                batch_size: int(2),
                ..Default::default()
            }),
            4,
        );
        s.decide();
        s.members.remove("ep-00003");
        s.members
            .insert("ep-00001".into(), Member::Skipped(SKIP_PROTECTED));
        assert_eq!(s.run(20), WavePhase::Succeeded);
        let skipped: Vec<(&str, &str)> = s
            .status
            .skipped
            .iter()
            .map(|s| (s.name.as_str(), s.reason.as_str()))
            .collect();
        assert_eq!(
            skipped,
            [("ep-00001", "Protected"), ("ep-00003", "Deleted")]
        );
        assert_eq!(s.status.counts.succeeded, 2);
        assert_eq!(s.status.counts.selected, 4);
    }

    #[test]
    fn member_state_comes_from_the_endpoint_history() {
        use recast_crds::endpoint::{AttemptRecord, AttemptTrigger};
        let spec: EndpointSpec =
            serde_json::from_value(serde_json::json!({"identity": {"macAddresses": ["00:11:22:33:44:55"]}, "bootMode": "uefi", "image": {"goldenImage": "x"}})).unwrap();
        let mut status = EndpointStatus::default();
        assert_eq!(Member::of("jan", Some((&spec, &status))), Member::Waiting);
        assert_eq!(Member::of("jan", None), Member::Skipped(SKIP_DELETED));
        let rec = |wave: &str, outcome| AttemptRecord {
            secure_boot: None,
            id: "a".into(),
            trigger: AttemptTrigger::Wave,
            reason: String::new(),
            image: "x".into(),
            wave: Some(wave.into()),
            outcome,
            tries: 1,
            started_at: T0.into(),
            finished_at: T0.into(),
            message: None,
        };
        status.history = vec![rec("dec", AttemptOutcome::Failed)];
        assert_eq!(Member::of("jan", Some((&spec, &status))), Member::Waiting);
        status
            .history
            .insert(0, rec("jan", AttemptOutcome::Succeeded));
        assert_eq!(Member::of("jan", Some((&spec, &status))), Member::Succeeded);
        assert_eq!(Member::of("dec", Some((&spec, &status))), Member::Failed);
        status.phase = Some(EndpointPhase::Quarantined);
        assert_eq!(
            Member::of("feb", Some((&spec, &status))),
            Member::Skipped(SKIP_QUARANTINED)
        );
    }

    fn strategy() -> impl Strategy<Value = WaveStrategy> {
        let amount = prop_oneof![
            (1i32..40).prop_map(IntOrString::Int),
            (1u32..=100).prop_map(|p| IntOrString::String(format!("{p}%"))),
        ];
        let failures = prop_oneof![
            (0i32..10).prop_map(IntOrString::Int),
            (0u32..=100).prop_map(|p| IntOrString::String(format!("{p}%"))),
        ];
        (
            any::<bool>(),
            amount.clone(),
            prop::option::of(amount),
            prop::option::of(failures),
        )
            .prop_map(|(by_batch, size, canary, max_failures)| WaveStrategy {
                batch_size: by_batch.then(|| size.clone()),
                max_unavailable: (!by_batch).then_some(size),
                max_failures,
                pause_between_batches: None,
                canary,
            })
    }

    fn fleet_strategy() -> impl Strategy<Value = Vec<Candidate>> {
        prop::collection::vec((0u8..10, 0u8..3), 0..80).prop_map(|v| {
            v.into_iter()
                .enumerate()
                .map(|(i, (flag, r))| Candidate {
                    name: format!("ep-{i:03}"),
                    labels: labels(&[("ring", ["pilot", "broad", "pilot"][r as usize])]),
                    protected: flag == 1,
                    paused: flag == 2,
                    quarantined: flag == 3,
                })
                .collect()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        #[test]
        fn every_selected_endpoint_is_planned_exactly_once(
            candidates in fleet_strategy(),
            st in strategy(),
        ) {
            let p = plan(&spec(st.clone()), &candidates).unwrap();
            let mut planned: Vec<&str> = p
                .batches
                .iter()
                .flat_map(|b| b.endpoints.iter().map(String::as_str))
                .collect();
            let total = planned.len();
            planned.sort_unstable();
            planned.dedup();
            prop_assert_eq!(total, planned.len(), "an endpoint is in two batches");
            for c in &candidates {
                let selected = c.labels.get("ring").map(String::as_str) == Some("pilot");
                let eligible = selected && c.skip_reason().is_none();
                prop_assert_eq!(planned.contains(&c.name.as_str()), eligible, "{}", c.name);
                prop_assert_eq!(
                    p.skipped.iter().any(|s| s.name == c.name),
                    selected && !eligible
                );
            }
            // Batch sizes honour the strategy.
            let sz = sizes(&st, total as u32).unwrap();
            for (i, b) in p.batches.iter().enumerate() {
                prop_assert!(!b.endpoints.is_empty());
                prop_assert_eq!(b.index as usize, i);
                if b.canary {
                    prop_assert_eq!(i, 0);
                    prop_assert_eq!(b.endpoints.len() as u32, sz.canary);
                } else {
                    prop_assert!(b.endpoints.len() as u32 <= sz.batch);
                    let last = i + 1 == p.batches.len();
                    prop_assert!(last || b.endpoints.len() as u32 == sz.batch);
                }
            }
            if let Some(IntOrString::String(s)) = &st.max_unavailable
                && total > 0
            {
                // maxUnavailable as a percentage never exceeds that share (but is at least 1).
                let p: u32 = s.trim_end_matches('%').parse().unwrap();
                prop_assert!(sz.batch == 1 || sz.batch * 100 <= p * total as u32);
            }
        }

        #[test]
        fn batches_start_in_order_and_the_budget_stops_the_wave(
            n in 0usize..60,
            st in strategy(),
            failing in prop::collection::btree_set(0usize..60, 0..20),
            limit in 1usize..8,
        ) {
            let mut s = Sim::new(spec(st), n);
            s.global_limit = limit;
            s.failing = failing.iter().map(|i| format!("ep-{i:05}")).collect();
            s.run(2000);
            let phase = s.status.phase.unwrap();
            prop_assert!(terminal(Some(phase)), "wave did not finish: {:?}", s.status.messages);
            let max_failures = s.status.max_failures.unwrap();
            for (step, d) in s.history.iter().enumerate() {
                let batches = &d.status.batches;
                // No batch starts while an earlier one is unresolved.
                for (i, b) in batches.iter().enumerate() {
                    if b.started_at.is_some() {
                        for earlier in &batches[..i] {
                            prop_assert!(earlier.finished_at.is_some(), "step {step}: batch {i} started before batch {} finished", earlier.index);
                        }
                    }
                }
                // Only members of the running batch are due, and each is due until it starts.
                if let Some(cur) = d.status.current_batch {
                    for n in &d.due {
                        prop_assert!(batches[cur as usize - 1].endpoints.contains(n));
                    }
                }
                // Once the budget is spent nothing new is due.
                if d.status.counts.failed > max_failures {
                    prop_assert!(d.due.is_empty());
                    prop_assert_eq!(d.status.phase, Some(WavePhase::Failed));
                }
            }
            let failed = s.status.counts.failed;
            match phase {
                WavePhase::Succeeded => {
                    prop_assert!(failed <= max_failures);
                    prop_assert_eq!(s.status.counts.succeeded + failed, n as u32);
                }
                WavePhase::Failed => {
                    let canary_failed = s.status.batches.first().is_some_and(|b| b.canary && b.failed > 0);
                    prop_assert!(failed > max_failures || canary_failed);
                    // At most one batch was in flight when the budget tripped.
                    let biggest = s.status.batches.iter().map(|b| b.endpoints.len() as u32).max().unwrap_or(0);
                    prop_assert!(failed <= max_failures + biggest);
                }
                other => prop_assert!(false, "unexpected end phase {other:?}"),
            }
        }
    }
}
