//! Endpoint: one physical machine under management.

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{Condition, SecretRef};

/// Attempts kept in `status.history`; older ones are dropped so status stays small.
pub const MAX_HISTORY: usize = 20;

/// An endpoint recast manages: who it is, how it boots, how its BMC is reached, which image it
/// must run, and whether recast may touch it at all.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "recast.dev",
    version = "v1alpha1",
    kind = "Endpoint",
    plural = "endpoints",
    singular = "endpoint",
    shortname = "rep",
    category = "recast",
    namespaced,
    status = "EndpointStatus",
    derive = "PartialEq",
    printcolumn(name = "Site", type_ = "string", json_path = ".spec.site"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Step",
        type_ = "string",
        json_path = ".status.activeAttempt.step"
    ),
    printcolumn(
        name = "Build",
        type_ = "string",
        json_path = ".status.lastReport.build",
        description = "OS build.UBR the agent last reported"
    ),
    printcolumn(
        name = "Image",
        type_ = "string",
        json_path = ".status.image",
        description = "GoldenImage the endpoint is meant to run"
    ),
    printcolumn(
        name = "Updates",
        type_ = "string",
        json_path = ".status.updateHold.reason",
        description = "Why Windows quality updates are held or released on the endpoint"
    ),
    printcolumn(
        name = "Protected",
        type_ = "boolean",
        json_path = ".spec.protected",
        priority = 1
    ),
    printcolumn(
        name = "Paused",
        type_ = "boolean",
        json_path = ".spec.paused",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.bootChain) || self.bootChain != 'signed' || self.bootMode == 'uefi'").message("spec.bootChain signed needs spec.bootMode uefi: Secure Boot is a UEFI feature; a BIOS machine boots the ipxe chain"))]
pub struct EndpointSpec {
    /// How recast recognises this machine on the network and in agent reports. Immutable: a
    /// different machine is a different Endpoint.
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.identity is immutable: delete and re-create the Endpoint for a different machine"))]
    pub identity: EndpointIdentity,

    /// Firmware boot mode; selects the network boot program.
    pub boot_mode: BootMode,

    /// Which network boot chain the machine gets: `signed` (Microsoft-signed shim, signed
    /// GRUB, signed kernel: boots with UEFI Secure Boot on), `ipxe` (iPXE and wimboot: Secure
    /// Boot must be off), or `auto` (default): signed for UEFI, ipxe for BIOS.
    #[serde(default, skip_serializing_if = "BootChain::is_auto")]
    pub boot_chain: BootChain,

    /// The baseboard management controller used to power-cycle the machine and set a one-time
    /// network boot. Without it recast waits for the machine to network-boot on its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bmc: Option<BmcSpec>,

    /// Whether recast may wake this machine with a Wake-on-LAN magic packet when it must be
    /// imaged, has no BMC and its agent is silent (it may be powered off). Enable Wake-on-LAN
    /// in the machine's firmware too; false for machines where it is off, so recast asks a
    /// person at once.
    #[serde(default = "default_true", skip_serializing_if = "is_true")]
    pub wake_on_lan: bool,

    /// The golden image this endpoint must run.
    pub image: ImageRef,

    /// Which disk the imaging environment writes. Unset: the only fixed (non-removable,
    /// non-USB) disk of at least 50 GiB; with none or several such disks nothing is written
    /// and the attempt stops for a person, listing the disks seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_disk: Option<TargetDisk>,

    /// Site name, used for per-site concurrency limits and maintenance windows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$') && size(self) <= 63").message("spec.site must be a DNS label: lowercase letters, digits and '-', at most 63 characters"))]
    #[schemars(length(max = 63))]
    pub site: Option<String>,

    /// A protected endpoint is never reimaged: not by a signal, not by a wave, not by a manual
    /// request. Remove the protection first.
    #[serde(default)]
    pub protected: bool,

    /// A paused endpoint is observed but never moved into a reimage on its own; a running
    /// attempt finishes.
    #[serde(default)]
    pub paused: bool,

