//! The GoldenImage controller: brings each image's bytes into the artifact store (HTTP with
//! resume, or a local path), verifies them with recast-golden (sha256, the WIM's own XML and
//! servicing packages), writes the facts and the Verified condition, and keeps KnownGood,
//! channels and readyEndpoints in step with the fleet. The decisions live in [`decide`]; this
//! module is the I/O around them.
//!
//! Safety rule: bytes reach `images/<sha256>.wim`, the only place the boot service serves
//! images from, only after a verification of exactly those bytes said Verified. Until then they
//! wait in a staging directory outside the boot root, and what a source may reach at all is
//! decided by [`source`].
//!
//! Each image's fetch and check runs as its own task: a slow or stalled source holds up only
//! its own image, never another's.

pub mod decide;
pub mod fetch;
pub mod source;
pub mod stream;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use recast_crds::common::ConditionStatus;
use recast_crds::golden_image::{GoldenImage, GoldenImageStatus, ImageFacts};
use tokio::sync::watch;

use crate::clock::{Clock, SystemClock};
use crate::store::{BackendError, ImageStore};
use decide::Work;
use fetch::{ArtifactStore, FetchError, FetchProgress};
use recast_core::lifecycle::{Notice, NoticeType};
use source::SourcePolicy;

/// Where the controller puts bytes and what sources may reach.
#[derive(Clone, Debug)]
pub struct ImageConfig {
    pub store: ArtifactStore,
    pub sources: SourcePolicy,
    /// Make and verify the pipable form of each verified image (the boot service runs
    /// multicast sessions: `--multicast-interface`).
    pub streams: bool,
}

/// How often the controller looks at the images, and how often at the fleet for KnownGood.
const POLL: Duration = Duration::from_secs(2);
const FLEET_EVERY: Duration = Duration::from_secs(30);
/// How long after a failure the pipable form of an image is tried again.
const STREAM_RETRY: Duration = Duration::from_secs(600);
/// How often a long fetch or check logs its progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// Verifications (CPU: sha256 and WIM parsing) at once; fetches are not limited, they wait
/// on the network.
const VERIFY_SLOTS: usize = 2;

type ImageKey = (String, String);

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every update of the guarded maps is a single insert or remove: a poisoned lock still
    // holds a consistent map.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn key(gi: &GoldenImage) -> ImageKey {
    (
        recast_crds::namespace_of(&gi.metadata).to_string(),
        gi.metadata.name.clone().unwrap_or_default(),
    )
}

pub struct ImageController<B: ImageStore> {
    backend: Arc<B>,
    store: ArtifactStore,
    /// Make the pipable form of each verified image ([`stream`]).
    streams: bool,
    /// Pipable forms being made, by `<digest>-<index>`.
    stream_inflight: std::sync::Mutex<HashMap<String, tokio::task::AbortHandle>>,
    /// When making a pipable form (`<digest>-<index>`) last failed.
    stream_failed: std::sync::Mutex<HashMap<String, Instant>>,
    sources: Arc<SourcePolicy>,
    http: reqwest::Client,
    /// Images whose fetch or check is running, with the generation it is for: a pass starts
    /// none twice, and an edited spec replaces a running fetch of the old one.
    inflight: std::sync::Mutex<HashMap<ImageKey, (Option<i64>, tokio::task::AbortHandle)>>,
    /// A check finished since the fleet facts were last refreshed.
    checked: AtomicBool,
    verify_slots: tokio::sync::Semaphore,
    /// Set on shutdown: a running check stops at its next chunk.
    cancel: Arc<AtomicBool>,
    /// Per image: failed fetches or checks in a row.
    backoff: std::sync::Mutex<HashMap<ImageKey, Backoff>>,
    /// Runs the deep check (the third-party WIM parser) in a limited child process.
    deep_check: recast_golden::sandbox::Sandbox,
    /// Stamps conditions and times the KnownGood soak (tests move it).
    clock: Arc<dyn Clock>,
}

/// The operator binary's hidden subcommand that runs one deep check ([`deep_check_main`]).
pub const DEEP_CHECK_SUBCOMMAND: &str = "deep-check";

/// Failed fetches or checks of one image in a row, and when to try again. It belongs to the
/// generation that failed: an edited spec is tried at once.
struct Backoff {
    failures: u32,
    retry_at: Instant,
    generation: Option<i64>,
}

