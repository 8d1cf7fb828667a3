//! The imaging protocol's messages, as the boot service sends them and the imaging environment
//! (recast-imager, or startnet.cmd in WinPE) reads and answers them. One definition for both
//! sides: the operator serialises these, recast-imager deserialises them.
//!
//! The order of a try: claim (the answer is a session token bound to the claiming address),
//! fetch the task, post progress, post the result.

use recast_crds::endpoint::{DEFAULT_MIN_DISK_GIB, TargetDisk};
use serde::{Deserialize, Serialize};

/// What a successful claim answers: the try's session token, good only from the claiming
/// address, and where the task is.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ClaimAnswer {
    pub token: String,
    pub task_url: String,
}

/// What the imaging environment does, fetched with the try's token.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ImagingTask {
    pub namespace: String,
    pub endpoint: String,
    pub attempt_id: String,
    pub try_number: u32,
    /// "uefi" or "bios".
    pub boot_mode: String,
    pub hostname: String,
    pub image: ImageTaskFile,
    /// Who the machine must be before anything is written (`spec.identity`).
    pub identity: TaskIdentity,
    /// Which disk to write (`spec.targetDisk`, with the default rule filled in).
    pub target_disk: TargetDisk,
    pub progress_url: String,
    pub result_url: String,
    /// The answer file for Windows Setup's specialize and oobe passes (to `\Windows\Panther`).
    pub unattend_url: String,
    /// The new image's agent configuration (to `\ProgramData\recast\agent.json`).
    pub agent_config_url: String,
    /// The image's driver sets by hardware model (GoldenImage `spec.drivers`): the one whose
    /// manufacturer and model are the machine's SMBIOS ones goes to [`DRIVER_DIR`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drivers: Vec<TaskDriverSet>,
    /// The batch's multicast session, when the boot service sends one for this image: the
    /// machine joins it and applies the stream as it comes, and downloads `image` over HTTP if
    /// it misses or loses the session (recast_core::multicast).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multicast: Option<TaskMulticast>,
}

/// How a machine joins its batch's multicast session (udpcast). The stream is the pipable
/// form of the task's image: other bytes than `image`, so its own sha256 and size.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TaskMulticast {
    /// The session's data group (the sender announces it; said for a person reading the task).
    pub group: String,
    /// udpcast's port base (the session uses it and the next port).
    pub port: u16,
    /// Seconds to wait for the session to start before downloading over HTTP instead.
    pub start_timeout_seconds: u32,
    /// Seconds without data, once started, before giving the stream up.
    pub receive_timeout_seconds: u32,
    /// sha256 and size of the pipable WIM the session sends.
    pub sha256: String,
    pub size: u64,
    /// The image's expanded size (its XML's TOTALBYTES), to size the Windows partition before
    /// the stream comes: nothing of the stream can be read before it is written.
    pub image_bytes: u64,
    /// The image's UEFI boot manager (`\Windows\Boot\EFI\bootmgfw.efi`), fetched and checked
    /// against the firmware's databases before the first write, as recast-imager does with
    /// a downloaded WIM; None for an image without one (a BIOS-only image).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_manager: Option<TaskBlob>,
}

/// A file the imaging environment fetches and checks before use.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TaskBlob {
    pub url: String,
    pub sha256: String,
    pub size: u64,
}

/// Where the imaging environment writes the agent configuration on the new Windows, and so
/// the `--agent-config` the golden image's agent service must name (checked from the image's
/// SYSTEM hive before it is served: recast_golden::deployable).
pub const AGENT_CONFIG_WINDOWS_PATH: &str = r"C:\ProgramData\recast\agent.json";

/// Where Windows looks for the script it runs once Setup has finished, before the first
/// logon; recast puts [`SETUP_COMPLETE_LINES`] before the image's own (or starts it).
pub const SETUP_COMPLETE_PATH: [&str; 4] = ["Windows", "Setup", "Scripts", "SetupComplete.cmd"];

