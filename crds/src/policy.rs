//! RemediationPolicy: what each signal does, and the limits that keep automatic remediation from
//! wiping half a fleet.

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::MaintenanceWindow;

/// The name endpoints use when `spec.policyRef` is unset.
pub const DEFAULT_POLICY_NAME: &str = "default";

/// Decides, per signal, whether recast reimages now, in the maintenance window, only alerts, or
/// ignores it; and bounds retries, concurrency, the failure budget and the circuit breaker of
/// its namespace (each namespace's are its own; the operator's flags bound the whole fleet).
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "recast.dev",
    version = "v1alpha1",
    kind = "RemediationPolicy",
    plural = "remediationpolicies",
    singular = "remediationpolicy",
    shortname = "rpol",
    category = "recast",
    namespaced,
    status = "RemediationPolicyStatus",
    derive = "PartialEq",
    printcolumn(name = "Update-Mode", type_ = "string", json_path = ".spec.updateMode"),
    printcolumn(
        name = "Failed-Rollback",
        type_ = "string",
        json_path = ".spec.signals.failedRollback"
    ),
    printcolumn(
        name = "Boot-Crash",
        type_ = "string",
        json_path = ".spec.signals.bootCrash"
    ),
    printcolumn(name = "Budget", type_ = "string", json_path = ".status.budget"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.maintenanceWindow) || !has(self.signals) || ![self.signals.failedRollback, self.signals.bootCrash, self.signals.bootLoop, self.signals.heartbeatLost, self.signals.drift, self.signals.nonCompliant].exists(a, a == 'ReimageInWindow')").message("spec.maintenanceWindow is required when a signal's action is ReimageInWindow"))]
#[x_kube(validation = Rule::new("has(self.maintenanceWindow) || !has(self.holdNotEnforced) || self.holdNotEnforced != 'ReimageInWindow'").message("spec.maintenanceWindow is required when holdNotEnforced is ReimageInWindow"))]
pub struct RemediationPolicySpec {
    #[serde(default)]
    pub signals: SignalActions,
    /// Minimum time between two reimages of one endpoint, such as "6h".
    #[serde(default = "default_cooldown")]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+(d|h|m|s))+$')").message("spec.cooldown must be a duration such as 30m, 6h or 1d"))]
    #[schemars(length(max = 32))]
    pub cooldown: String,
    #[serde(default)]
    pub retry: RetryPolicy,
    #[serde(default)]
    pub concurrency: ConcurrencyLimits,
    #[serde(default)]
    pub failure_budget: FailureBudget,
    /// The circuit breaker on automatic reimages in this namespace: when too many start within
    /// a window, no automatic reimage starts until a person resets it (`recastctl breaker`).
    #[serde(default)]
    pub breaker: BreakerSpec,
    /// Window for "ReimageInWindow" actions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance_window: Option<MaintenanceWindow>,
    /// How long without an agent report before HeartbeatLost, such as "15m".
    #[serde(default = "default_heartbeat_timeout")]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+(d|h|m|s))+$')").message("spec.heartbeatTimeout must be a duration such as 15m"))]
    #[schemars(length(max = 32))]
    pub heartbeat_timeout: String,
    /// `managed`: Windows Update runs and recast remediates what breaks. `immutable`: quality
    /// updates stay held; patches arrive only as waves onto a newer golden image.
    #[serde(default)]
    pub update_mode: UpdateMode,
    /// Hold quality updates on an endpoint from the moment a FailedRollback is seen until the
    /// reimage replaces it: the next update on that improper state is what bricked machines.
    #[serde(default = "default_true")]
    pub guard_on_failed_rollback: bool,
    /// What recast does when the agent finds that Windows will not honour the update hold on
    /// a machine (Windows Home, WSUS or ConfigMgr in charge of its updates, an MDM update ring
    /// that contradicts it, or Windows Update's effective policy showing no pause):
    /// `AlertOnly` (the default) records an UpdateHoldNotEnforced event; `ReimageNow` or
    /// `ReimageInWindow` also treat a machine the FailedRollback guard protects as unable to
    /// hold and replace it before the next cumulative update lands on its improper state;
    /// `Ignore` records nothing. A hold for any other reason (immutable mode, a manual hold)
    /// only alerts: a reimage would not make Windows honour it.
    #[serde(default = "alert_only")]
    pub hold_not_enforced: RemediationAction,
    /// When network boots with nothing armed count as a boot loop (signal BootLoop): for
    /// machines whose firmware boots the network first, a machine whose Windows crashes at
    /// boot and restarts reaches recast's boot service on every turn.
    #[serde(default)]
    pub boot_loop: BootLoopRule,
    /// What a machine reimaged under this policy is told on its first start (unattend.xml):
    /// time zone, locale, accounts, workgroup or domain, first-logon commands. Unset: a
    /// workgroup machine with the boot service's locale and time zone and no account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provisioning: Option<ProvisioningProfile>,
}