/// One verification's result, ready for [`decide::checked`].
struct Checked {
    verdict: (ConditionStatus, &'static str, String),
    facts: Option<ImageFacts>,
    digest: Option<String>,
}

impl<B: ImageStore> ImageController<B> {
    pub fn new(backend: Arc<B>, config: ImageConfig) -> Result<Self, String> {
        let sources = Arc::new(config.sources);
        let http = fetch::client(&sources)?;
        Ok(ImageController {
            backend,
            store: config.store,
            streams: config.streams,
            stream_inflight: Default::default(),
            stream_failed: Default::default(),
            sources,
            http,
            inflight: Default::default(),
            checked: AtomicBool::new(false),
            verify_slots: tokio::sync::Semaphore::new(VERIFY_SLOTS),
            cancel: Arc::new(AtomicBool::new(false)),
            backoff: Default::default(),
            deep_check: recast_golden::sandbox::Sandbox::this_binary(
                DEEP_CHECK_SUBCOMMAND,
                Default::default(),
            ),
            clock: Arc::new(SystemClock),
        })
    }

    /// Reads time from `clock` instead of the system's.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The deep check's limits (the operator's --deep-check-* flags).
    pub fn with_deep_check_limits(mut self, limits: recast_golden::sandbox::Limits) -> Self {
        self.deep_check.limits = limits;
        self
    }

    /// Runs the deep check with `program DEEP_CHECK_SUBCOMMAND ...` instead of this process's
    /// own binary (tests that host the controller in a test binary name the real operator).
    pub fn with_deep_check_program(mut self, program: impl Into<std::path::PathBuf>) -> Self {
        self.deep_check.program = program.into();
        self
    }

    /// Runs until `shutdown` turns true: every POLL, starts a task for each image that needs
    /// a fetch or check and has none running, and refreshes the fleet facts after a check or
    /// every FLEET_EVERY.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        tracing::info!(store = %self.store.root.display(), staging = %self.store.staging.display(), "golden-image controller started");
        let mut last_fleet = Instant::now() - FLEET_EVERY;
        loop {
            if *shutdown.borrow() {
                break;
            }
            match self.start_work().await {
                Ok(leader) => {
                    let checked = self.checked.swap(false, Ordering::SeqCst);
                    if leader && (checked || last_fleet.elapsed() >= FLEET_EVERY) {
                        match self.backend.all_golden_images().await {
                            Ok(images) => match self.refresh_fleet_facts(&images).await {
                                Ok(()) => last_fleet = Instant::now(),
                                Err(e) => {
                                    tracing::warn!(error = %e, "golden-image fleet refresh failed; retrying")
                                }
                            },
                            Err(e) => {
                                tracing::warn!(error = %e, "golden-image fleet refresh failed; retrying")
                            }
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "golden-image pass failed; retrying"),
            }
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                _ = shutdown.changed() => {}
            }
        }
        // A check can run for minutes and a fetch for hours: shutdown stops them.
        self.cancel.store(true, Ordering::SeqCst);
        for (_, (_, task)) in lock(&self.inflight).drain() {
            task.abort();
        }
        for (_, task) in lock(&self.stream_inflight).drain() {
            task.abort();
        }
    }

    /// The work due now: images that need a fetch or check, are not backing off, and have
    /// no task running for their current generation.
    fn due(&self, images: Vec<GoldenImage>, leader: bool) -> Vec<(GoldenImage, Work)> {
        let mut out = Vec::new();
        for gi in images {
            // The image's bytes and every driver set it names.
            let cached = decide::served_digest(&gi).is_some_and(|d| self.store.has_image(d))
                && gi
                    .spec
                    .drivers
                    .iter()
                    .all(|d| self.store.has_image(&d.sha256));
            let work = decide::work(&gi, cached);
            let wanted = match work {
                Work::Verify => leader,
                Work::Recache => true,
                Work::None => false,
            };
            if !wanted || self.backing_off(&gi) {
                continue;
            }
            let running = lock(&self.inflight)
                .get(&key(&gi))
                .map(|(generation, task)| (*generation, task.is_finished()));
            match running {
                Some((generation, false)) if generation == gi.metadata.generation => continue,
                // A fetch of a spec that has since changed: its result would be thrown away.
                Some((_, false)) => {
                    if let Some((_, task)) = lock(&self.inflight).remove(&key(&gi)) {
                        task.abort();
                    }
                }
                _ => {}
            }
            out.push((gi, work));
        }
        out
    }

