//! What a restore from a backup does to an attempt that was in flight when the backup was
//! taken. Pure: the embedded store's restore applies it to every Endpoint.
//!
//! The backup is a moment in the past. Since then the machine of a running attempt may have
//! booted the imaging environment, written its disk, or even finished and started the new
//! Windows; the restored store knows none of it. Continuing the try as restored could send a
//! finished machine through the imaging environment again (its boot would be armed again), and
//! starting a new attempt would lose the first one's record. So the attempt is kept, its
//! current try is treated as ended by the restore (its boot is disarmed with every other, and
//! nothing it reports counts any more), and the endpoint is paused: no next try starts until
//! a person has looked at the machine and unpauses it (`recastctl unpause NAME`), which
//! starts the next try with fresh boot credentials.

use jiff::Timestamp;
use recast_crds::endpoint::{EndpointPhase, EndpointStatus};

/// How a restored endpoint must be held.
#[derive(Clone, Debug, PartialEq)]
pub struct RestoreHold {
    /// The status with the attempt's try ended by the restore.
    pub status: EndpointStatus,
    /// For the Event and the person: which attempt, and what to do.
    pub message: String,
}

/// The hold for an endpoint restored from a backup taken at `backup_taken_at`, or None when no
/// attempt was in flight (nothing to hold).
pub fn hold_after_restore(
    name: &str,
    status: &EndpointStatus,
    backup_taken_at: Option<Timestamp>,
    now: Timestamp,
) -> Option<RestoreHold> {
    let mut st = status.clone();
    let a = st.active_attempt.as_mut()?;
    let taken = backup_taken_at.map_or_else(
        || "at an unknown time".to_string(),
        |t| format!("at {}", crate::time::format(t)),
    );
    let message = format!(
        "restored from a backup taken {taken}: attempt {} was at try {} ({:?}) then, and what the machine did since is unknown; the try is ended and the endpoint paused so nothing boots it again unseen. Look at the machine: if it already runs the new image, or once it is safe to image it again, `recastctl unpause {name}` starts try {} of the same attempt",
        a.id,
        a.try_number,
        a.step,
        a.try_number + 1
    );
    // An attempt already waiting to retry keeps its wait; either way the next try waits for
    // the pause to be lifted.
    if a.retry_after.is_none() {
        a.retry_after = Some(crate::time::format(now));
    }
    a.last_error = Some(message.clone());
    a.boot_client = None;
    st.phase = Some(EndpointPhase::Failed);
    st.message = Some(message.clone());
    Some(RestoreHold {
        status: st,
        message,
    })
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
    fn no_attempt_in_flight_needs_no_hold() {
        assert_eq!(
            hold_after_restore(
                "kiosk-01",
                &EndpointStatus::default(),
                None,
                t("2026-12-05T12:00:00Z")
            ),
            None
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
            let before = running(step, None);
            let hold = hold_after_restore(
                "kiosk-01",
                &before,
                Some(t("2026-12-05T11:00:00Z")),
                t("2026-12-05T12:00:00Z"),
            )
            .unwrap();
            let a = hold.status.active_attempt.as_ref().unwrap();
            // The same attempt and try: nothing new starts here.
            assert_eq!((a.id.as_str(), a.try_number), ("a-1", 2));
            assert_eq!(a.retry_after.as_deref(), Some("2026-12-05T12:00:00Z"));
            assert_eq!(a.boot_client, None);
            assert_eq!(hold.status.phase, Some(EndpointPhase::Failed));
            assert!(
                hold.message
                    .contains("backup taken at 2026-12-05T11:00:00Z")
                    && hold.message.contains("`recastctl unpause kiosk-01`")
                    && hold.message.contains("try 3 of the same attempt"),
                "{}",
                hold.message
            );
            assert_eq!(a.last_error.as_deref(), Some(hold.message.as_str()));
        }
    }

    #[test]
    fn a_try_already_waiting_keeps_its_wait() {
        let before = running(ReimageStep::Booting, Some("2026-12-05T13:00:00Z"));
        let hold =
            hold_after_restore("kiosk-01", &before, None, t("2026-12-05T12:00:00Z")).unwrap();
        assert_eq!(
            hold.status.active_attempt.unwrap().retry_after.as_deref(),
            Some("2026-12-05T13:00:00Z")
        );
        assert!(hold.message.contains("at an unknown time"));
    }
}
