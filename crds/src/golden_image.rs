//! GoldenImage: a WIM plus the WinPE boot kit that applies it, trusted only after its own bytes
//! were checked.

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::Condition;

/// Annotation `recastctl image promote|demote` sets: "promoted" or "demoted".
pub const KNOWN_GOOD_ANNOTATION: &str = "recast.dev/known-good";
/// Why the image was promoted or demoted, and by whom (shown in the condition's message).
pub const KNOWN_GOOD_REASON_ANNOTATION: &str = "recast.dev/known-good-reason";

/// A golden Windows image. recast serves it to an endpoint only when the Verified condition is
/// True: the sha256 matched and the WIM's own packages show the required build and updates.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "recast.dev",
    version = "v1alpha1",
    kind = "GoldenImage",
    plural = "goldenimages",
    singular = "goldenimage",
    shortname = "gi",
    category = "recast",
    namespaced,
    status = "GoldenImageStatus",
    derive = "PartialEq",
    printcolumn(
        name = "Build",
        type_ = "string",
        json_path = ".status.facts.build",
        description = "build.UBR read from the WIM"
    ),
    printcolumn(
        name = "Min-Build",
        type_ = "string",
        json_path = ".spec.requirements.minimumBuild",
        priority = 1
    ),
    printcolumn(
        name = "Edition",
        type_ = "string",
        json_path = ".status.facts.edition"
    ),
    printcolumn(
        name = "Verified",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Verified\")].status"
    ),
    printcolumn(
        name = "KnownGood",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"KnownGood\")].status"
    ),
    printcolumn(name = "Channels", type_ = "string", json_path = ".status.channels"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct GoldenImageSpec {
    /// Where the WIM comes from.
    pub source: ArtifactSource,
    /// sha256 of the whole WIM file, lowercase hex. The image is refused if the bytes differ.
    #[x_kube(validation = Rule::new("self.matches('^[0-9a-f]{64}$')").message("spec.sha256 must be 64 lowercase hex digits, as sha256sum prints"))]
    #[schemars(length(max = 64))]
    pub sha256: String,
    /// 1-based index of the image inside the WIM to apply.
    #[serde(default = "default_image_index")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 256").message("spec.imageIndex must be between 1 and 256 (WIM image indexes start at 1)"))]
    pub image_index: u32,
    /// What the WIM must declare about itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected: Option<ExpectedImage>,
    /// What the WIM must contain to be Verified.
    pub requirements: ImageRequirements,
    /// Channels this image is published to (such as "stable") once it is KnownGood: a
    /// Verified image that has not proven itself serves none of them. Endpoints following a
    /// channel become NonCompliant when it moves, and waves move them, never an instant
    /// mass reimage.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(validation = Rule::new("self.all(c, c.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$') && size(c) <= 63)").message("spec.channels entries must be DNS labels such as stable or canary"))]
    #[schemars(length(max = 16), inner(length(max = 63)))]
    pub channels: Vec<String>,
    /// Channels this image serves as soon as it is Verified, before it is KnownGood: the
    /// canary endpoints whose Ready reports make it KnownGood (spec.promotion).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(validation = Rule::new("self.all(c, c.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$') && size(c) <= 63)").message("spec.canaryChannels entries must be DNS labels such as canary"))]
    #[schemars(length(max = 16), inner(length(max = 63)))]
    pub canary_channels: Vec<String>,
    /// When the image becomes KnownGood on its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promotion: Option<Promotion>,
    /// Driver sets by hardware model: the imaging environment reads the machine's SMBIOS
    /// manufacturer and model, puts the matching set on the Windows partition, and Windows
    /// installs it in its specialize pass (unattend's PnP driver paths). Each set is a WIM
    /// (`wimlib-imagex capture DIR set.wim`, or DISM) of INF driver folders, fetched and checked
    /// by sha256 like the image. A machine whose model has no set gets none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(validation = Rule::new("self.all(a, self.exists_one(b, a.manufacturer.trim().lowerAscii() == b.manufacturer.trim().lowerAscii() && a.model.trim().lowerAscii() == b.model.trim().lowerAscii()))").message("spec.drivers names each manufacturer and model once (case and outer spaces aside, as machines are matched)"))]
    #[schemars(length(max = 64))]
    pub drivers: Vec<DriverSet>,
}

/// The drivers of one hardware model.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct DriverSet {
    /// SMBIOS system manufacturer, as the machine reports it (`sys_vendor`; Windows:
    /// `Win32_ComputerSystem.Manufacturer`), such as "Dell Inc.". Compared without regard to
    /// case or surrounding spaces.
    #[x_kube(validation = Rule::new("size(self.trim()) >= 1 && !self.matches('[\\x00-\\x1f]')").message("spec.drivers[].manufacturer must be the SMBIOS manufacturer, one line"))]
    #[schemars(length(max = 128))]
    pub manufacturer: String,
    /// SMBIOS product name (`product_name`; `Win32_ComputerSystem.Model`), such as
    /// "OptiPlex 7010".
    #[x_kube(validation = Rule::new("size(self.trim()) >= 1 && !self.matches('[\\x00-\\x1f]')").message("spec.drivers[].model must be the SMBIOS product name, one line"))]
    #[schemars(length(max = 128))]
    pub model: String,
    /// Where the driver WIM comes from.
    pub source: ArtifactSource,
    /// sha256 of the driver WIM, lowercase hex.
    #[x_kube(validation = Rule::new("self.matches('^[0-9a-f]{64}$')").message("spec.drivers[].sha256 must be 64 lowercase hex digits, as sha256sum prints"))]
    #[schemars(length(max = 64))]
    pub sha256: String,
}