    /// Ask for one reimage now: set a new token (a timestamp works) to request another, like
    /// `kubectl rollout restart` sets `restartedAt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reimage_request: Option<ReimageRequest>,

    /// The computer name Windows gets (unattend's ComputerName, WDS prestaging): at most 15
    /// letters, digits and '-', not only digits. Unset: the Endpoint's name, upper case, cut to
    /// 15 characters. Unique within the namespace (admission refuses a second Endpoint with the
    /// same computer name, set or derived).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z0-9]([-A-Za-z0-9]{0,13}[A-Za-z0-9])?$') && !self.matches('^[0-9]+$')").message("spec.hostname must be a Windows computer name: 1 to 15 letters, digits and '-' (not first or last), not only digits"))]
    #[schemars(length(max = 15))]
    pub hostname: Option<String>,

    /// The RemediationPolicy that decides what each signal does; "default" when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$')").message("spec.policyRef must be the name of a RemediationPolicy"))]
    #[schemars(length(max = 253))]
    pub policy_ref: Option<String>,

    /// Who serves this machine's reimage boot: recast's own boot service (default) or the
    /// site's WDS server, to which recast refers the machine when an attempt is armed.
    #[serde(default, skip_serializing_if = "BootServer::is_recast")]
    pub boot_server: BootServer,
    /// Overrides the policy's update mode for this endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_mode: Option<crate::policy::UpdateMode>,
    /// A person's override of the update hold (`recastctl hold|release`): `Hold` keeps quality
    /// updates held whatever the mode; `Release` lets them run even on an immutable endpoint,
    /// until a FailedRollback first seen after `requestedAt` engages the guard again. Remove
    /// the field to go back to what the mode and the guard decide.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manual_update_hold: Option<ManualUpdateHold>,
}

/// A manual hold or release of Windows quality updates, with who-and-why for the audit trail.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ManualUpdateHold {
    pub action: ManualHoldAction,
    /// Why, for the audit trail.
    #[x_kube(validation = Rule::new("size(self) >= 1").message("spec.manualUpdateHold.reason is required: say why updates are held or released by hand"))]
    #[schemars(length(max = 1024))]
    pub reason: String,
    /// When the override was requested (RFC 3339). A FailedRollback first seen after this
    /// time engages the guard again despite a `Release`.
    #[x_kube(validation = Rule::new("self.matches('^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}([.][0-9]+)?(Z|[+-][0-9]{2}:[0-9]{2})$')").message("spec.manualUpdateHold.requestedAt must be an RFC 3339 time such as 2026-01-14T08:00:00Z"))]
    #[schemars(length(max = 64))]
    pub requested_at: String,
    /// Who asked (recastctl fills in the local user).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub requested_by: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum ManualHoldAction {
    Hold,
    Release,
}

/// Identity: the MAC addresses the machine network-boots from, and optionally its SMBIOS UUID and
/// serial number (agents report both; a mismatch is never treated as this endpoint).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct EndpointIdentity {
    /// MAC addresses of the machine's network interfaces, "52:54:00:12:34:56".
    #[x_kube(validation = Rule::new("size(self) >= 1").message("spec.identity.macAddresses needs at least one MAC address"))]
    #[x_kube(validation = Rule::new("self.all(m, m.matches('^([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}$'))").message("spec.identity.macAddresses entries must be six colon-separated hex octets, such as 52:54:00:12:34:56"))]
    #[x_kube(validation = Rule::new("self.all(m, self.exists_one(n, n.lowerAscii() == m.lowerAscii()))").message("spec.identity.macAddresses must not list the same address twice"))]
    #[schemars(length(max = 16), inner(length(max = 17)))]
    pub mac_addresses: Vec<String>,

    /// SMBIOS system UUID, as `wmic csproduct get uuid` or dmidecode prints it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$')").message("spec.identity.smbiosUuid must be a UUID such as 4c4c4544-0042-3510-8052-b4c04f384d32"))]
    #[schemars(length(max = 36))]
    pub smbios_uuid: Option<String>,

    /// Chassis serial number (service tag).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("size(self) >= 1 && size(self) <= 64").message("spec.identity.serialNumber must be 1 to 64 characters"))]
    #[schemars(length(max = 64))]
    pub serial_number: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum BootServer {
    #[default]
    Recast,
    Wds,
}