    /// Starts a task for each piece of due work and returns at once (whether this replica
    /// leads).
    async fn start_work(self: &Arc<Self>) -> Result<bool, BackendError> {
        let leader = self.backend.ensure_leader().is_ok();
        let images = self.backend.all_golden_images().await?;
        // Finished tasks (and deleted images') leave their entries behind: drop them.
        lock(&self.inflight).retain(|_, (_, task)| !task.is_finished());
        self.start_streams(&images);
        for (gi, work) in self.due(images, leader) {
            let this = self.clone();
            let k = key(&gi);
            let generation = gi.metadata.generation;
            let mut inflight = lock(&self.inflight);
            let task = tokio::spawn(async move {
                match this.work_on(&gi, work, leader).await {
                    Ok(true) => this.checked.store(true, Ordering::SeqCst),
                    Ok(false) => {}
                    Err(e) => tracing::warn!(error = %e, "golden-image work failed; retrying"),
                }
            });
            inflight.insert(k, (generation, task.abort_handle()));
        }
        Ok(leader)
    }

    /// One image's fetch or check. Returns whether a verdict was written.
    async fn work_on(
        &self,
        gi: &GoldenImage,
        work: Work,
        leader: bool,
    ) -> Result<bool, BackendError> {
        match work {
            Work::Verify if leader => Ok(self.verify_generation(gi).await?.is_some()),
            Work::Recache => self.recache(gi, leader).await.map(|()| false),
            _ => Ok(false),
        }
    }

    /// One pass that waits for its work (tests, and tools that want a settled answer): runs
    /// every due fetch and check concurrently, then (when `fleet`, or after a check) refreshes
    /// KnownGood, channels and readyEndpoints. Returns whether the fleet facts were refreshed.
    pub async fn pass(&self, fleet: bool) -> Result<bool, BackendError> {
        let leader = self.backend.ensure_leader().is_ok();
        let images = self.backend.all_golden_images().await?;
        let due = self.due(images, leader);
        let results =
            futures::future::join_all(due.iter().map(|(gi, work)| self.work_on(gi, *work, leader)))
                .await;
        let mut checked_any = false;
        for r in results {
            checked_any |= r?;
        }
        if leader && (fleet || checked_any) {
            let images = self.backend.all_golden_images().await?;
            self.refresh_fleet_facts(&images).await?;
            return Ok(true);
        }
        Ok(false)
    }

    fn backing_off(&self, gi: &GoldenImage) -> bool {
        let map = lock(&self.backoff);
        map.get(&key(gi))
            .is_some_and(|b| b.generation == gi.metadata.generation && Instant::now() < b.retry_at)
    }

    fn note_failure(&self, gi: &GoldenImage) -> Duration {
        let mut map = lock(&self.backoff);
        let fresh = || Backoff {
            failures: 0,
            retry_at: Instant::now(),
            generation: gi.metadata.generation,
        };
        let entry = map.entry(key(gi)).or_insert_with(fresh);
        if entry.generation != gi.metadata.generation {
            *entry = fresh();
        }
        entry.failures += 1;
        let wait = decide::retry_after(entry.failures);
        entry.retry_at = Instant::now() + wait;
        wait
    }

    /// Forgets every backoff (tests, and an operator who fixed a source and wants a retry now
    /// would restart the process, which does the same).
    pub fn forget_backoff(&self) {
        lock(&self.backoff).clear();
    }

    fn note_success(&self, gi: &GoldenImage) {
        lock(&self.backoff).remove(&key(gi));
    }

