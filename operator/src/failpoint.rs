//! Fault injection for the crash tests: with RECAST_FAILPOINT=NAME, the process announces
//! "FAILPOINT NAME" on stderr when it reaches that point and then hangs, so a test can SIGKILL
//! it exactly there. Unset (always, outside tests), a failpoint costs one environment lookup.

use std::sync::OnceLock;

fn configured() -> Option<&'static str> {
    static NAME: OnceLock<Option<String>> = OnceLock::new();
    NAME.get_or_init(|| std::env::var("RECAST_FAILPOINT").ok())
        .as_deref()
}

/// Hangs forever if `name` is the configured failpoint.
pub async fn hit(name: &str) {
    if configured() == Some(name) {
        eprintln!("FAILPOINT {name}");
        std::future::pending::<()>().await;
    }
}

/// Panics if `name` is the configured failpoint: for tests that prove a task's death is seen
/// (readiness fails) rather than silent.
pub fn crash(name: &str) {
    if configured() == Some(name) {
        eprintln!("FAILPOINT {name}");
        panic!("failpoint {name}");
    }
}