impl BootServer {
    fn is_recast(&self) -> bool {
        *self == BootServer::Recast
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum BootMode {
    Uefi,
    Bios,
}

/// The network boot chain an endpoint gets (`spec.bootChain`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum BootChain {
    /// Signed for UEFI, ipxe for BIOS.
    #[default]
    Auto,
    /// shim → GRUB → kernel, each signed: runs with UEFI Secure Boot enforced.
    Signed,
    /// iPXE (and wimboot for WinPE): unsigned, so Secure Boot must be off.
    Ipxe,
}

impl BootChain {
    fn is_auto(&self) -> bool {
        *self == BootChain::Auto
    }

    /// The chain a machine in `mode` really gets: never `Auto`. `Auto` is the signed chain on
    /// UEFI, except where the imaging environment is WinPE (`winpe`): the signed chain starts
    /// a site's WinPE through Microsoft's boot manager, which does not yet carry a try's
    /// instructions, so only an explicit `signed` asks for it. Admission refuses `signed` with
    /// BIOS; should such an object exist anyway, a BIOS machine still gets iPXE (nothing else
    /// can boot it).
    pub fn resolve(self, mode: BootMode, winpe: bool) -> BootChain {
        match (self, mode) {
            (_, BootMode::Bios) => BootChain::Ipxe,
            (BootChain::Auto, BootMode::Uefi) if winpe => BootChain::Ipxe,
            (BootChain::Auto | BootChain::Signed, BootMode::Uefi) => BootChain::Signed,
            (BootChain::Ipxe, BootMode::Uefi) => BootChain::Ipxe,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            BootChain::Auto => "auto",
            BootChain::Signed => "signed",
            BootChain::Ipxe => "ipxe",
        }
    }
}

/// How recast reaches the machine's BMC.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct BmcSpec {
    /// Protocol driver. Only Redfish today.
    #[serde(default)]
    pub driver: BmcDriver,
    /// Base URL of the BMC's Redfish service, such as https://10.0.40.21.
    #[x_kube(validation = Rule::new("self.matches('^https?://[^/ ]+(/.*)?$')").message("spec.bmc.address must be an http:// or https:// URL such as https://10.0.40.21"))]
    #[schemars(length(max = 2048))]
    pub address: String,
    /// Secret with `username` and `password` keys.
    pub credentials_secret_ref: SecretRef,
    /// Skip TLS certificate verification. Off by default; prefer `caBundleSecretRef` for BMCs
    /// with self-signed certificates.
    #[serde(default)]
    pub insecure_skip_tls_verify: bool,
    /// Secret with a `ca.crt` key holding the PEM CA bundle that signed the BMC's certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle_secret_ref: Option<SecretRef>,
    /// Redfish ComputerSystem id or path when the service exposes more than one system.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub system_id: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum BmcDriver {
    #[default]
    Redfish,
}

/// Either a GoldenImage by name or a channel that points at one.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.goldenImage) != has(self.channel)").message("spec.image must set exactly one of goldenImage or channel"))]
pub struct ImageRef {
    /// Name of a GoldenImage in the same namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$')").message("spec.image.goldenImage must be the name of a GoldenImage"))]
    #[schemars(length(max = 253))]
    pub golden_image: Option<String>,
    /// A channel such as "stable" or "canary": the endpoint follows whichever verified
    /// GoldenImage is in that channel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$') && size(self) <= 63").message("spec.image.channel must be a DNS label such as stable or canary"))]
    #[schemars(length(max = 63))]
    pub channel: Option<String>,
}