/// What both imaging environments add to SetupComplete.cmd: Setup caches the answer file in
/// `%WINDIR%\Panther`, where the domain-join credentials stay in clear text, so once Setup is
/// done the copies go.
pub const SETUP_COMPLETE_LINES: &[&str] = &[
    "rem recast: Setup is done; its cached answer files hold the join credentials in clear text",
    r"del /f /q %WINDIR%\Panther\unattend.xml %WINDIR%\Panther\unattend-original.xml %WINDIR%\Panther\Unattend\unattend.xml 2>nul",
];

/// `existing` SetupComplete.cmd with recast's lines put first, once (CRLF, as cmd.exe wants):
/// an image's own script may end with `exit`, which would skip lines after it.
pub fn setup_complete_with_cleanup(existing: &[u8]) -> Vec<u8> {
    // Already first (this image was captured from a machine recast imaged): as it is.
    if existing.starts_with(SETUP_COMPLETE_LINES[0].as_bytes()) {
        return existing.to_vec();
    }
    let mut out = Vec::with_capacity(existing.len() + 256);
    for line in SETUP_COMPLETE_LINES {
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(existing);
    out
}

/// Where a machine's driver set goes on the Windows partition; unattend.xml names it as
/// `%SystemDrive%\recast\drivers` in its PnP driver paths whenever the image has driver sets
/// (the directory exists, empty, on a machine whose model has none).
pub const DRIVER_DIR: [&str; 2] = ["recast", "drivers"];

/// One driver set as the imaging environment gets it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TaskDriverSet {
    pub manufacturer: String,
    pub model: String,
    pub sha256: String,
    /// Where this boot server serves it; None while its artifact store does not hold it yet
    /// (a machine of this model is then not imaged: it would come up without its drivers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default)]
    pub size: u64,
}

/// Which driver set a machine gets (pure).
#[derive(Debug, PartialEq)]
pub enum DriverChoice<'a> {
    /// No set names this machine's model.
    None,
    Ready(&'a TaskDriverSet),
    /// A set names it but is not served yet.
    NotReady(&'a TaskDriverSet),
}

/// The set for the machine SMBIOS calls `manufacturer` / `model` (case and outer spaces aside).
pub fn driver_set_for<'a>(
    sets: &'a [TaskDriverSet],
    manufacturer: &str,
    model: &str,
) -> DriverChoice<'a> {
    let same = |a: &str, b: &str| a.trim().eq_ignore_ascii_case(b.trim());
    match sets
        .iter()
        .find(|s| same(&s.manufacturer, manufacturer) && same(&s.model, model))
    {
        None => DriverChoice::None,
        Some(s) if s.url.is_some() => DriverChoice::Ready(s),
        Some(s) => DriverChoice::NotReady(s),
    }
}

/// The Endpoint's identity fields the imaging environment checks against SMBIOS.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TaskIdentity {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smbios_uuid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial_number: Option<String>,
}

impl TaskIdentity {
    pub fn of(identity: &recast_crds::endpoint::EndpointIdentity) -> TaskIdentity {
        TaskIdentity {
            smbios_uuid: identity.smbios_uuid.clone(),
            serial_number: identity.serial_number.clone(),
        }
    }
}

/// The target disk the task carries: the Endpoint's, or the default rule.
pub fn target_disk(spec: Option<&TargetDisk>) -> TargetDisk {
    let mut t = spec.cloned().unwrap_or(TargetDisk {
        serial: None,
        wwn: None,
        min_size_gib: None,
    });
    if t.serial.is_none() && t.wwn.is_none() && t.min_size_gib.is_none() {
        t.min_size_gib = Some(DEFAULT_MIN_DISK_GIB);
    }
    t
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ImageTaskFile {
    pub name: String,
    pub url: String,
    pub sha256: String,
    pub size: u64,
    /// The WIM image index to apply (1-based).
    pub index: u32,
}

/// Progress of one imaging step, as the imaging environment posts it.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProgressReport {
    pub percent: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Whether UEFI Secure Boot is on, from the firmware's `SecureBoot` variable (false under
    /// BIOS). The imaging environment sends it with its first report; later ones may leave it
    /// out.
    #[serde(
        default,
        rename = "secureBoot",
        skip_serializing_if = "Option::is_none"
    )]
    pub secure_boot: Option<bool>,
    /// What the firmware trusts (its `db` and `dbx`), read before any write. Sent once, after
    /// the machine's identity matched the Endpoint's; other reports leave it out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<FirmwareReport>,
}

