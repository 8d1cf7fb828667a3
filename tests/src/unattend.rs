//! The structure of an unattend.xml that Windows Setup would take, checked from the outside
//! (roxmltree, not recast's renderer): the answer-file namespace, configuration passes Setup
//! knows, components in the passes Microsoft's unattend reference lists for them, every
//! component's identity attributes with the image's processor architecture, and each setting
//! recast writes in a pass its component accepts it in. What it cannot check here is Windows
//! itself applying the file (docs/first-boot.md says so).

use std::collections::BTreeSet;

const NS: &str = "urn:schemas-microsoft-com:unattend";

/// The configuration passes of Windows Setup.
const PASSES: [&str; 7] = [
    "windowsPE",
    "offlineServicing",
    "generalize",
    "specialize",
    "auditSystem",
    "auditUser",
    "oobeSystem",
];

/// The components recast writes, with the passes the unattend reference lists for each.
const COMPONENTS: &[(&str, &[&str])] = &[
    (
        "Microsoft-Windows-Shell-Setup",
        &[
            "specialize",
            "auditSystem",
            "auditUser",
            "oobeSystem",
            "offlineServicing",
            "generalize",
        ],
    ),
    (
        "Microsoft-Windows-International-Core",
        &["specialize", "oobeSystem"],
    ),
    (
        "Microsoft-Windows-UnattendedJoin",
        &["specialize", "offlineServicing"],
    ),
    (
        "Microsoft-Windows-PnpCustomizationsNonWinPE",
        &["offlineServicing", "auditSystem", "specialize"],
    ),
    (
        "Microsoft-Windows-Deployment",
        &[
            "specialize",
            "auditSystem",
            "auditUser",
            "generalize",
            "oobeSystem",
        ],
    ),
];

/// Settings of a component that Setup honours only in some passes (component, setting,
/// passes): ComputerName is read in specialize, the OOBE block and accounts in oobeSystem.
const SETTING_PASSES: &[(&str, &str, &[&str])] = &[
    (
        "Microsoft-Windows-Shell-Setup",
        "ComputerName",
        &["specialize"],
    ),
    ("Microsoft-Windows-Shell-Setup", "OOBE", &["oobeSystem"]),
    (
        "Microsoft-Windows-Shell-Setup",
        "UserAccounts",
        &["oobeSystem", "auditSystem"],
    ),
    (
        "Microsoft-Windows-Shell-Setup",
        "FirstLogonCommands",
        &["oobeSystem"],
    ),
    (
        "Microsoft-Windows-Shell-Setup",
        "TimeZone",
        &["specialize", "oobeSystem", "auditSystem"],
    ),
    (
        "Microsoft-Windows-UnattendedJoin",
        "Identification",
        &["specialize"],
    ),
    (
        "Microsoft-Windows-UnattendedJoin",
        "OfflineIdentification",
        &["offlineServicing"],
    ),
    (
        "Microsoft-Windows-Deployment",
        "RunSynchronous",
        &["specialize", "auditUser", "generalize"],
    ),
    (
        "Microsoft-Windows-PnpCustomizationsNonWinPE",
        "DriverPaths",
        &["offlineServicing", "auditSystem", "specialize"],
    ),
];

/// The OOBE screens that wait for a person unless the answer file hides them (Windows 11):
/// the licence, the local and online account pages, the wireless page, and the privacy
/// choices (`ProtectYourPC`).
const OOBE_HIDES: [&str; 4] = [
    "HideEULAPage",
    "HideLocalAccountScreen",
    "HideOnlineAccountScreens",
    "HideWirelessSetupInOOBE",
];

/// The PnP driver paths `xml` gives Windows, each with the pass it is in.
pub fn driver_paths(xml: &str) -> Vec<(String, String)> {
    let Ok(doc) = roxmltree::Document::parse(xml) else {
        return Vec::new();
    };
    doc.descendants()
        .filter(|n| n.tag_name().name() == "Path")
        .filter(|n| n.ancestors().any(|a| a.tag_name().name() == "DriverPaths"))
        .map(|n| {
            let pass = n
                .ancestors()
                .find(|a| a.tag_name().name() == "settings")
                .and_then(|a| a.attribute("pass"))
                .unwrap_or_default();
            (pass.to_string(), n.text().unwrap_or_default().to_string())
        })
        .collect()
}

/// Each OOBE screen `xml` leaves for a person (empty: OOBE finishes on its own).
pub fn oobe_waits_for(xml: &str) -> Vec<String> {
    let doc = match roxmltree::Document::parse(xml) {
        Ok(d) => d,
        Err(e) => return vec![format!("not XML: {e}")],
    };
    let oobe = doc.descendants().find(|n| {
        n.tag_name().name() == "OOBE"
            && n.ancestors().any(|a| {
                a.tag_name().name() == "settings" && a.attribute("pass") == Some("oobeSystem")
            })
    });
    let Some(oobe) = oobe else {
        return vec!["no OOBE block in the oobeSystem pass".into()];
    };
    let value = |name: &str| {
        oobe.children()
            .find(|c| c.tag_name().name() == name)
            .and_then(|c| c.text())
            .map(str::trim)
    };
    let mut out: Vec<String> = OOBE_HIDES
        .iter()
        .filter(|h| value(h) != Some("true"))
        .map(|h| format!("{h} is not true"))
        .collect();
    if !matches!(value("ProtectYourPC"), Some("1" | "2" | "3")) {
        out.push("ProtectYourPC is not set: the privacy page waits".into());
    }
    out
}

