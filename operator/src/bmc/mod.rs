//! Power control of endpoints through their BMC. `redfish::RedfishPower` is the real driver;
//! `RecordingPower` records what it would do, for tests of the lifecycle shells.

pub mod redfish;

use std::future::Future;
use std::sync::Mutex;

use recast_crds::Endpoint;

use recast_core::derive::BmcCrash;
use recast_core::lifecycle::ActionError;

pub trait PowerControl: Send + Sync + 'static {
    /// Sets a one-time network boot and power-cycles the machine. `maybe_done` is true when a
    /// previous run of this same (attempt, try) was interrupted, so the driver should check the
    /// machine's state before cycling it again. Returns what was done, for the audit trail.
    fn power_cycle(
        &self,
        ep: &Endpoint,
        attempt_id: &str,
        try_number: u32,
        maybe_done: bool,
    ) -> impl Future<Output = Result<String, ActionError>> + Send;

    /// The OS crashes the endpoint's BMC has recorded (its SEL/IML/Log1), for BootCrash
    /// evidence while the agent is silent. Drivers that cannot read logs find none.
    fn os_crashes(
        &self,
        _ep: &Endpoint,
    ) -> impl Future<Output = Result<Vec<BmcCrash>, ActionError>> + Send {
        async { Ok(Vec::new()) }
    }
}

/// Records the power cycles it is asked for instead of performing them, and answers
/// `os_crashes` from a script the tests set.
#[derive(Default)]
pub struct RecordingPower {
    log: Mutex<Vec<String>>,
    crashes: Mutex<std::collections::HashMap<String, Vec<BmcCrash>>>,
    crash_reads: Mutex<Vec<String>>,
}

impl RecordingPower {
    /// What the BMC of endpoint `name` will report as OS crashes.
    pub fn script_crashes(&self, name: &str, crashes: Vec<BmcCrash>) {
        self.crashes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), crashes);
    }

    /// The endpoints whose BMC logs were read, in order.
    pub fn crash_reads(&self) -> Vec<String> {
        self.crash_reads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Every (endpoint, attempt, try) it was asked to cycle, in order.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl PowerControl for RecordingPower {
    async fn power_cycle(
        &self,
        ep: &Endpoint,
        attempt_id: &str,
        try_number: u32,
        maybe_done: bool,
    ) -> Result<String, ActionError> {
        let name = ep.metadata.name.clone().unwrap_or_default();
        if maybe_done {
            // An earlier run may have cycled the machine and this recorder cannot look at it:
            // never cycle twice when unsure (a machine left alone is caught by the try timeout;
            // a second cycle could interrupt imaging).
            return Ok(format!(
                "not repeated for {name}: an interrupted run may already have cycled it"
            ));
        }
        self.log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(format!("{name} {attempt_id} {try_number}"));
        Ok(match &ep.spec.bmc {
            Some(bmc) => format!(
                "would set a one-time network boot and power-cycle via {} (no BMC driver in this build; restart the machine by hand)",
                bmc.address
            ),
            None => "no BMC configured".to_string(),
        })
    }

    async fn os_crashes(&self, ep: &Endpoint) -> Result<Vec<BmcCrash>, ActionError> {
        let name = ep.metadata.name.clone().unwrap_or_default();
        self.crash_reads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(name.clone());
        Ok(self
            .crashes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&name)
            .cloned()
            .unwrap_or_default())
    }
}