/// The first start of a reimaged Windows: everything its unattend.xml says besides the computer
/// name (the Endpoint's). Windows Setup finishes OOBE without a person whatever is set here;
/// passwords and join credentials stay in Secrets of the policy's namespace and reach the
/// imaging environment only over HTTPS (docs/first-boot.md).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.firstLogonCommands) || size(self.firstLogonCommands) == 0 || has(self.localAccount) || has(self.administratorPasswordSecretRef) || (has(self.join) && (has(self.join.domain) || has(self.join.offlineDomainJoin)))").message("spec.provisioning.firstLogonCommands run at someone's first logon: give the profile a localAccount, an administratorPasswordSecretRef or a domain join"))]
pub struct ProvisioningProfile {
    /// A Windows time zone ID such as "W. Europe Standard Time" (`tzutil /l` lists them).
    /// Unset: the boot service's `--time-zone`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z][A-Za-z0-9 ().+-]{0,63}$')").message("spec.provisioning.timeZone must be a Windows time zone ID such as 'W. Europe Standard Time'"))]
    #[schemars(length(max = 64))]
    pub time_zone: Option<String>,
    /// A language tag such as de-DE: display language, input, system and user locale.
    /// Unset: the boot service's `--locale`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^[a-z]{2,3}(-[A-Za-z0-9]{2,8}){0,2}$')").message("spec.provisioning.locale must be a language tag such as de-DE"))]
    #[schemars(length(max = 32))]
    pub locale: Option<String>,
    /// A local account created during OOBE. Unset: none (domain users log on, or nobody).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_account: Option<LocalAccount>,
    /// The built-in Administrator's password (the Secret's key). Unset: that account stays
    /// disabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub administrator_password_secret_ref: Option<SecretKeyRef>,
    /// Where the machine belongs. Unset: the workgroup WORKGROUP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join: Option<Join>,
    /// Commands Windows runs, in order, at the first logon after the reimage.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(validation = Rule::new("size(self) <= 32").message("spec.provisioning.firstLogonCommands holds at most 32 commands"))]
    #[schemars(length(max = 64))]
    pub first_logon_commands: Vec<FirstLogonCommand>,
}

impl ProvisioningProfile {
    /// The Secrets of the policy's namespace this profile reads for the machine called
    /// `computer_name`, by name, each with the keys it needs (sorted, once each): nothing else
    /// of those Secrets is ever handed on (an offline join's Secret holds every machine's blob,
    /// and a machine gets its own).
    pub fn secret_keys(
        &self,
        computer_name: &str,
    ) -> std::collections::BTreeMap<String, Vec<String>> {
        let mut out: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        let mut add = |name: &str, key: &str| {
            out.entry(name.to_string())
                .or_default()
                .push(key.to_string())
        };
        if let Some(a) = &self.local_account {
            add(&a.password_secret_ref.name, &a.password_secret_ref.key);
        }
        if let Some(r) = &self.administrator_password_secret_ref {
            add(&r.name, &r.key);
        }
        if let Some(j) = &self.join {
            if let Some(d) = &j.domain {
                for key in DOMAIN_CREDENTIAL_KEYS {
                    add(&d.credentials_secret_ref.name, key);
                }
            }
            if let Some(o) = &j.offline_domain_join {
                add(&o.blobs_secret_ref.name, computer_name);
            }
        }
        for keys in out.values_mut() {
            keys.sort();
            keys.dedup();
        }
        out
    }
}

/// The keys of a domain join's credentials Secret (those of a kubernetes.io/basic-auth Secret).
pub const DOMAIN_CREDENTIAL_KEYS: [&str; 2] = ["username", "password"];