/// The firmware's Secure Boot databases as the imaging environment read them.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FirmwareReport {
    /// The subjects (common names) of the X.509 certificates in `db`, in the variable's order.
    pub db_certificates: Vec<String>,
    /// How many image digests `db` holds.
    #[serde(default)]
    pub db_hashes: u32,
    /// How many entries `dbx` holds (certificates and digests).
    pub dbx_entries: u32,
}

impl FirmwareReport {
    /// At most this many certificate names are kept (a db holds a handful).
    pub const MAX_CERTIFICATES: usize = 32;
    /// And each name at most this long.
    pub const MAX_NAME: usize = 200;

    /// Whether it is within the bounds the boot service keeps.
    pub fn check(&self) -> Result<(), String> {
        if self.db_certificates.len() > Self::MAX_CERTIFICATES {
            return Err(format!(
                "firmware.dbCertificates lists {} names; at most {} are kept",
                self.db_certificates.len(),
                Self::MAX_CERTIFICATES
            ));
        }
        if let Some(long) = self
            .db_certificates
            .iter()
            .find(|n| n.len() > Self::MAX_NAME || n.chars().any(char::is_control))
        {
            return Err(format!(
                "firmware.dbCertificates has a name over {} bytes or with control characters: {:?}",
                Self::MAX_NAME,
                long.chars().take(40).collect::<String>()
            ));
        }
        Ok(())
    }
}

/// The end of an imaging run.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ResultReport {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Set when the imaging environment refused to write at all: another try cannot help,
    /// a person must look.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal: Option<ImagingRefusal>,
}

/// Why an imaging environment wrote nothing, on purpose.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum ImagingRefusal {
    /// The machine's SMBIOS UUID or serial number is not the Endpoint's: the MAC address
    /// answered, but this is not (provably) the Endpoint's machine.
    WrongMachine,
    /// No disk, or more than one, matches the target-disk rule.
    NoTargetDisk,
    /// With Secure Boot on (or not readable), the firmware would refuse the image's boot
    /// manager: its signer's CA is not in `db`, or it or its signer is in `dbx`. Writing the
    /// disk would leave a machine that cannot start.
    WillNotBoot,
}

impl ImagingRefusal {
    /// The event reason a person sees.
    pub fn reason(self) -> &'static str {
        match self {
            ImagingRefusal::WrongMachine => "ImagingWrongMachine",
            ImagingRefusal::NoTargetDisk => "ImagingNoTargetDisk",
            ImagingRefusal::WillNotBoot => "ImagingWillNotBoot",
        }
    }

    /// What to do about it.
    pub fn next_step(self) -> &'static str {
        match self {
            ImagingRefusal::WrongMachine => {
                "check which machine answers for this Endpoint's MAC address and correct spec.identity, then request a reimage"
            }
            ImagingRefusal::NoTargetDisk => {
                "name the disk with spec.targetDisk (serial or wwn) or fix the machine's disks, then request a reimage"
            }
            ImagingRefusal::WillNotBoot => {
                "update the machine's firmware (or its Secure Boot db) to trust the CA named above, or point the Endpoint at an image whose boot manager this machine trusts, then request a reimage; recast does not change firmware variables"
            }
        }
    }
}

impl ResultReport {
    /// What the report means for the try: Ok, or the reason it failed (and whether it was a
    /// refusal).
    pub fn outcome(&self) -> Result<(), (String, Option<ImagingRefusal>)> {
        if self.ok {
            return Ok(());
        }
        Err((
            format!(
                "{}: {}",
                self.step.as_deref().unwrap_or("imaging"),
                self.error.as_deref().unwrap_or("failed without a reason")
            ),
            self.refusal,
        ))
    }
}