/// The disk an endpoint's image is written to: by serial number, by WWN, or by rule (the only
/// fixed disk of at least `minSizeGiB`). Never "disk 0": firmware and kernels order disks
/// differently, and a USB stick or a second data disk must never be wiped.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.serial) && has(self.wwn))").message("spec.targetDisk names a disk by serial or by wwn, not both"))]
pub struct TargetDisk {
    /// The disk's serial number, as `lsblk -o SERIAL` or `Get-PhysicalDisk` shows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("size(self) >= 1 && size(self) <= 128").message("spec.targetDisk.serial must be 1 to 128 characters"))]
    #[schemars(length(max = 128))]
    pub serial: Option<String>,
    /// The disk's World Wide Name (or NVMe EUI/NGUID) in any usual form: `lsblk -o WWN`'s
    /// `0x5000c500…`, the kernel's `naa.5000c500…` or `eui.…`, with or without `_` separators.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("size(self) >= 1 && size(self) <= 128").message("spec.targetDisk.wwn must be 1 to 128 characters"))]
    #[schemars(length(max = 128))]
    pub wwn: Option<String>,
    /// Without serial or wwn: the smallest disk the rule considers (GiB, default 50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(rename = "minSizeGiB")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 65536").message("spec.targetDisk.minSizeGiB must be 1 to 65536"))]
    pub min_size_gib: Option<u32>,
}

/// The smallest disk the default target-disk rule considers.
pub const DEFAULT_MIN_DISK_GIB: u32 = 50;

/// A manual reimage request. A new token requests a new reimage; the same token again does
/// nothing, so re-applying the same YAML never wipes a machine twice.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReimageRequest {
    #[x_kube(validation = Rule::new("size(self) >= 1 && size(self) <= 128").message("spec.reimageRequest.token must be 1 to 128 characters; set a new value (a timestamp works) to request a reimage"))]
    #[schemars(length(max = 128))]
    pub token: String,
    /// Why, for the audit trail.
    #[x_kube(validation = Rule::new("size(self) >= 1").message("spec.reimageRequest.reason is required: say why the machine is being wiped"))]
    #[schemars(length(max = 1024))]
    pub reason: String,
}

/// Lifecycle phase; see docs/lifecycle.md.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum EndpointPhase {
    Pending,
    Ready,
    Degraded,
    ReimageScheduled,
    Reimaging,
    Failed,
    Quarantined,
}

/// Step inside a reimage attempt.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum ReimageStep {
    ArmingBoot,
    PowerCycling,
    Booting,
    Applying,
    FirstBoot,
}

/// Why an attempt was started.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum AttemptTrigger {
    FailedRollback,
    BootCrash,
    BootLoop,
    Drift,
    NonCompliant,
    Manual,
    Wave,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum AttemptOutcome {
    Succeeded,
    Failed,
    Aborted,
    /// Referred to the site's WDS server (`spec.bootServer: wds`), which deploys the image
    /// without telling recast: counted as a reimage, never as a failure.
    HandedOff,
}

impl AttemptOutcome {
    /// Whether the machine was (as far as recast can tell) replaced: its earlier events
    /// describe the old machine.
    pub fn replaced_the_machine(self) -> bool {
        matches!(self, AttemptOutcome::Succeeded | AttemptOutcome::HandedOff)
    }
}

