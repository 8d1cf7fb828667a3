//! Time as the core sees it: a `jiff::Timestamp` passed in by the shell (the core never reads a
//! clock), stored in status as RFC 3339 strings.

use jiff::Timestamp;

/// RFC 3339 with second precision, UTC ("2026-01-14T08:00:00Z"), as Kubernetes writes times.
pub fn format(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Parses a stored time. A malformed stored value (hand-edited status) is treated as missing,
/// never as a panic.
pub fn parse(s: &str) -> Option<Timestamp> {
    s.parse().ok()
}

/// `t + d`, saturating at the far future instead of failing.
pub fn add(t: Timestamp, d: std::time::Duration) -> Timestamp {
    let span = jiff::SignedDuration::try_from(d).unwrap_or(jiff::SignedDuration::MAX);
    t.checked_add(span).unwrap_or(Timestamp::MAX)
}

/// Time from `earlier` to `later`, zero if `later` is before `earlier`.
pub fn since(later: Timestamp, earlier: Timestamp) -> std::time::Duration {
    let d = later.duration_since(earlier);
    std::time::Duration::try_from(d).unwrap_or_default()
}