    /// Checks the current spec and writes the result. Returns the status written (None when
    /// the spec moved on meanwhile).
    async fn verify_generation(
        &self,
        gi: &GoldenImage,
    ) -> Result<Option<GoldenImageStatus>, BackendError> {
        let (ns, name) = key(gi);
        let source = gi
            .spec
            .source
            .url
            .clone()
            .or_else(|| gi.spec.source.path.clone())
            .unwrap_or_default();
        let starting = decide::checking(
            gi,
            "Checking",
            format!("fetching {source} and checking its bytes; nothing serves it until Verified"),
            self.clock.now(),
        );
        // Written once per generation: a retry after a failed fetch leaves the status alone
        // (every image status write makes the embedded controller look at every endpoint of
        // the namespace again).
        let withdrawn = gi.status.as_ref().is_some_and(|s| {
            s.digest.is_none()
                && s.channels.is_empty()
                && recast_core::image::verified_status(Some(s)) == Some(ConditionStatus::Unknown)
        });
        if !withdrawn && gi.status.as_ref() != Some(&starting) {
            match self.backend.write_image_status(gi, &starting).await {
                Err(BackendError::Conflict(_)) => return Ok(None),
                r => r?,
            }
        }
        tracing::info!(image = %format!("{ns}/{name}"), %source, "checking golden image");
        let checked = self.check(gi).await;
        let mut current = gi.clone();
        if !withdrawn {
            current.status = Some(starting);
        }
        let status = decide::checked(
            &current,
            checked.verdict.clone(),
            checked.facts,
            checked.digest,
            self.clock.now(),
        );
        match self.backend.write_image_status(gi, &status).await {
            Err(BackendError::Conflict(_)) => return Ok(None),
            r => r?,
        }
        let (cond, reason, message) = checked.verdict;
        let type_ = match cond {
            ConditionStatus::True => NoticeType::Normal,
            _ => NoticeType::Warning,
        };
        if cond == ConditionStatus::Unknown {
            let wait = self.note_failure(gi);
            tracing::warn!(image = %format!("{ns}/{name}"), %reason, %message, "golden image not checked; retrying in {}s", wait.as_secs());
        } else {
            self.note_success(gi);
            tracing::info!(image = %format!("{ns}/{name}"), verified = ?cond, %reason, %message, "golden image checked");
        }
        self.record(gi, type_, reason, message).await;
        // A Verified image's driver sets come in now; a failure is retried by the next pass
        // (the image's work is Recache while a set is missing), with a Warning.
        if cond == ConditionStatus::True
            && let Err(e) = self.fetch_driver_sets(gi).await
        {
            let wait = self.note_failure(gi);
            let message = format!("{e}; retrying in {}s", wait.as_secs());
            tracing::warn!(image = %format!("{ns}/{name}"), "{message}");
            self.record(gi, NoticeType::Warning, "DriverSetFailed", message)
                .await;
        }
        Ok(Some(status))
    }

    /// Fills this process's artifact store with an image verified earlier. The status keeps
    /// saying Verified (the bytes were proven); the boot service answers 503 for the image
    /// until the cache holds it.
    async fn recache(&self, gi: &GoldenImage, leader: bool) -> Result<(), BackendError> {
        let (ns, name) = key(gi);
        let wanted = decide::served_digest(gi).map(str::to_string);
        if !wanted.as_deref().is_some_and(|d| self.store.has_image(d)) {
            tracing::info!(image = %format!("{ns}/{name}"), "verified image missing from the artifact store; fetching it again");
            let checked = self.check(gi).await;
            if !(checked.verdict.0 == ConditionStatus::True && checked.digest == wanted) {
                return self
                    .cache_fill_failed(gi, leader, checked.verdict.1, &checked.verdict.2)
                    .await;
            }
        }
        match self.fetch_driver_sets(gi).await {
            Ok(()) => {
                self.note_success(gi);
                Ok(())
            }
            Err(e) => {
                self.cache_fill_failed(gi, leader, "DriverSetFailed", &e)
                    .await
            }
        }
    }

    /// Fetches each of the image's driver sets the artifact store lacks, checks its sha256 (and
    /// that it is a WIM) and installs it under `images/<sha256>.wim`, where the boot service
    /// serves it. The first failure stops the rest (retried with the image's backoff).
    async fn fetch_driver_sets(&self, gi: &GoldenImage) -> Result<(), String> {
        let (ns, name) = key(gi);
        for set in &gi.spec.drivers {
            if self.store.has_image(&set.sha256) {
                continue;
            }
            let what = format!("driver set {:?} {:?}", set.manufacturer, set.model);
            tracing::info!(image = %format!("{ns}/{name}"), "fetching {what}");
            let staging = self
                .store
                .staging(&set.sha256, &ns, &format!("{name}.drivers"));
            fetch::fetch(
                &self.http,
                &self.sources,
                &set.source,
                &staging,
                &mut |_| {},
            )
            .await
            .map_err(|e| format!("{what}: {e}"))?;
            let path = staging.clone();
            let digest = tokio::task::spawn_blocking(move || fetch::file_digest(&path))
                .await
                .map_err(|e| format!("{what}: the check stopped: {e}"))?
                .map_err(|e| format!("{what}: {e}"))?;
            if let Err(why) = decide::driver_set_problem(&digest, &set.sha256) {
                let _ = tokio::fs::remove_file(&staging).await;
                return Err(format!("{what}: {why}"));
            }
            self.store
                .install(&staging, &set.sha256)
                .await
                .map_err(|e| format!("{what}: {e}"))?;
            tracing::info!(image = %format!("{ns}/{name}"), sha256 = %set.sha256, "{what} checked and stored");
        }
        Ok(())
    }