fn default_image_index() -> u32 {
    1
}

/// Exactly one of an HTTP(S) URL or a local path on the operator's artifact volume.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.url) != has(self.path)").message("source must set exactly one of url or path"))]
pub struct ArtifactSource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^https?://[^/ ]+/.*$')").message("source.url must be an http:// or https:// URL of the file"))]
    #[schemars(length(max = 2048))]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.startsWith('/') && !self.contains('/../') && !self.endsWith('/..')").message("source.path must be an absolute path without '..' components"))]
    #[schemars(length(max = 4096))]
    pub path: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExpectedImage {
    /// EDITIONID from the WIM XML, such as "Enterprise" or "Professional".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub edition: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<Arch>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Amd64,
    Arm64,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageRequirements {
    /// Lowest acceptable build.UBR, such as "26100.7623" (January 2026, KB5074109).
    #[x_kube(validation = Rule::new("self.matches('^[0-9]{5}[.][0-9]{1,5}$')").message("requirements.minimumBuild must be build.UBR such as 26100.7623"))]
    #[schemars(length(max = 11))]
    pub minimum_build: String,
    /// Updates the image must contain, such as KB5074109.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(validation = Rule::new("self.all(k, k.matches('^KB[0-9]{6,8}$'))").message("requirements.requiredKbs entries must be KB followed by digits, such as KB5074109"))]
    #[schemars(length(max = 32), inner(length(max = 10)))]
    pub required_kbs: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Promotion {
    /// Endpoints reimaged onto this image that must stay Ready before it is KnownGood.
    #[x_kube(validation = Rule::new("self >= 1 && self <= 10000").message("promotion.minReadyEndpoints must be between 1 and 10000"))]
    pub min_ready_endpoints: u32,
    /// How long each of them must stay Ready, such as "24h".
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+(d|h|m|s))+$')").message("promotion.soak must be a duration such as 24h or 2d"))]
    #[schemars(length(max = 32))]
    pub soak: String,
}

/// Facts read from the WIM's own bytes.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageFacts {
    pub build: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edition: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub languages: Vec<String>,
    /// RollupFix package identities found under Windows\servicing\Packages.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rollup_packages: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kbs: Vec<String>,
    #[serde(default)]
    pub size_bytes: u64,
    /// The UEFI boot manager the image installs (`\Windows\Boot\EFI\bootmgfw.efi`), as
    /// its Authenticode signature says: what each machine's Secure Boot `db` must trust.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_manager: Option<BootManagerFacts>,
}

/// The image's UEFI boot manager, read from the WIM's own bytes by the deep check.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BootManagerFacts {
    /// Its Authenticode SHA-256 (what a `db`/`dbx` hash entry holds), when it is a PE image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authenticode_sha256: Option<String>,
    /// Its valid signatures (none: unsigned or unreadable, see `problem`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub signatures: Vec<BootSignature>,
    /// Why no machine with Secure Boot on would start it, when the file alone says so
    /// (absent, not a PE image, unsigned, a damaged signature).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// One valid Authenticode signature of a boot manager.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BootSignature {
    /// The signer certificate's subject (common name).
    pub signer: String,
    /// The issuer of the last certificate the signature carries (often a root such as
    /// "Microsoft Root Certificate Authority 2010"); a `db` holding it starts the boot manager.
    pub issuer: String,
    /// The carried chain's subjects, signer first, e.g. ["Microsoft Windows", "Windows UEFI CA
    /// 2023"]; a `db` holding any of them starts the boot manager.
    #[serde(default)]
    pub chain: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GoldenImageStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub facts: Option<ImageFacts>,
    /// sha256 recast computed; equals spec.sha256 when Verified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Channels the image effectively serves: its canaryChannels while Verified, and its
    /// channels too once KnownGood.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub channels: Vec<String>,
    /// Endpoints reimaged onto this image that are Ready.
    #[serde(default)]
    pub ready_endpoints: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}