/// A key of a Secret (kube backend) or stored Secret (embedded backend) in the policy's
/// namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$') && size(self) <= 253").message("secret names must be DNS subdomains: lowercase letters, digits, '-' and '.'"))]
    #[schemars(length(max = 253))]
    pub name: String,
    #[x_kube(validation = Rule::new("self.matches('^[-._A-Za-z0-9]{1,253}$')").message("a Secret key is letters, digits, '-', '_' and '.'"))]
    #[schemars(length(max = 253))]
    pub key: String,
}

/// A local account Windows Setup creates.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocalAccount {
    /// 1 to 20 letters, digits, '.', '_' and '-'.
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z0-9._-]{1,20}$') && !self.matches('^[.]+$')").message("spec.provisioning.localAccount.name must be 1 to 20 letters, digits, '.', '_' and '-'"))]
    #[x_kube(validation = Rule::new("!(self.lowerAscii() in ['administrator', 'guest', 'defaultaccount', 'wdagutilityaccount'])").message("spec.provisioning.localAccount.name is one of Windows' built-in accounts; use administratorPasswordSecretRef for the Administrator, or another name"))]
    #[schemars(length(max = 20))]
    pub name: String,
    /// Member of Administrators (true, the default) or of Users.
    #[serde(default = "default_true")]
    pub administrator: bool,
    pub password_secret_ref: SecretKeyRef,
}

/// Exactly one of: a workgroup, a domain joined with credentials during setup, or an offline
/// domain join blob made in advance (`djoin /provision`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.workgroup), has(self.domain), has(self.offlineDomainJoin)].filter(x, x).size() == 1").message("spec.provisioning.join takes exactly one of workgroup, domain and offlineDomainJoin"))]
pub struct Join {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z0-9][-A-Za-z0-9]{0,14}$')").message("spec.provisioning.join.workgroup must be 1 to 15 letters, digits and '-'"))]
    #[schemars(length(max = 15))]
    pub workgroup: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<DomainJoin>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offline_domain_join: Option<OfflineDomainJoin>,
}

/// Joined during Windows Setup's specialize pass with an account allowed to join machines.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct DomainJoin {
    /// The domain's DNS name, such as corp.example.com.
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z0-9]([-A-Za-z0-9]{0,62})(\\\\.[A-Za-z0-9]([-A-Za-z0-9]{0,62}))*$')").message("spec.provisioning.join.domain.name must be a DNS domain name such as corp.example.com"))]
    #[schemars(length(max = 253))]
    pub name: String,
    /// Where the computer account is created, such as OU=Kiosks,DC=corp,DC=example,DC=com.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^(OU|CN)=[^\\x00-\\x1f]+$')").message("spec.provisioning.join.domain.organizationalUnit must be a distinguished name such as OU=Kiosks,DC=corp,DC=example,DC=com"))]
    #[schemars(length(max = 1024))]
    pub organizational_unit: Option<String>,
    /// A Secret with `username` and `password` (type kubernetes.io/basic-auth); the username
    /// may be `user`, `DOMAIN\user` or `user@domain`.
    pub credentials_secret_ref: crate::common::SecretRef,
}

/// An offline domain join: each machine's account was created in advance (`djoin /provision
/// /domain D /machine NAME /savefile F`, or `/printblob`); Windows joins in its specialize pass
/// without reaching a domain controller.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct OfflineDomainJoin {
    /// A Secret with one key per machine: its computer name (as `spec.hostname`, or the
    /// Endpoint's name upper case, cut to 15), the blob djoin saved for that machine. A machine
    /// without a key is not imaged (a blob is one machine's account).
    pub blobs_secret_ref: crate::common::SecretRef,
}

/// One first-logon command.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct FirstLogonCommand {
    #[x_kube(validation = Rule::new("size(self) >= 1 && size(self) <= 1024 && !self.matches('[\\x00-\\x1f]')").message("spec.provisioning.firstLogonCommands[].commandLine must be 1 to 1024 characters on one line"))]
    #[schemars(length(max = 1024))]
    pub command_line: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("!self.matches('[\\x00-\\x1f]')").message("spec.provisioning.firstLogonCommands[].description must be one line"))]
    #[schemars(length(max = 256))]
    pub description: Option<String>,
}

