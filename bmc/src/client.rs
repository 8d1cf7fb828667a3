//! The operations recast performs on a BMC, over one ComputerSystem.

use std::sync::Arc;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde_json::Value;

use crate::config::ClientConfig;
use crate::error::{RedfishError, Result};
use crate::events::{self, LogEntry};
use crate::model::{
    self, BootMode, NetworkBoot, OverrideCheck, PowerAction, PowerState, SystemInfo,
};
use crate::transport::{Repeat, Transport};

/// Entries read per log service at most; a SEL holds a few hundred to a few thousand.
const MAX_LOG_ENTRIES: usize = 5000;
const MAX_LOG_PAGES: usize = 50;
/// Entry references fetched one by one when a BMC does not expand its collection.
const MAX_UNEXPANDED_FETCHES: usize = 200;
/// Reads of the system after arming the boot, for BMCs that apply settings a moment later.
const OVERRIDE_READBACKS: u32 = 5;

/// A connected BMC, bound to one ComputerSystem. Dropping it deletes its session (in the
/// background); call `logout` to do that before going on.
pub struct Bmc {
    transport: Arc<Transport>,
    system_path: String,
}

/// What a power operation did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PowerOutcome {
    pub before: Option<String>,
    pub reset_type: String,
    pub after: String,
}

/// What arming a network boot found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArmOutcome {
    pub check: OverrideCheck,
    /// True when the first PATCH met a stale ETag and was repeated with a fresh one.
    pub retried_on_stale_etag: bool,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct EventLog {
    /// The log services read (their paths).
    pub services: Vec<String>,
    pub entries: Vec<LogEntry>,
    /// Entries that could not be read (not an object, no Id).
    pub skipped: usize,
    /// True when the entry cap stopped the reading.
    pub truncated: bool,
}

impl Bmc {
    /// Reads the service root, logs in, and finds the system (`system_id`: an Id or path,
    /// needed only when the BMC exposes more than one).
    pub async fn connect(cfg: ClientConfig, system_id: Option<&str>) -> Result<Bmc> {
        let transport = Arc::new(Transport::new(cfg)?);
        let root_url = transport.resolve("/redfish/v1/")?;
        let root = transport
            .request(
                Method::GET,
                root_url.clone(),
                None,
                None,
                Repeat::Idempotent,
            )
            .await?
            .json()?;
        let sessions = root
            .pointer("/Links/Sessions/@odata.id")
            .and_then(Value::as_str)
            .map(str::to_string);
        transport.login(sessions.as_deref()).await?;
        match find_system(&transport, &root, system_id).await {
            Ok(system_path) => Ok(Bmc {
                transport,
                system_path,
            }),
            Err(e) => {
                let _ = transport.logout().await;
                Err(e)
            }
        }
    }

    pub fn system_path(&self) -> &str {
        &self.system_path
    }

    async fn get(&self, path: &str) -> Result<(Value, String)> {
        get_json(&self.transport, path).await
    }

    pub async fn system(&self) -> Result<SystemInfo> {
        let url = self.transport.resolve(&self.system_path)?;
        let reply = self
            .transport
            .request(Method::GET, url.clone(), None, None, Repeat::Idempotent)
            .await?;
        let etag = reply.etag();
        model::parse_system(url.as_str(), &reply.json()?, etag)
    }

    pub async fn power_state(&self) -> Result<Option<PowerState>> {
        Ok(self.system().await?.power_state)
    }

    /// The ResetType values the BMC allows: from the action's annotation, or its ActionInfo.
    async fn allowed_resets(&self, sys: &SystemInfo) -> Result<Option<Vec<String>>> {
        if sys.reset_allowed.is_some() {
            return Ok(sys.reset_allowed.clone());
        }
        match &sys.reset_action_info {
            Some(info) => {
                let (v, url) = self.get(info).await?;
                model::action_info_reset_types(&url, &v)
            }
            None => Ok(None),
        }
    }

    /// Sends the reset that performs `action` and returns the ResetType used, without waiting
    /// for the machine to reach the new state.
    pub async fn reset(&self, action: PowerAction) -> Result<(Option<PowerState>, &'static str)> {
        let sys = self.system().await?;
        let target = sys
            .reset_target
            .clone()
            .ok_or_else(|| RedfishError::Unsupported {
                what: "ComputerSystem.Reset (the system lists no such action)".into(),
            })?;
        let allowed = self.allowed_resets(&sys).await?;
        let reset_type = model::choose_reset(action, sys.power_state.as_ref(), allowed.as_deref())?;
        let url = self.transport.resolve(&target)?;
        let body = serde_json::json!({ "ResetType": reset_type });
        let reply = self
            .transport
            .request(
                Method::POST,
                url,
                Some(&body),
                None,
                Repeat::OnlyIfNotProcessed,
            )
            .await?;
        if reply.status == StatusCode::ACCEPTED {
            self.transport.wait_task(&reply).await?;
        }
        Ok((sys.power_state, reset_type))
    }