/// One reimage of one endpoint; its id keys every action so nothing runs twice.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Attempt {
    pub id: String,
    pub trigger: AttemptTrigger,
    #[serde(default)]
    pub reason: String,
    /// GoldenImage name and the sha256 of the WIM being applied.
    pub image: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_digest: Option<String>,
    /// Wave that started it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wave: Option<String>,
    pub step: ReimageStep,
    /// Tries so far within this attempt (1 on the first).
    pub try_number: u32,
    pub started_at: String,
    /// When the current try started; the policy's tryTimeout counts from here.
    pub try_started_at: String,
    pub step_started_at: String,
    /// The build the endpoint must report from the new image (the image's minimum build).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_build: Option<String>,
    /// Applying progress, 0..=100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress_percent: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Not before this time does the next try start (backoff).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<String>,
    /// Whether UEFI Secure Boot was on in the machine that runs the current try, as its imaging
    /// environment read the firmware's `SecureBoot` variable (false under BIOS); unset until
    /// the first progress report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secure_boot: Option<bool>,
    /// How the current try's machine is brought to network-boot: Redfish (its BMC), Agent
    /// (the running agent restarts into the network), WakeOnLan (it may be powered off), Loop
    /// (a boot loop brings it back by itself) or Person (someone must restart it). Chosen when
    /// the try's boot is armed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_way: Option<PowerWay>,
    /// The ways earlier tries of this attempt used without the machine network-booting: the
    /// next try does not count on them again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub power_ways_tried: Vec<PowerWay>,
    /// The network address of the machine that claimed the current try from the boot service.
    /// Every later imaging call of the try must come from it, and a claim from any other
    /// address quarantines the attempt (someone else on the provisioning network asked for it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_client: Option<String>,
}

fn default_true() -> bool {
    true
}
fn is_true(b: &bool) -> bool {
    *b
}

/// At most this many network boots are kept in `status.networkBoots`.
pub const MAX_NETWORK_BOOTS: usize = 20;

/// How a try's machine is brought to network-boot, in the order recast prefers them.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum PowerWay {
    /// The BMC sets a one-time network boot and power-cycles the machine.
    Redfish,
    /// Windows still runs: the agent sets a one-time firmware boot to the network and
    /// restarts.
    Agent,
    /// The machine may be powered off: magic packets wake it, and its firmware boots the
    /// network first.
    WakeOnLan,
    /// The attempt answers a boot loop: the machine restarts by itself and network-boots on
    /// its next turn. Nothing switches it on (boot requests can be spoofed; a machine that has
    /// to be switched on was not looping), and the attempt stops if it does not come back
    /// within the policy's `bootLoop.within`.
    Loop,
    /// None of the above: a Warning asks a person to restart the machine.
    Person,
}

impl PowerWay {
    pub fn as_str(self) -> &'static str {
        match self {
            PowerWay::Redfish => "Redfish",
            PowerWay::Agent => "Agent",
            PowerWay::WakeOnLan => "WakeOnLan",
            PowerWay::Loop => "Loop",
            PowerWay::Person => "Person",
        }
    }
}

/// A finished attempt, kept (at most MAX_HISTORY) for `recastctl history`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AttemptRecord {
    pub id: String,
    pub trigger: AttemptTrigger,
    #[serde(default)]
    pub reason: String,
    pub image: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wave: Option<String>,
    pub outcome: AttemptOutcome,
    pub tries: u32,
    pub started_at: String,
    pub finished_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Secure Boot as the last try's imaging environment reported it (see Attempt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secure_boot: Option<bool>,
}

/// What the agent last said, condensed.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReportSummary {
    /// "26100.7623": CurrentBuild.UBR.
    pub build: String,
    pub reported_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_version: Option<String>,
    /// Attempt id the agent carries when it reports from a freshly applied image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt_id: Option<String>,
    /// The most recent update results, newest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub update_results: Vec<UpdateResultSummary>,
    /// Bugchecks seen since the last report, newest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub crashes: Vec<CrashSummary>,
    /// The update hold the agent read back from the registry, and what it found undone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_hold: Option<crate::report::EffectiveUpdateHold>,
    /// What the agent did with the last restart-into-the-network order it was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_restart: Option<crate::report::NetworkRestartOutcome>,
    /// When Windows last started (the report's Kernel-General 12): part of the summary so
    /// the first report after every start reaches the lifecycle at once, and the network
    /// boots before it stop counting towards a boot loop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_time: Option<String>,
    /// Windows Setup's ImageState as the agent read it (`IMAGE_STATE_COMPLETE` once OOBE has
    /// finished): a freshly imaged machine's attempt ends only once Setup is done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub setup_state: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpdateResultSummary {
    /// KB5074109 or the package identity.
    pub update: String,
    /// Installed, Failed, RolledBack, Pending.
    pub result: String,
    pub time: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CrashSummary {
    /// "0x000000ed".
    pub bugcheck_code: String,
    pub time: String,
    /// agent, bmc or boot-service.
    pub source: String,
}

