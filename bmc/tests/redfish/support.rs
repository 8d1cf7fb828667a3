//! Test plumbing shared by the Redfish suites; the emulator launcher lives in recast-tests.

use std::time::Duration;

use recast_bmc::{AuthMode, ClientConfig, TlsVerify};
pub use recast_tests::redfish::*;

pub trait SushyConfig {
    fn config(&self) -> ClientConfig;
}

impl SushyConfig for Sushy {
    fn config(&self) -> ClientConfig {
        fast_config(&self.url)
    }
}

/// Short timings so a failing test fails in seconds, not minutes.
pub fn fast_config(url: &str) -> ClientConfig {
    let mut cfg = ClientConfig::new(url);
    // Generous: CI shares two cores with builds, and the emulator is a Python dev server.
    cfg.request_timeout = Duration::from_secs(10);
    cfg.connect_timeout = Duration::from_secs(2);
    cfg.retries = 2;
    cfg.backoff = Duration::from_millis(50);
    cfg.poll_interval = Duration::from_millis(250);
    // sushy's fake driver applies a power change 1 to 11 seconds after the request.
    cfg.power_settle = Duration::from_secs(30);
    cfg.task_deadline = Duration::from_secs(10);
    cfg.auth = AuthMode::Auto;
    cfg.tls = TlsVerify::SystemRoots;
    cfg
}
