//! The wave controller: the shell around `core::wave::decide`, shared by both backends.
//!
//! A wave's plan and progress live in its status (batches, start and finish times), so after a
//! restart the next reconcile carries on with the same plan. The only in-memory state is which
//! endpoints are due (`Controller::wave_due`); it is rebuilt from the status by the first
//! reconcile of each wave, and until then no new wave attempt starts (running ones resume from
//! the endpoint's own status).
//!
//! Waves start nothing themselves: they mark endpoints as due, and the endpoint lifecycle starts
//! the attempt when its guards allow, the global and per-site concurrency limits included, so
//! waves and automatic remediation together never exceed them.

use std::collections::BTreeMap;
use std::time::Duration;

use recast_crds::Endpoint;
use recast_crds::endpoint::{EndpointStatus, ImageRef};
use recast_crds::wave::{BatchMulticast, MulticastPhase, WavePhase};

use super::Controller;
use crate::bmc::PowerControl;
use crate::store::{Backend, BackendError, Key};
use recast_core::image::resolve_image;
use recast_core::lifecycle::{NoticeType, WaveView};
use recast_core::wave::{self, Candidate, Member, WaveInput};

/// How often a wave with a live multicast session is looked at again (its figures in status).
const SESSION_REFRESH: Duration = Duration::from_secs(5);

/// The multicast sessions a boot service runs for waves' batches.
pub trait BatchSessions: Send + Sync + std::fmt::Debug {
    /// The sessions of `namespace/wave`'s batches, by batch index.
    fn batch_sessions(&self, namespace: &str, wave: &str) -> Vec<(u32, BatchMulticast)>;
}

/// What one wave reconcile asks of the caller.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WaveStep {
    /// Endpoints whose batch is due: reconcile them so their attempt can start.
    pub due: Vec<Key>,
    /// Look at the wave again after this long (None: only when something changes).
    pub requeue_after: Option<Duration>,
}

impl<B: Backend, P: PowerControl> Controller<B, P> {
    /// The wave an endpoint's decision sees: the wave of its running wave attempt (so the attempt
    /// keeps being served the wave's image), or a wave whose batch is due for it.
    pub(super) async fn wave_view_for(
        &self,
        key: &Key,
        status: &EndpointStatus,
    ) -> Result<Option<WaveView>, BackendError> {
        let running = status.active_attempt.as_ref().and_then(|a| a.wave.clone());
        let due = self
            .wave_due
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned();
        let Some(name) = running.clone().or(due) else {
            return Ok(None);
        };
        let Some(w) = self.backend.wave(&key.namespace, &name).await? else {
            return Ok(None);
        };
        if running.is_none() {
            // The due list may lag behind a pause or an abort: the wave as stored has the last
            // word before anything new starts.
            let phase = w.status.as_ref().and_then(|s| s.phase);
            if w.spec.paused || w.spec.aborted || phase != Some(WavePhase::Running) {
                return Ok(None);
            }
        }
        let images = self.backend.golden_images(&key.namespace).await?;
        let image = resolve_image(
            &ImageRef {
                golden_image: Some(w.spec.image.clone()),
                channel: None,
            },
            &images,
        );
        Ok(Some(WaveView { name, image }))
    }