    async fn cache_fill_failed(
        &self,
        gi: &GoldenImage,
        leader: bool,
        reason: &str,
        why: &str,
    ) -> Result<(), BackendError> {
        let (ns, name) = key(gi);
        let wait = self.note_failure(gi);
        let message = format!(
            "the artifact store lacks the verified bytes and refilling it failed ({reason}: {why}); retrying in {}s",
            wait.as_secs()
        );
        tracing::warn!(image = %format!("{ns}/{name}"), "{message}");
        if leader {
            self.record(gi, NoticeType::Warning, "CacheFillFailed", message)
                .await;
        }
        Ok(())
    }

    /// Brings the bytes in (unless the store already holds a file under this sha256), verifies
    /// them, and installs them when Verified.
    async fn check(&self, gi: &GoldenImage) -> Checked {
        let sha = gi.spec.sha256.clone();
        let (ns, name) = key(gi);
        let image_name = format!("{ns}/{name}");
        let (path, staged) = if self.store.has_image(&sha) {
            (self.store.image(&sha), false)
        } else {
            let staging = self.store.staging(&sha, &ns, &name);
            let mut last = Instant::now();
            let mut log = |p: FetchProgress| {
                if last.elapsed() >= PROGRESS_EVERY {
                    last = Instant::now();
                    tracing::info!(image = %image_name, done = p.done, total = ?p.total, "fetching golden image");
                }
            };
            if let Err(e) = fetch::fetch(
                &self.http,
                &self.sources,
                &gi.spec.source,
                &staging,
                &mut log,
            )
            .await
            {
                // A refusal is retried with backoff like a failed fetch (it costs nothing), so
                // an operator who adds the flag it names sees the image checked after a restart.
                let reason = match e {
                    FetchError::Refused(_) => "SourceRefused",
                    FetchError::TooLarge { .. } => "SourceTooLarge",
                    _ => "FetchFailed",
                };
                return Checked {
                    verdict: (ConditionStatus::Unknown, reason, e.to_string()),
                    facts: None,
                    digest: None,
                };
            }
            (staging, true)
        };
        let request = match recast_golden::spec::request(&gi.spec, path.clone()) {
            Ok(r) => r,
            Err(e) => {
                return Checked {
                    verdict: (ConditionStatus::False, "InvalidSpec", e.to_string()),
                    facts: None,
                    digest: None,
                };
            }
        };
        let cancel = self.cancel.clone();
        let name = image_name.clone();
        // A closed semaphore never happens (it is never closed); go on without a slot if so.
        let _slot = self.verify_slots.acquire().await.ok();
        let sandbox = self.deep_check.clone();
        let result = tokio::task::spawn_blocking(move || {
            let mut last = Instant::now();
            recast_golden::verify_image_with(
                &request,
                &cancel,
                &mut |p| {
                    if last.elapsed() >= PROGRESS_EVERY {
                        last = Instant::now();
                        tracing::info!(image = %name, progress = ?p, "checking golden image");
                    }
                },
                &mut |path, index, options, cancel, progress| {
                    sandbox.collect_evidence(path, index, options, cancel, progress)
                },
            )
        })
        .await;
        let result = match result {
            Ok(r) => r,
            Err(e) => {
                return Checked {
                    verdict: (
                        ConditionStatus::Unknown,
                        "CheckFailed",
                        format!("the check stopped: {e}"),
                    ),
                    facts: None,
                    digest: None,
                };
            }
        };
        let verdict = recast_golden::spec::verified_condition(&result);
        let (facts, digest) = match &result {
            Ok(report) => (
                Some(recast_golden::spec::facts(report)),
                Some(report.stream.sha256.clone()),
            ),
            Err(_) => (None, None),
        };
        if staged {
            match verdict.0 {
                ConditionStatus::True => {
                    if let Err(e) = self.store.install(&path, &sha).await {
                        return Checked {
                            verdict: (ConditionStatus::Unknown, "StoreFailed", e.to_string()),
                            facts,
                            digest: None,
                        };
                    }
                }
                // Definitely wrong bytes or an image that does not qualify: never keep them.
                ConditionStatus::False => {
                    let _ = tokio::fs::remove_file(&path).await;
                }
                // A fetch or I/O problem: keep the partial bytes for the next try to resume.
                ConditionStatus::Unknown => {}
            }
        }
        Checked {
            verdict: (verdict.0, verdict.1, verdict.2),
            facts,
            digest,
        }
    }