/// `boots` network boots within `within`, all after the agent's last report (and after the
/// last reimage), make a boot loop.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct BootLoopRule {
    /// At least 2: a single restart is not a loop. The default 3 leaves room for a
    /// cumulative update's own restart before Windows is up.
    #[serde(default = "default_loop_boots")]
    #[x_kube(validation = Rule::new("self >= 2 && self <= 20").message("spec.bootLoop.boots must be between 2 and 20"))]
    pub boots: u32,
    /// Such as "30m".
    #[serde(default = "default_loop_within")]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+(d|h|m|s))+$')").message("spec.bootLoop.within must be a duration such as 30m"))]
    #[schemars(length(max = 32))]
    pub within: String,
}

fn default_loop_boots() -> u32 {
    3
}
fn default_loop_within() -> String {
    "30m".into()
}

impl Default for BootLoopRule {
    fn default() -> Self {
        Self {
            boots: default_loop_boots(),
            within: default_loop_within(),
        }
    }
}

fn default_cooldown() -> String {
    "6h".into()
}
fn default_heartbeat_timeout() -> String {
    "15m".into()
}
fn default_true() -> bool {
    true
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum UpdateMode {
    #[default]
    Managed,
    Immutable,
}

/// What to do about a signal.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum RemediationAction {
    ReimageNow,
    ReimageInWindow,
    AlertOnly,
    Ignore,
}

/// One action per signal. The defaults act on evidence of the improper state and of a boot
/// crash, and leave the rest to waves and people.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SignalActions {
    #[serde(default = "reimage_now")]
    pub failed_rollback: RemediationAction,
    #[serde(default = "reimage_now")]
    pub boot_crash: RemediationAction,
    /// The boot service saw the machine network-boot `bootLoop.boots` times with no agent
    /// report in between: its OS does not come up.
    #[serde(default = "reimage_now")]
    pub boot_loop: RemediationAction,
    /// HeartbeatLost alone never wipes a machine; with a BMC crash record it counts as
    /// BootCrash instead.
    #[serde(default = "alert_only")]
    pub heartbeat_lost: RemediationAction,
    #[serde(default = "alert_only")]
    pub drift: RemediationAction,
    /// NonCompliant endpoints are moved by waves; the default only alerts.
    #[serde(default = "alert_only")]
    pub non_compliant: RemediationAction,
}

fn reimage_now() -> RemediationAction {
    RemediationAction::ReimageNow
}
fn alert_only() -> RemediationAction {
    RemediationAction::AlertOnly
}

