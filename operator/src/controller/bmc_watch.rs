//! BMC crash watch: for endpoints whose agent has gone silent (HeartbeatLost), read the BMC's
//! event log and, when it shows a boot crash after the last report, queue `Input::BmcCrash`.
//! Only silent endpoints with a BMC are read, so a fleet of healthy machines costs no BMC
//! traffic; the decision itself is `core::derive::bmc_boot_crash`.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::Controller;
use crate::bmc::PowerControl;
use crate::store::{Backend, BackendError, Key};
use recast_core::derive::{bmc_boot_crash, last_reimage_end, last_report_at};
use recast_core::lifecycle::Input;
use recast_core::signal::SignalKind;

/// How often silent endpoints' BMC logs are read.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(120);

impl<B: Backend, P: PowerControl> Controller<B, P> {
    /// One pass over the fleet; returns how many BootCrash findings were queued.
    pub async fn watch_bmcs_once(&self) -> Result<usize, BackendError> {
        let mut queued = 0;
        for ep in self.backend.endpoints().await? {
            let Some(st) = ep.status.as_ref() else {
                continue;
            };
            let has = |k: SignalKind| st.signals.iter().any(|s| s.type_ == k);
            if ep.spec.bmc.is_none()
                || ep.spec.protected
                || st.active_attempt.is_some()
                || !has(SignalKind::HeartbeatLost)
                || has(SignalKind::BootCrash)
            {
                continue;
            }
            let key = Key::of(&ep);
            let crashes = match self.power.os_crashes(&ep).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::info!(endpoint = %key, error = %e.message, "cannot read the BMC's event log; next pass retries");
                    continue;
                }
            };
            if let Some(message) =
                bmc_boot_crash(&crashes, true, last_report_at(st), last_reimage_end(st))
            {
                tracing::warn!(endpoint = %key, %message, "boot crash in the BMC's event log");
                self.backend
                    .post_input(&key, &Input::BmcCrash { message })
                    .await?;
                queued += 1;
            }
        }
        Ok(queued)
    }

    /// Runs passes every `interval` until `shutdown`.
    pub async fn watch_bmcs(
        self: Arc<Self>,
        interval: Duration,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
            if self.backend.ensure_leader().is_err() {
                continue;
            }
            if let Err(e) = self.watch_bmcs_once().await {
                tracing::warn!(error = %e, "BMC crash watch pass failed; next pass retries");
            }
        }
    }
}