    /// Polls PowerState until it is `expected`, within the configured settle time. Power
    /// changes take seconds on real machines.
    pub async fn wait_power(&self, expected: &PowerState) -> Result<PowerState> {
        let cfg = self.transport.config();
        let deadline = tokio::time::Instant::now() + cfg.power_settle;
        loop {
            let state = self.power_state().await?;
            if state.as_ref() == Some(expected) {
                return Ok(expected.clone());
            }
            if tokio::time::Instant::now() + cfg.poll_interval > deadline {
                return Err(RedfishError::NotApplied {
                    what: format!("the power change to {expected}"),
                    detail: format!(
                        "PowerState is still {} after {:?}",
                        state
                            .map(|s| s.to_string())
                            .unwrap_or_else(|| "absent".into()),
                        cfg.power_settle
                    ),
                });
            }
            tokio::time::sleep(cfg.poll_interval).await;
        }
    }

    /// Performs `action` and waits until the machine is in the state it leads to.
    pub async fn power(&self, action: PowerAction) -> Result<PowerOutcome> {
        let (before, reset_type) = self.reset(action).await?;
        let after = self.wait_power(&action.expected_state()).await?;
        Ok(PowerOutcome {
            before: before.map(|s| s.to_string()),
            reset_type: reset_type.to_string(),
            after: after.to_string(),
        })
    }

    async fn patch_system(&self, body: &Value, etag: Option<&str>) -> Result<()> {
        let url = self.transport.resolve(&self.system_path)?;
        let reply = self
            .transport
            .request(Method::PATCH, url, Some(body), etag, Repeat::Idempotent)
            .await?;
        if reply.status == StatusCode::ACCEPTED {
            self.transport.wait_task(&reply).await?;
        }
        Ok(())
    }

    /// Arms a one-time network boot and reads it back. The PATCH carries If-Match with the
    /// system's ETag when the BMC gives one; a 412/428 (someone changed the system meanwhile,
    /// or the BMC insists on If-Match) is met by one re-read and one retry.
    pub async fn arm_network_boot(
        &self,
        target: NetworkBoot,
        mode: Option<BootMode>,
    ) -> Result<ArmOutcome> {
        let sys = self.system().await?;
        let current = sys.boot.clone().ok_or_else(|| RedfishError::Unsupported {
            what: "boot source overrides (the system has no Boot section)".into(),
        })?;
        let body = model::override_patch(target, mode, &current)?;
        let mut retried = false;
        match self.patch_system(&body, sys.etag.as_deref()).await {
            Ok(()) => {}
            Err(RedfishError::PreconditionFailed { .. }) => {
                retried = true;
                let fresh = self.system().await?;
                self.patch_system(&body, fresh.etag.as_deref()).await?;
            }
            Err(e) => return Err(e),
        }
        let poll = self.transport.config().poll_interval;
        let mut detail = String::new();
        for n in 0..OVERRIDE_READBACKS {
            if n > 0 {
                tokio::time::sleep(poll).await;
            }
            let sys = self.system().await?;
            match model::check_override(target, mode, sys.boot.as_ref()) {
                OverrideCheck::NotArmed(why) => detail = why,
                check => {
                    return Ok(ArmOutcome {
                        check,
                        retried_on_stale_etag: retried,
                    });
                }
            }
        }
        Err(RedfishError::NotApplied {
            what: format!("the one-time {} boot", target.as_redfish()),
            detail,
        })
    }

    /// The current boot override check for `target`, without changing anything.
    pub async fn override_state(
        &self,
        target: NetworkBoot,
        mode: Option<BootMode>,
    ) -> Result<OverrideCheck> {
        let sys = self.system().await?;
        Ok(model::check_override(target, mode, sys.boot.as_ref()))
    }