/// The reimaged endpoint's agent configuration: who it is, where to report, the attempt it
/// was installed by (its first report must carry it), and a fresh enrollment credential
/// derived for this attempt, which the gateway exchanges for the endpoint's own token.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AgentConfig {
    pub namespace: String,
    pub endpoint: String,
    pub attempt_id: String,
    pub gateway_url: Option<String>,
    pub enrollment_token: String,
    /// The endpoint's update mode, so an immutable endpoint's agent holds quality updates from
    /// its first boot, before the gateway's first answer.
    pub update_mode: recast_crds::policy::UpdateMode,
}

#[cfg(test)]
mod tests {
    #[test]
    fn setup_complete_gets_the_cleanup_once_before_the_images_own_lines() {
        let fresh = setup_complete_with_cleanup(b"");
        assert!(
            String::from_utf8(fresh.clone())
                .unwrap()
                .ends_with("2>nul\r\n")
        );
        assert_eq!(setup_complete_with_cleanup(&fresh), fresh);
        let own = setup_complete_with_cleanup(b"@echo off\r\ncall C:\\oem\\setup.cmd\r\nexit /b 0");
        let text = String::from_utf8(own).unwrap();
        assert!(text.starts_with("rem recast:"), "{text}");
        assert!(
            text.ends_with("2>nul\r\n@echo off\r\ncall C:\\oem\\setup.cmd\r\nexit /b 0"),
            "{text}"
        );
        // echo writes the lines back verbatim only without quotes (a ^ inside quotes stays).
        assert!(SETUP_COMPLETE_LINES.iter().all(|l| !l.contains('"')));
    }

    use super::*;

    #[test]
    fn the_default_rule_fills_only_an_unset_target() {
        let d = target_disk(None);
        assert_eq!(d.min_size_gib, Some(DEFAULT_MIN_DISK_GIB));
        assert_eq!((d.serial, d.wwn), (None, None));
        let by_serial = TargetDisk {
            serial: Some("S1".into()),
            wwn: None,
            min_size_gib: None,
        };
        assert_eq!(target_disk(Some(&by_serial)), by_serial);
        let small = TargetDisk {
            serial: None,
            wwn: None,
            min_size_gib: Some(2),
        };
        assert_eq!(target_disk(Some(&small)), small);
    }