impl Default for SignalActions {
    fn default() -> Self {
        Self {
            failed_rollback: reimage_now(),
            boot_crash: reimage_now(),
            boot_loop: reimage_now(),
            heartbeat_lost: alert_only(),
            drift: alert_only(),
            non_compliant: alert_only(),
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetryPolicy {
    /// Tries per attempt before the endpoint is Quarantined.
    #[serde(default = "default_max_tries")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 10").message("retry.maxTries must be between 1 and 10"))]
    pub max_tries: u32,
    /// First backoff; it doubles on each retry.
    #[serde(default = "default_backoff")]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+(d|h|m|s))+$')").message("retry.backoff must be a duration such as 5m"))]
    #[schemars(length(max = 32))]
    pub backoff: String,
    /// How long one try may take before it counts as failed.
    #[serde(default = "default_try_timeout")]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+(d|h|m|s))+$')").message("retry.tryTimeout must be a duration such as 90m"))]
    #[schemars(length(max = 32))]
    pub try_timeout: String,
}

fn default_max_tries() -> u32 {
    3
}
fn default_backoff() -> String {
    "5m".into()
}
fn default_try_timeout() -> String {
    "2h".into()
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_tries: default_max_tries(),
            backoff: default_backoff(),
            try_timeout: default_try_timeout(),
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConcurrencyLimits {
    /// Endpoints reimaging at once in this policy's namespace (automatic remediation and waves
    /// together): a count or a percentage of the namespace's endpoints (rounded down, at least
    /// 1). The operator's --max-concurrent-reimages bounds all namespaces together.
    #[serde(default = "default_global_limit")]
    #[x_kube(validation = Rule::new("string(self).matches('^([1-9][0-9]{0,5}|([1-9][0-9]?|100)%)$')").message("concurrency.global must be a positive integer or a percentage from 1% to 100%"))]
    pub global: IntOrString,
    /// Endpoints reimaging at once in one site.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("string(self).matches('^([1-9][0-9]{0,5}|([1-9][0-9]?|100)%)$')").message("concurrency.perSite must be a positive integer or a percentage from 1% to 100%"))]
    pub per_site: Option<IntOrString>,
}

fn default_global_limit() -> IntOrString {
    IntOrString::Int(10)
}

impl Default for ConcurrencyLimits {
    fn default() -> Self {
        Self {
            global: default_global_limit(),
            per_site: None,
        }
    }
}

/// When too many recent attempts failed in this namespace, its automatic remediation stops until a person
/// looks: a bad golden image or a broken boot service must not wipe machine after machine.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct FailureBudget {
    #[serde(default = "default_budget_failures")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 10000").message("failureBudget.maxFailedAttempts must be between 1 and 10000"))]
    pub max_failed_attempts: u32,
    #[serde(default = "default_budget_window")]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+(d|h|m|s))+$')").message("failureBudget.window must be a duration such as 1h"))]
    #[schemars(length(max = 32))]
    pub window: String,
}

/// Annotation on a RemediationPolicy: when (RFC 3339) a person last reset the circuit breaker
/// of the endpoints it governs; only automatic reimages started after it count. Written by
/// `recastctl breaker reset`.
pub const BREAKER_RESET_ANNOTATION: &str = "recast.dev/breaker-reset-at";
/// Who reset it and why, for the record.
pub const BREAKER_RESET_REASON_ANNOTATION: &str = "recast.dev/breaker-reset-reason";
/// The fleet-wide breaker's reset (RFC 3339), on the RemediationPolicy "default" of the
/// operator's own namespace: a different annotation, so that resetting that namespace's own
/// breaker never resets the fleet's (`recastctl breaker reset --fleet`).
pub const FLEET_BREAKER_RESET_ANNOTATION: &str = "recast.dev/fleet-breaker-reset-at";
pub const FLEET_BREAKER_RESET_REASON_ANNOTATION: &str = "recast.dev/fleet-breaker-reset-reason";

/// How many automatic reimages may start within a window before the breaker opens.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct BreakerSpec {
    /// Automatic reimages of this namespace's endpoints that may start within `window`: a count
    /// or a percentage of the namespace's endpoints (rounded up, at least 1). Unset: 5% of the
    /// endpoints, at least 3 and at most 50.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("string(self).matches('^([1-9][0-9]{0,5}|([1-9][0-9]?|100)%)$')").message("breaker.maxStarts must be a positive integer or a percentage from 1% to 100%"))]
    pub max_starts: Option<IntOrString>,
    #[serde(default = "default_breaker_window")]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+(d|h|m|s))+$')").message("breaker.window must be a duration such as 1h"))]
    #[schemars(length(max = 32))]
    pub window: String,
}

fn default_breaker_window() -> String {
    "1h".into()
}

impl Default for BreakerSpec {
    fn default() -> Self {
        Self {
            max_starts: None,
            window: default_breaker_window(),
        }
    }
}

fn default_budget_failures() -> u32 {
    3
}
fn default_budget_window() -> String {
    "1h".into()
}

impl Default for FailureBudget {
    fn default() -> Self {
        Self {
            max_failed_attempts: default_budget_failures(),
            window: default_budget_window(),
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RemediationPolicyStatus {
    /// Failed attempts of the namespace within the budget's window against this policy's
    /// budget: "2/3 failures in 1h", "exhausted: 3/3 failures in 1h", or "off: the policy is
    /// invalid".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<String>,
    /// True while automatic remediation of the endpoints that name this policy is stopped
    /// because the failure budget is spent (or the policy does not parse).
    #[serde(default)]
    pub remediation_halted: bool,
    /// Valid (False: the policy does not parse and no automatic reimage of its endpoints
    /// starts), RemediationHalted (the failure budget, or an invalid policy) and BreakerOpen
    /// (the namespace's circuit breaker).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<crate::common::Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}
