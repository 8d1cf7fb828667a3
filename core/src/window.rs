//! Maintenance windows: is one open at a given instant, in its own time zone?

use jiff::civil::Weekday as CivilWeekday;
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};
use recast_crds::common::Weekday;
use recast_crds::{MaintenanceWindow, duration};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WindowError {
    #[error(
        "maintenance window time zone {0:?} is unknown; use an IANA name such as Europe/Berlin"
    )]
    TimeZone(String),
    #[error("maintenance window start {0:?} is not HH:MM")]
    Start(String),
    #[error("maintenance window: {0}")]
    Duration(#[from] duration::DurationError),
}

fn weekday(w: CivilWeekday) -> Weekday {
    match w {
        CivilWeekday::Monday => Weekday::Mon,
        CivilWeekday::Tuesday => Weekday::Tue,
        CivilWeekday::Wednesday => Weekday::Wed,
        CivilWeekday::Thursday => Weekday::Thu,
        CivilWeekday::Friday => Weekday::Fri,
        CivilWeekday::Saturday => Weekday::Sat,
        CivilWeekday::Sunday => Weekday::Sun,
    }
}

/// True when `now` falls inside an opening of `window`. An opening starts at `start` local time
/// on each listed day (every day when none are listed) and lasts `duration`, so a window from
/// 22:00 for 6h on Fridays is open until 04:00 on Saturday. Across a DST change the local start
/// time is resolved the way `jiff` resolves it (a gap moves forward, a fold takes the earlier).
pub fn is_open(window: &MaintenanceWindow, now: Timestamp) -> Result<bool, WindowError> {
    let tz_name = window.time_zone.as_deref().unwrap_or("UTC");
    let tz = TimeZone::get(tz_name).map_err(|_| WindowError::TimeZone(tz_name.to_string()))?;
    let (h, m) = window
        .start
        .split_once(':')
        .and_then(|(h, m)| Some((h.parse::<i8>().ok()?, m.parse::<i8>().ok()?)))
        .filter(|(h, m)| (0..24).contains(h) && (0..60).contains(m))
        .ok_or_else(|| WindowError::Start(window.start.clone()))?;
    let length = duration::parse(&window.duration)?;
    let length = jiff::SignedDuration::try_from(length).unwrap_or(jiff::SignedDuration::MAX);
    let local_today = now.to_zoned(tz.clone()).date();
    // Openings that started up to `length` ago can still be open.
    let days_back = length.as_secs() / 86_400 + 1;
    for back in 0..=days_back {
        let Ok(day) = local_today.checked_sub(back.days()) else {
            continue;
        };
        if !window.days.is_empty() && !window.days.contains(&weekday(day.weekday())) {
            continue;
        }
        let Ok(start) = day.at(h, m, 0, 0).to_zoned(tz.clone()) else {
            continue;
        };
        let start = start.timestamp();
        let Ok(end) = start.checked_add(length) else {
            continue;
        };
        if start <= now && now < end {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(start: &str, dur: &str, days: Vec<Weekday>, tz: Option<&str>) -> MaintenanceWindow {
        MaintenanceWindow {
            start: start.into(),
            duration: dur.into(),
            days,
            time_zone: tz.map(str::to_string),
        }
    }
    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn nightly_window_spans_midnight() {
        let win = w("22:00", "6h", vec![], None);
        assert!(is_open(&win, t("2026-01-14T23:30:00Z")).unwrap());
        assert!(is_open(&win, t("2026-01-15T03:59:59Z")).unwrap());
        assert!(!is_open(&win, t("2026-01-15T04:00:00Z")).unwrap());
        assert!(!is_open(&win, t("2026-01-15T21:59:59Z")).unwrap());
        assert!(is_open(&win, t("2026-01-15T22:00:00Z")).unwrap());
    }

    #[test]
    fn days_and_time_zones() {
        // Friday 22:00 in Berlin (UTC+1 in January) is 21:00 UTC.
        let win = w("22:00", "6h", vec![Weekday::Fri], Some("Europe/Berlin"));
        assert!(is_open(&win, t("2026-01-16T21:00:00Z")).unwrap()); // Fri 22:00 local
        assert!(!is_open(&win, t("2026-01-16T20:59:00Z")).unwrap());
        assert!(is_open(&win, t("2026-01-17T02:30:00Z")).unwrap()); // Sat 03:30 local, same opening
        assert!(!is_open(&win, t("2026-01-15T21:00:00Z")).unwrap()); // Thu
        // New York is UTC-5 in January.
        let ny = w("01:00", "2h", vec![], Some("America/New_York"));
        assert!(is_open(&ny, t("2026-01-14T06:30:00Z")).unwrap());
        assert!(!is_open(&ny, t("2026-01-14T01:30:00Z")).unwrap());
    }

    #[test]
    fn dst_gap_does_not_lose_the_opening() {
        // 02:30 does not exist in Berlin on 2026-03-29; the opening moves to 03:30 CEST.
        let win = w("02:30", "1h", vec![], Some("Europe/Berlin"));
        assert!(is_open(&win, t("2026-03-29T01:45:00Z")).unwrap()); // 03:45 CEST
    }

    #[test]
    fn bad_windows_are_errors_not_panics() {
        assert_eq!(
            is_open(
                &w("22:00", "1h", vec![], Some("Mars/Olympus")),
                t("2026-01-14T00:00:00Z")
            ),
            Err(WindowError::TimeZone("Mars/Olympus".into()))
        );
        assert!(is_open(&w("25:00", "1h", vec![], None), t("2026-01-14T00:00:00Z")).is_err());
        assert!(is_open(&w("22:00", "soon", vec![], None), t("2026-01-14T00:00:00Z")).is_err());
    }
}