    #[test]
    fn a_result_says_ok_a_failure_or_a_refusal() {
        let parse = |s: &str| serde_json::from_str::<ResultReport>(s);
        assert_eq!(parse(r#"{"ok":true}"#).unwrap().outcome(), Ok(()));
        assert_eq!(
            parse(r#"{"ok":false,"step":"apply","error":"disk full"}"#)
                .unwrap()
                .outcome(),
            Err(("apply: disk full".into(), None))
        );
        assert_eq!(
            parse(r#"{"ok":false,"step":"identity","error":"x","refusal":"wrongMachine"}"#)
                .unwrap()
                .outcome(),
            Err(("identity: x".into(), Some(ImagingRefusal::WrongMachine)))
        );
        assert_eq!(
            parse(r#"{"ok":false}"#).unwrap().outcome(),
            Err(("imaging: failed without a reason".into(), None))
        );
        // Bad input: an unknown refusal or field is refused, not ignored.
        assert!(parse(r#"{"ok":false,"refusal":"bored"}"#).is_err());
        assert!(parse(r#"{"ok":true,"extra":1}"#).is_err());
    }

    #[test]
    fn a_firmware_report_is_bounded_and_says_what_is_wrong() {
        let parse = |s: &str| serde_json::from_str::<ProgressReport>(s);
        let r = parse(
            r#"{"percent":2,"firmware":{"dbCertificates":["Microsoft Windows Production PCA 2011"],"dbxEntries":431}}"#,
        )
        .unwrap();
        let f = r.firmware.unwrap();
        assert_eq!((f.db_hashes, f.dbx_entries), (0, 431));
        assert!(f.check().is_ok());
        // Bad input: too many names, a name too long or with control characters, an unknown
        // field: each refused with what is wrong.
        let many = FirmwareReport {
            db_certificates: vec!["x".into(); FirmwareReport::MAX_CERTIFICATES + 1],
            db_hashes: 0,
            dbx_entries: 0,
        };
        assert!(many.check().unwrap_err().contains("at most 32 are kept"));
        let long = FirmwareReport {
            db_certificates: vec!["x".repeat(FirmwareReport::MAX_NAME + 1)],
            ..many.clone()
        };
        assert!(long.check().unwrap_err().contains("over 200 bytes"));
        let control = FirmwareReport {
            db_certificates: vec!["CA\n2023".into()],
            ..many
        };
        assert!(control.check().unwrap_err().contains("control characters"));
        assert!(
            parse(r#"{"percent":2,"firmware":{"dbCertificates":[],"dbxEntries":0,"pk":1}}"#)
                .is_err()
        );
        // The refusal a person sees for a boot manager the firmware would not start.
        assert_eq!(ImagingRefusal::WillNotBoot.reason(), "ImagingWillNotBoot");
        assert!(
            ImagingRefusal::WillNotBoot
                .next_step()
                .contains("recast does not change firmware variables")
        );
        assert_eq!(
            serde_json::from_str::<ResultReport>(r#"{"ok":false,"refusal":"willNotBoot"}"#)
                .unwrap()
                .refusal,
            Some(ImagingRefusal::WillNotBoot)
        );
    }

    #[test]
    fn a_task_round_trips_in_the_shape_the_imager_reads() {
        let task = ImagingTask {
            multicast: None,
            namespace: "default".into(),
            endpoint: "kiosk-001".into(),
            attempt_id: "a1".into(),
            try_number: 1,
            boot_mode: "uefi".into(),
            hostname: "KIOSK-001".into(),
            image: ImageTaskFile {
                name: "golden".into(),
                url: "http://b/artifacts/images/x.wim".into(),
                sha256: "ab".into(),
                size: 3,
                index: 1,
            },
            identity: TaskIdentity {
                smbios_uuid: Some("1b4e28ba-2fa1-11d2-883f-0016d3cca427".into()),
                serial_number: None,
            },
            target_disk: target_disk(None),
            progress_url: "p".into(),
            result_url: "r".into(),
            unattend_url: "u".into(),
            agent_config_url: "c".into(),
            drivers: vec![],
        };
        let json = serde_json::to_value(&task).unwrap();
        assert_eq!(json["targetDisk"]["minSizeGiB"], 50);
        assert_eq!(
            json["identity"]["smbiosUuid"],
            "1b4e28ba-2fa1-11d2-883f-0016d3cca427"
        );
        assert_eq!(json["agentConfigUrl"], "c");
        let back: ImagingTask = serde_json::from_value(json).unwrap();
        assert_eq!(back, task);
    }

    #[test]
    fn a_machine_gets_the_driver_set_of_its_own_model() {
        let set = |manufacturer: &str, model: &str, url: Option<&str>| TaskDriverSet {
            manufacturer: manufacturer.into(),
            model: model.into(),
            sha256: "ab".into(),
            url: url.map(Into::into),
            size: 1,
        };
        let sets = vec![
            set(
                "Dell Inc.",
                "OptiPlex 7010",
                Some("http://b/artifacts/images/ab.wim"),
            ),
            set("LENOVO", "21HD", None),
        ];
        // SMBIOS strings often carry trailing spaces and vendor-specific case.
        assert_eq!(
            driver_set_for(&sets, "dell inc. ", "OptiPlex 7010  "),
            DriverChoice::Ready(&sets[0])
        );
        assert_eq!(
            driver_set_for(&sets, "LENOVO", "21hd"),
            DriverChoice::NotReady(&sets[1])
        );
        assert_eq!(
            driver_set_for(&sets, "Dell Inc.", "OptiPlex 7020"),
            DriverChoice::None
        );
        assert_eq!(
            driver_set_for(&[], "QEMU", "Standard PC"),
            DriverChoice::None
        );
    }
}