    /// Reads the OS-relevant log services of the system and of the managers that manage it.
    /// A BMC without any is `Unsupported`.
    pub async fn event_log(&self) -> Result<EventLog> {
        let sys = self.system().await?;
        let mut collections = Vec::new();
        if let Some(ls) = &sys.log_services {
            collections.push(ls.clone());
        }
        for manager in &sys.managers {
            match self.get(manager).await {
                Ok((m, _)) => {
                    if let Some(ls) = m.pointer("/LogServices/@odata.id").and_then(Value::as_str) {
                        collections.push(ls.to_string());
                    }
                }
                // A manager we may not read is not a reason to give up on the system's logs.
                Err(e) if !matches!(e, RedfishError::Unauthorized { .. }) => {
                    tracing::debug!(manager, error = %e, "skipping manager log services");
                }
                Err(e) => return Err(e),
            }
        }
        let mut services = Vec::new();
        for collection in &collections {
            let (v, url) = self.get(collection).await?;
            for member in model::collection_members(&url, &v)? {
                let id = member
                    .trim_end_matches('/')
                    .rsplit('/')
                    .next()
                    .unwrap_or("");
                if events::is_os_event_log(id) && !services.contains(&member) {
                    services.push(member);
                }
            }
        }
        if services.is_empty() {
            return Err(RedfishError::Unsupported {
                what: "a system event log (no Sel, SEL, IML, Log1 or EventLog service on the system or its managers)".into(),
            });
        }
        let mut log = EventLog::default();
        for service in &services {
            self.read_service(service, &mut log).await?;
            log.services.push(service.clone());
            if log.truncated {
                break;
            }
        }
        Ok(log)
    }

    async fn read_service(&self, service: &str, log: &mut EventLog) -> Result<()> {
        let (svc, url) = self.get(service).await?;
        let service_id = svc
            .get("Id")
            .and_then(Value::as_str)
            .unwrap_or_else(|| {
                service
                    .trim_end_matches('/')
                    .rsplit('/')
                    .next()
                    .unwrap_or("")
            })
            .to_string();
        let entries_path = svc
            .pointer("/Entries/@odata.id")
            .and_then(Value::as_str)
            .ok_or_else(|| RedfishError::MissingProperty {
                url: url.clone(),
                property: "Entries.@odata.id".into(),
            })?
            .to_string();
        let mut next = Some(entries_path);
        let mut pages = 0;
        let mut fetched = 0;
        while let Some(page) = next.take() {
            pages += 1;
            if pages > MAX_LOG_PAGES {
                log.truncated = true;
                break;
            }
            let (v, url) = self.get(&page).await?;
            let members = v.get("Members").and_then(Value::as_array).ok_or_else(|| {
                RedfishError::MissingProperty {
                    url: url.clone(),
                    property: "Members (a list)".into(),
                }
            })?;
            for m in members {
                if log.entries.len() >= MAX_LOG_ENTRIES {
                    log.truncated = true;
                    return Ok(());
                }
                // Collections normally carry whole entries; some BMCs list only links.
                let is_link_only = m
                    .as_object()
                    .is_some_and(|o| o.len() == 1 && o.contains_key("@odata.id"));
                let entry = if is_link_only {
                    if fetched >= MAX_UNEXPANDED_FETCHES {
                        log.truncated = true;
                        return Ok(());
                    }
                    fetched += 1;
                    let link = m.get("@odata.id").and_then(Value::as_str).unwrap_or("");
                    let (full, _) = self.get(link).await?;
                    events::parse_entry(&service_id, &full)
                } else {
                    events::parse_entry(&service_id, m)
                };
                match entry {
                    Some(e) => log.entries.push(e),
                    None => log.skipped += 1,
                }
            }
            next = v
                .get("Members@odata.nextLink")
                .and_then(Value::as_str)
                .map(str::to_string);
        }
        Ok(())
    }

    /// Deletes the session (if one was opened). Idempotent.
    pub async fn logout(&self) -> Result<()> {
        self.transport.logout().await
    }

    /// How long one power change may take to show.
    pub fn power_settle(&self) -> Duration {
        self.transport.config().power_settle
    }
}

async fn get_json(transport: &Transport, path: &str) -> Result<(Value, String)> {
    let url = transport.resolve(path)?;
    let reply = transport
        .request(Method::GET, url.clone(), None, None, Repeat::Idempotent)
        .await?;
    Ok((reply.json()?, url.to_string()))
}

async fn find_system(
    transport: &Transport,
    root: &Value,
    system_id: Option<&str>,
) -> Result<String> {
    let systems = root
        .pointer("/Systems/@odata.id")
        .and_then(Value::as_str)
        .ok_or_else(|| RedfishError::Unsupported {
            what: "ComputerSystems (the service root has no Systems link)".into(),
        })?;
    let (collection, url) = get_json(transport, systems).await?;
    let members = model::collection_members(&url, &collection)?;
    model::choose_system(&members, system_id)
}

impl Drop for Bmc {
    fn drop(&mut self) {
        if let Some((http, url, token)) = self.transport.take_session()
            && let Ok(handle) = tokio::runtime::Handle::try_current()
        {
            handle.spawn(async move {
                let _ = http.delete(url).header("X-Auth-Token", token).send().await;
            });
        }
    }
}
