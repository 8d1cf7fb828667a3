//! What a restore from a backup does to each endpoint. Pure: the embedded store's restore
//! applies it to every Endpoint of the restored copy.
//!
//! The backup is a moment in the past. Since then a machine may have been reimaged (by an
//! automatic attempt, a wave or a person's request), its attempt may have booted the imaging
//! environment, written the disk, or finished; the restored store knows none of it. Acting on
//! the old record could image a machine a second time; starting a new attempt for an
//! in-flight one would lose its record. So:
//!
//! - every network boot is disarmed (by the store), and every endpoint gets `status.restoredAt`: nothing starts on its own (automatic reimage,
//!   wave, next try) until its agent reports again, which says what the machine runs now, or
//!   a person requests a reimage (the lifecycle clears it on either);
//! - an attempt in flight keeps its id and record, and its current try ends as of the restore:
//!   its next try waits for the same evidence, and an agent report carrying the attempt's id
//!   and the expected build ends it as succeeded instead;
//! - a manual reimage request that was pending in the backup is treated as handled (it may
//!   have run in the lost time): a person asks again if it is still wanted.

use jiff::Timestamp;
use recast_crds::endpoint::{EndpointPhase, EndpointStatus};

/// One endpoint's status after the restore, and what to tell a person.
#[derive(Clone, Debug, PartialEq)]
pub struct Fence {
    pub status: EndpointStatus,
    /// (reason, message) of each Warning Event to record.
    pub events: Vec<(&'static str, String)>,
    /// Whether an attempt was in flight (for the restore's summary).
    pub held_attempt: bool,
}

/// The fence of endpoint `name` with `status`, whose spec carries `pending_request` (the token
/// of `spec.reimageRequest`, when any), restored from a backup taken at `backup_taken_at`.
pub fn fence(
    name: &str,
    status: &EndpointStatus,
    pending_request: Option<&str>,
    backup_taken_at: Option<Timestamp>,
    now: Timestamp,
) -> Fence {
    let taken = backup_taken_at.map_or_else(
        || "at an unknown time".to_string(),
        |t| format!("at {}", crate::time::format(t)),
    );
    let mut st = status.clone();
    let mut events = Vec::new();
    st.restored_at = Some(crate::time::format(now));
    // The restore disarms every network boot in the store itself.
    st.boot_armed = false;
    // The signals are as old as the backup: the agent's next report derives them afresh.
    st.signals.clear();
    if let Some(token) = pending_request
        && st.handled_reimage_token.as_deref() != Some(token)
    {
        st.handled_reimage_token = Some(token.to_string());
        events.push((
            "RestoredRequestDropped",
            format!(
                "restored from a backup taken {taken}: the reimage request {token:?} was pending then and may have run since; request it again (`recastctl reimage {name} --reason ...`) if it is still wanted"
            ),
        ));
    }
    let held_attempt = if let Some(a) = st.active_attempt.as_mut() {
        let message = format!(
            "restored from a backup taken {taken}: attempt {} was at try {} ({:?}) then, and what the machine did since is unknown; the try is ended and the next one waits: the agent's next report ends the attempt as succeeded if the machine runs the new image, or lets the next try start; if the machine cannot report, look at it and `recastctl reimage {name} --reason ...`",
            a.id, a.try_number, a.step
        );
        // An attempt already waiting to retry keeps its wait.
        if a.retry_after.is_none() {
            a.retry_after = Some(crate::time::format(now));
        }
        a.last_error = Some(message.clone());
        a.boot_client = None;
        st.phase = Some(EndpointPhase::Failed);
        st.message = Some(message.clone());
        events.push(("RestoredFromBackup", message));
        true
    } else {
        false
    };
    Fence {
        status: st,
        events,
        held_attempt,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use recast_crds::endpoint::{Attempt, AttemptTrigger, ReimageStep};

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn running(step: ReimageStep, retry_after: Option<&str>) -> EndpointStatus {
        EndpointStatus {
            phase: Some(EndpointPhase::Reimaging),
            active_attempt: Some(Attempt {
                power_ways_tried: vec![],
                power_way: None,
                id: "a-1".into(),
                trigger: AttemptTrigger::FailedRollback,
                reason: "x".into(),
                image: "win11".into(),
                image_digest: None,
                wave: None,
                step,
                try_number: 2,
                started_at: "2026-12-05T10:00:00Z".into(),
                try_started_at: "2026-12-05T10:10:00Z".into(),
                step_started_at: "2026-12-05T10:12:00Z".into(),
                expected_build: Some("26100.7623".into()),
                progress_percent: Some(40),
                last_error: None,
                retry_after: retry_after.map(str::to_string),
                secure_boot: Some(true),
                boot_client: Some("10.0.0.9:68".into()),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn every_endpoint_waits_for_fresh_evidence() {
        let f = fence(
            "kiosk-01",
            &EndpointStatus {
                phase: Some(EndpointPhase::Degraded),
                ..Default::default()
            },
            None,
            None,
            t("2026-12-05T12:00:00Z"),
        );
        assert_eq!(
            f.status.restored_at.as_deref(),
            Some("2026-12-05T12:00:00Z")
        );
        assert_eq!(f.status.phase, Some(EndpointPhase::Degraded));
        assert!(f.events.is_empty() && !f.held_attempt);
    }

    #[test]
    fn a_pending_request_is_consumed_and_said() {
        let f = fence(
            "kiosk-01",
            &EndpointStatus::default(),
            Some("2026-12-05T11:30"),
            Some(t("2026-12-05T11:00:00Z")),
            t("2026-12-05T12:00:00Z"),
        );
        assert_eq!(
            f.status.handled_reimage_token.as_deref(),
            Some("2026-12-05T11:30")
        );
        assert_eq!(f.events.len(), 1);
        assert!(
            f.events[0].1.contains("recastctl reimage kiosk-01"),
            "{:?}",
            f.events
        );
        // A request already handled in the backup is not mentioned.
        let st = EndpointStatus {
            handled_reimage_token: Some("t1".into()),
            ..Default::default()
        };
        assert!(
            fence("k", &st, Some("t1"), None, t("2026-12-05T12:00:00Z"))
                .events
                .is_empty()
        );
    }

    #[test]
    fn a_running_try_is_ended_and_the_attempt_kept() {
        for step in [
            ReimageStep::ArmingBoot,
            ReimageStep::PowerCycling,
            ReimageStep::Booting,
            ReimageStep::Applying,
            ReimageStep::FirstBoot,
        ] {
            let f = fence(
                "kiosk-01",
                &running(step, None),
                None,
                Some(t("2026-12-05T11:00:00Z")),
                t("2026-12-05T12:00:00Z"),
            );
            let a = f.status.active_attempt.as_ref().unwrap();
            // The same attempt and try: nothing new starts here.
            assert_eq!((a.id.as_str(), a.try_number), ("a-1", 2));
            assert_eq!(a.retry_after.as_deref(), Some("2026-12-05T12:00:00Z"));
            assert_eq!(a.boot_client, None);
            assert!(f.held_attempt);
            assert_eq!(f.status.phase, Some(EndpointPhase::Failed));
            let (reason, message) = &f.events[0];
            assert_eq!(*reason, "RestoredFromBackup");
            assert!(
                message.contains("backup taken at 2026-12-05T11:00:00Z")
                    && message.contains("`recastctl reimage kiosk-01 --reason ...`"),
                "{message}"
            );
            assert_eq!(a.last_error.as_deref(), Some(message.as_str()));
        }
    }

    #[test]
    fn a_try_already_waiting_keeps_its_wait() {
        let f = fence(
            "kiosk-01",
            &running(ReimageStep::Booting, Some("2026-12-05T13:00:00Z")),
            None,
            None,
            t("2026-12-05T12:00:00Z"),
        );
        assert_eq!(
            f.status.active_attempt.unwrap().retry_after.as_deref(),
            Some("2026-12-05T13:00:00Z")
        );
        assert!(f.events[0].1.contains("at an unknown time"));
    }
}