/// An active signal about the endpoint, with when it was first seen.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SignalStatus {
    /// FailedRollback, BootCrash, HeartbeatLost, Drift, NonCompliant.
    #[serde(rename = "type")]
    pub type_: crate::signal::SignalKind,
    pub since: String,
    #[serde(default)]
    pub message: String,
}

/// Whether Windows quality updates are held on the endpoint, why and since when.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpdateHoldStatus {
    /// What recast wants: true while quality updates must not install.
    pub held: bool,
    /// One word: Immutable, FailedRollback or Manual while held; Managed or ManualRelease
    /// while released.
    pub reason: crate::signal::HoldReason,
    #[serde(default)]
    pub message: String,
    /// When `held` and `reason` last changed.
    pub since: String,
    /// Set while a FailedRollback engaged the guard and no reimage has replaced the machine
    /// since: when it was first seen. Kept even while another reason wins, so the guard
    /// outlives a mode switch or a manual hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guard_engaged_since: Option<String>,
    /// What the agent read back from the registry in its last report; None before an agent
    /// that knows about holds reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effective: Option<bool>,
    /// What Windows will do with the hold, as the agent judged it in its last report (its
    /// obstacles and evidence are in `lastReport.updateHold`). Kept so that a change is an
    /// event once, not on every report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enforcement: Option<crate::report::HoldEnforcement>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EndpointStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<EndpointPhase>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The GoldenImage the endpoint resolves to right now (channel followed through).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// sha256 of the WIM last applied by recast.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_image_digest: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_report: Option<ReportSummary>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub signals: Vec<SignalStatus>,
    /// When the boot service saw this machine network-boot with nothing armed (its firmware
    /// then boots the local disk) since the agent's last report, newest last, at most
    /// [`MAX_NETWORK_BOOTS`]: the evidence for BootLoop.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub network_boots: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_attempt: Option<Attempt>,
    /// Finished attempts, newest first, at most 20.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<AttemptRecord>,
    /// Attempts ever started for this endpoint; the next attempt's id ends in this number + 1.
    #[serde(default)]
    pub attempts_started: u32,
    /// True from the moment a network boot is armed until a disarm is confirmed. While it is
    /// true and no try needs the boot, every reconcile asks for the disarm again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub boot_armed: bool,
    /// Token of the last manual reimage request acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handled_reimage_token: Option<String>,
    /// Set when the store was restored from a backup (RFC 3339): what the machine did between
    /// the backup and the restore is unknown, so nothing starts on its own (no automatic
    /// reimage, no wave, no next try) until the agent reports again or a person requests a
    /// reimage; either clears it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_hold: Option<UpdateHoldStatus>,
    /// What the machine's firmware trusts for Secure Boot, as an imaging environment last read
    /// it (before any write). The GoldenImage controller compares it with each image's boot
    /// manager to flag images that would boot nowhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<FirmwareTrust>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// The firmware's Secure Boot state and databases, as read by the imaging environment.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FirmwareTrust {
    /// Whether UEFI Secure Boot was on (false under BIOS); unset when it could not be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secure_boot: Option<bool>,
    /// The subjects (common names) of the X.509 certificates in `db`: the CAs whose boot
    /// managers the firmware starts.
    #[serde(default)]
    pub db_certificates: Vec<String>,
    /// How many image digests `db` holds.
    #[serde(default)]
    pub db_hashes: u32,
    /// How many entries `dbx` (the revocation list) holds.
    #[serde(default)]
    pub dbx_entries: u32,
    /// The attempt whose imaging environment read it.
    pub read_by_attempt: String,
    /// When (RFC 3339).
    pub read_at: String,
}