    /// Replaces the due endpoints of wave `namespace/name`; returns their keys.
    fn set_wave_due(&self, namespace: &str, name: &str, due: &[String]) -> Vec<Key> {
        let mut map = self.wave_due.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|k, w| !(k.namespace == namespace && w == name));
        due.iter()
            .map(|ep| {
                let key = Key {
                    namespace: namespace.to_string(),
                    name: ep.clone(),
                };
                map.insert(key.clone(), name.to_string());
                key
            })
            .collect()
    }

    /// Reconciles one wave: plans it (once), moves it on, writes its status and events, and
    /// marks the endpoints whose batch is due.
    pub async fn reconcile_wave(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<WaveStep, BackendError> {
        let mut conflicts = 0;
        loop {
            let Some(w) = self.backend.wave(namespace, name).await? else {
                self.set_wave_due(namespace, name, &[]);
                return Ok(WaveStep::default());
            };
            let endpoints: Vec<Endpoint> = self
                .backend
                .endpoints()
                .await?
                .into_iter()
                .filter(|ep| recast_crds::namespace_of(&ep.metadata) == namespace)
                .collect();
            let mut candidates = Vec::with_capacity(endpoints.len());
            let mut members = BTreeMap::new();
            for ep in &endpoints {
                let ep_name = ep.metadata.name.clone().unwrap_or_default();
                let status = ep.status.clone().unwrap_or_default();
                members.insert(ep_name.clone(), Member::of(name, Some((&ep.spec, &status))));
                candidates.push(Candidate::new(
                    &ep_name,
                    ep.metadata.labels.clone().unwrap_or_default(),
                    &ep.spec,
                    Some(&status),
                ));
            }
            let status = w.status.clone().unwrap_or_default();
            let image_known_good = self
                .backend
                .golden_images(namespace)
                .await?
                .iter()
                .find(|gi| gi.metadata.name.as_deref() == Some(w.spec.image.as_str()))
                .is_some_and(recast_core::image::is_known_good);
            let now = self.clock.now();
            let d = wave::decide(
                WaveInput {
                    name,
                    spec: &w.spec,
                    status: &status,
                    image_known_good,
                },
                &candidates,
                &members,
                now,
            );
            let mut next = d.status.clone();
            next.observed_generation = w.metadata.generation;
            let mut session_live = false;
            if let Some(sessions) = &self.sessions {
                // A session this process does not know any more (it restarted) is over: its
                // sender was this process's child.
                for b in &mut next.batches {
                    if let Some(m) = b.multicast.as_mut()
                        && matches!(m.phase, MulticastPhase::Waiting | MulticastPhase::Sending)
                    {
                        m.phase = MulticastPhase::Ended;
                    }
                }
                for (index, m) in sessions.batch_sessions(namespace, name) {
                    session_live |=
                        matches!(m.phase, MulticastPhase::Waiting | MulticastPhase::Sending);
                    if let Some(b) = next.batches.get_mut(index as usize) {
                        b.multicast = Some(m);
                    }
                }
            }
            if next != status {
                match self.backend.write_wave_status(&w, &next).await {
                    Ok(()) => {}
                    Err(BackendError::Conflict(why)) if conflicts < 5 => {
                        // Someone changed the wave (pause, approve) since it was read.
                        conflicts += 1;
                        tracing::debug!(wave = %name, "wave status write conflicted ({why}); deciding again");
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            let wave_key = Key {
                namespace: namespace.to_string(),
                name: format!("wave/{name}"),
            };
            for n in &d.notices {
                self.backend.record_wave(&w, n, now).await?;
                if n.type_ == NoticeType::Warning {
                    self.notifier.notify(&wave_key, n);
                }
            }
            let due = self.set_wave_due(namespace, name, &d.due);
            // A live session's figures are shown as they move (a status write per wave
            // every few seconds while it runs, none after).
            let requeue_after = if session_live {
                Some(
                    d.requeue_after
                        .map_or(SESSION_REFRESH, |r| r.min(SESSION_REFRESH)),
                )
            } else {
                d.requeue_after
            };
            return Ok(WaveStep { due, requeue_after });
        }
    }

    /// Reconciles a wave, then the endpoints it made due (both backends' loops use this when
    /// they have nothing better to schedule with).
    pub async fn reconcile_wave_and_members(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Duration>, BackendError> {
        let step = self.reconcile_wave(namespace, name).await?;
        for key in &step.due {
            if let Err(e) = self
                .reconcile(key, recast_core::lifecycle::Input::Reconcile)
                .await
            {
                tracing::warn!(endpoint = %key, wave = %name, error = %e, "reconcile of a due wave member failed; the next pass retries");
            }
        }
        Ok(step.requeue_after)
    }
}