/// Every structural problem of `xml` for an image of architecture `arch` (empty: none).
pub fn problems(xml: &str, arch: &str) -> Vec<String> {
    let doc = match roxmltree::Document::parse(xml) {
        Ok(d) => d,
        Err(e) => return vec![format!("not XML: {e}")],
    };
    let mut out = Vec::new();
    let root = doc.root_element();
    if root.tag_name().name() != "unattend" || root.tag_name().namespace() != Some(NS) {
        out.push(format!(
            "the root is {:?} in {:?}, not unattend in {NS}",
            root.tag_name().name(),
            root.tag_name().namespace()
        ));
    }
    let mut seen = BTreeSet::new();
    for settings in root.children().filter(|n| n.is_element()) {
        if settings.tag_name().name() != "settings" {
            out.push(format!("unexpected element {}", settings.tag_name().name()));
            continue;
        }
        let pass = settings.attribute("pass").unwrap_or_default();
        if !PASSES.contains(&pass) {
            out.push(format!("unknown pass {pass:?}"));
        }
        if !seen.insert(pass.to_string()) {
            out.push(format!("pass {pass} appears twice"));
        }
        for component in settings.children().filter(|n| n.is_element()) {
            let name = component.attribute("name").unwrap_or_default();
            match COMPONENTS.iter().find(|(c, _)| *c == name) {
                None => out.push(format!("unknown component {name:?} in {pass}")),
                Some((_, passes)) if !passes.contains(&pass) => {
                    out.push(format!("{name} is not read in the {pass} pass"))
                }
                Some(_) => {}
            }
            for (attr, want) in [
                ("processorArchitecture", arch),
                ("publicKeyToken", "31bf3856ad364e35"),
                ("language", "neutral"),
                ("versionScope", "nonSxS"),
            ] {
                let got = component.attribute(attr).unwrap_or_default();
                if got != want {
                    out.push(format!("{name} in {pass}: {attr}={got:?}, want {want:?}"));
                }
            }
            for setting in component.children().filter(|n| n.is_element()) {
                let s = setting.tag_name().name();
                if let Some((_, _, passes)) = SETTING_PASSES
                    .iter()
                    .find(|(c, n, _)| *c == name && *n == s)
                    && !passes.contains(&pass)
                {
                    out.push(format!("{name}/{s} is not honoured in the {pass} pass"));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<unattend xmlns="urn:schemas-microsoft-com:unattend">
  <settings pass="specialize">
    <component name="Microsoft-Windows-Shell-Setup" processorArchitecture="arm64" publicKeyToken="31bf3856ad364e35" language="neutral" versionScope="nonSxS">
      <ComputerName>KIOSK-01</ComputerName>
    </component>
  </settings>
</unattend>"#;

    #[test]
    fn a_well_formed_file_passes_and_each_mistake_is_named() {
        assert_eq!(problems(GOOD, "arm64"), Vec::<String>::new());
        let wrong_arch = problems(GOOD, "amd64");
        assert!(
            wrong_arch[0].contains("processorArchitecture"),
            "{wrong_arch:?}"
        );
        let oobe_name = GOOD.replace("specialize", "oobeSystem");
        assert!(
            problems(&oobe_name, "arm64")[0].contains("ComputerName is not honoured"),
            "{:?}",
            problems(&oobe_name, "arm64")
        );
        let typo = GOOD.replace("Shell-Setup", "Shell-Setpu");
        assert!(problems(&typo, "arm64")[0].contains("unknown component"));
        let no_ns = GOOD.replace(" xmlns=\"urn:schemas-microsoft-com:unattend\"", "");
        assert!(problems(&no_ns, "arm64")[0].contains("the root"));
        let bad_pass = GOOD.replace("specialize", "firstBoot");
        assert!(problems(&bad_pass, "arm64")[0].contains("unknown pass"));
        assert!(problems("<unattend", "amd64")[0].starts_with("not XML"));
    }

    #[test]
    fn oobe_that_would_wait_is_named() {
        assert_eq!(
            oobe_waits_for(GOOD),
            vec!["no OOBE block in the oobeSystem pass".to_string()]
        );
        let finishing = r#"<unattend xmlns="urn:schemas-microsoft-com:unattend"><settings pass="oobeSystem"><component name="Microsoft-Windows-Shell-Setup"><OOBE>
<HideEULAPage>true</HideEULAPage><HideLocalAccountScreen>true</HideLocalAccountScreen>
<HideOnlineAccountScreens>true</HideOnlineAccountScreens><HideWirelessSetupInOOBE>true</HideWirelessSetupInOOBE>
<ProtectYourPC>3</ProtectYourPC></OOBE></component></settings></unattend>"#;
        assert_eq!(oobe_waits_for(finishing), Vec::<String>::new());
        let account_page =
            finishing.replace("<HideLocalAccountScreen>true</HideLocalAccountScreen>", "");
        assert_eq!(
            oobe_waits_for(&account_page),
            vec!["HideLocalAccountScreen is not true".to_string()]
        );
        let privacy = finishing.replace("<ProtectYourPC>3</ProtectYourPC>", "");
        assert!(oobe_waits_for(&privacy)[0].contains("ProtectYourPC"));
    }
}