    /// Starts making the pipable form of each served image that lacks one (multicast
    /// sessions on): at most one task per digest, a failed one retried after STREAM_RETRY.
    fn start_streams(self: &Arc<Self>, images: &[GoldenImage]) {
        if !self.streams {
            return;
        }
        let mut inflight = lock(&self.stream_inflight);
        inflight.retain(|_, task| !task.is_finished());
        for gi in images {
            let Some(digest) = decide::served_digest(gi) else {
                continue;
            };
            // One pipable form per WIM and image index.
            let form = format!("{digest}-{}", gi.spec.image_index);
            if !self.store.has_image(digest)
                || stream::read(&self.store.root, digest, gi.spec.image_index).is_some()
                || inflight.contains_key(&form)
                || lock(&self.stream_failed)
                    .get(&form)
                    .is_some_and(|t| t.elapsed() < STREAM_RETRY)
            {
                continue;
            }
            let this = self.clone();
            let (gi, d) = (gi.clone(), digest.to_string());
            let task = tokio::spawn(async move { this.make_stream(&gi, &d).await });
            inflight.insert(form, task.abort_handle());
        }
    }

    /// The pipable form of a verified image, for multicast sessions. Not part of the verdict:
    /// an image whose pipable form cannot be made is still served, over HTTP to every machine,
    /// and an event says why.
    async fn make_stream(&self, gi: &GoldenImage, sha: &str) {
        let (ns, name) = key(gi);
        tracing::info!(image = %format!("{ns}/{name}"), "making the pipable form for multicast sessions");
        match stream::ensure(&self.store, sha, gi.spec.image_index).await {
            Ok(f) => {
                tracing::info!(image = %format!("{ns}/{name}"), stream_sha256 = %f.sha256, size = f.size, "pipable form ready for multicast sessions");
            }
            Err(e) => {
                lock(&self.stream_failed)
                    .insert(format!("{sha}-{}", gi.spec.image_index), Instant::now());
                tracing::warn!(image = %format!("{ns}/{name}"), "no multicast for this image: {e}");
                self.record(
                    gi,
                    NoticeType::Warning,
                    "StreamFailed",
                    format!(
                        "no multicast sessions for this image (machines download it over HTTP): {e}"
                    ),
                )
                .await;
            }
        }
    }

    async fn refresh_fleet_facts(&self, images: &[GoldenImage]) -> Result<(), BackendError> {
        // Only a served (Verified) image counts endpoints; with none, the fleet is not read.
        let endpoints: Vec<decide::EndpointOnImage> =
            if images.iter().any(|gi| decide::served_digest(gi).is_some()) {
                self.backend
                    .endpoints()
                    .await?
                    .iter()
                    .map(decide::endpoint_on_image)
                    .collect()
            } else {
                Vec::new()
            };
        let now = self.clock.now();
        for gi in images {
            if !decide::is_current(gi) {
                continue;
            }
            let status = decide::fleet_facts(gi, &endpoints, now);
            if gi.status.as_ref() == Some(&status) {
                continue;
            }
            match self.backend.write_image_status(gi, &status).await {
                Err(BackendError::Conflict(_)) => continue,
                r => r?,
            }
            for notice in decide::fleet_notices(gi.status.as_ref(), &status) {
                self.record(gi, notice.type_, &notice.reason, notice.message)
                    .await;
            }
        }
        Ok(())
    }

    async fn record(&self, gi: &GoldenImage, type_: NoticeType, reason: &str, message: String) {
        let notice = Notice {
            type_,
            reason: reason.to_string(),
            message,
        };
        if let Err(e) = self.backend.record_image(gi, &notice).await {
            tracing::debug!(error = %e, reason, "cannot record a golden-image event");
        }
    }
}

/// The child's side of the sandboxed deep check: `recast-operator deep-check --index N
/// [--part P]... [--full-verify] -- WIM` prints one JSON reply on stdout (see
/// recast_golden::sandbox). Exit status 0 when a reply was written, whatever it says.
pub fn deep_check_main(request: &recast_golden::sandbox::ChildRequest) -> std::process::ExitCode {
    let stdout = std::io::stdout();
    match recast_golden::sandbox::run_child(request, &mut stdout.lock()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("recast-operator deep-check: cannot write the reply: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
