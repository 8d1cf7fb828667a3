//! bcdboot's file job: which files of the applied `\Windows\Boot` go where on the system
//! partition, per boot mode. Pure: the shell lists `\Windows\Boot` and copies what this says.
//!
//! - UEFI (the ESP): `Boot\EFI\*` to `\EFI\Microsoft\Boot\`, `Boot\Fonts` and
//!   `Boot\Resources` beside them, and `bootmgfw.efi` again as the removable-media fallback
//!   `\EFI\Boot\bootx64.efi` (what firmware boots when its NVRAM has no entry for the disk,
//!   as after a reimage).
//! - BIOS (the active partition): `Boot\PCAT\*` to `\Boot\`, except `bootmgr` (and `bootnxt`),
//!   which the volume boot record loads from the root; Fonts and Resources under `\Boot`.

use crate::layout::BootMode;

/// One copy: a path under `\Windows\Boot` (with `/`) to a path on the system partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Copy {
    pub from: String,
    pub to: String,
}

/// UEFI's removable-media fallback loader: what firmware boots from a disk it has no NVRAM
/// entry for (as after a reimage).
pub const FALLBACK_LOADER: &str = "EFI/Boot/bootx64.efi";

/// Where the BCD store goes on the system partition.
pub fn bcd_path(mode: BootMode) -> &'static str {
    match mode {
        BootMode::Uefi => "EFI/Microsoft/Boot/BCD",
        BootMode::Bios => "Boot/BCD",
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "the image has no \\Windows\\Boot\\{0}: it is not a bootable Windows image (check the golden WIM's index)"
)]
pub struct MissingBootManager(pub &'static str);

/// The copies for `mode`, from the files found under `\Windows\Boot` (relative paths with `/`,
/// any case: NTFS keeps the case Windows wrote).
pub fn plan(mode: BootMode, files: &[String]) -> Result<Vec<Copy>, MissingBootManager> {
    let mut copies = Vec::new();
    let under = |path: &str, dir: &str| -> Option<String> {
        let (first, rest) = path.split_once('/')?;
        (first.eq_ignore_ascii_case(dir) && !rest.is_empty()).then(|| rest.to_string())
    };
    let mut sorted = files.to_vec();
    sorted.sort();
    for f in &sorted {
        let to = match mode {
            BootMode::Uefi => under(f, "EFI")
                .map(|r| format!("EFI/Microsoft/Boot/{r}"))
                .or_else(|| under(f, "Fonts").map(|r| format!("EFI/Microsoft/Boot/Fonts/{r}")))
                .or_else(|| {
                    under(f, "Resources").map(|r| format!("EFI/Microsoft/Boot/Resources/{r}"))
                }),
            BootMode::Bios => under(f, "PCAT")
                .map(|r| {
                    if r.eq_ignore_ascii_case("bootmgr") {
                        "bootmgr".to_string()
                    } else if r.eq_ignore_ascii_case("bootnxt") {
                        "BOOTNXT".to_string()
                    } else {
                        format!("Boot/{r}")
                    }
                })
                .or_else(|| under(f, "Fonts").map(|r| format!("Boot/Fonts/{r}")))
                .or_else(|| under(f, "Resources").map(|r| format!("Boot/Resources/{r}"))),
        };
        if let Some(to) = to {
            copies.push(Copy {
                from: f.clone(),
                to,
            });
        }
    }
    match mode {
        BootMode::Uefi => {
            let manager = copies
                .iter()
                .find(|c| c.to.eq_ignore_ascii_case("EFI/Microsoft/Boot/bootmgfw.efi"))
                .ok_or(MissingBootManager("EFI\\bootmgfw.efi"))?;
            let fallback = Copy {
                from: manager.from.clone(),
                to: FALLBACK_LOADER.into(),
            };
            copies.push(fallback);
        }
        BootMode::Bios => {
            if !copies.iter().any(|c| c.to == "bootmgr") {
                return Err(MissingBootManager("PCAT\\bootmgr"));
            }
        }
    }
    Ok(copies)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files() -> Vec<String> {
        [
            "EFI/bootmgfw.efi",
            "EFI/bootmgr.efi",
            "EFI/memtest.efi",
            "EFI/en-US/bootmgfw.efi.mui",
            "Fonts/segmono_boot.ttf",
            "PCAT/bootmgr",
            "PCAT/bootnxt",
            "PCAT/memtest.exe",
            "PCAT/en-US/bootmgr.exe.mui",
            "Resources/bootres.dll",
            "DVD/EFI/BCD",
            "PXE/wdsnbp.com",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    fn pairs(copies: &[Copy]) -> Vec<(&str, &str)> {
        copies
            .iter()
            .map(|c| (c.from.as_str(), c.to.as_str()))
            .collect()
    }

    #[test]
    fn uefi_copies_the_efi_manager_fonts_and_the_fallback_only() {
        let copies = plan(BootMode::Uefi, &files()).unwrap();
        assert_eq!(
            pairs(&copies),
            [
                ("EFI/bootmgfw.efi", "EFI/Microsoft/Boot/bootmgfw.efi"),
                ("EFI/bootmgr.efi", "EFI/Microsoft/Boot/bootmgr.efi"),
                (
                    "EFI/en-US/bootmgfw.efi.mui",
                    "EFI/Microsoft/Boot/en-US/bootmgfw.efi.mui"
                ),
                ("EFI/memtest.efi", "EFI/Microsoft/Boot/memtest.efi"),
                (
                    "Fonts/segmono_boot.ttf",
                    "EFI/Microsoft/Boot/Fonts/segmono_boot.ttf"
                ),
                (
                    "Resources/bootres.dll",
                    "EFI/Microsoft/Boot/Resources/bootres.dll"
                ),
                ("EFI/bootmgfw.efi", "EFI/Boot/bootx64.efi"),
            ]
        );
        assert_eq!(bcd_path(BootMode::Uefi), "EFI/Microsoft/Boot/BCD");
    }

    #[test]
    fn bios_puts_bootmgr_at_the_root_and_the_rest_under_boot() {
        let copies = plan(BootMode::Bios, &files()).unwrap();
        assert_eq!(
            pairs(&copies),
            [
                ("Fonts/segmono_boot.ttf", "Boot/Fonts/segmono_boot.ttf"),
                ("PCAT/bootmgr", "bootmgr"),
                ("PCAT/bootnxt", "BOOTNXT"),
                ("PCAT/en-US/bootmgr.exe.mui", "Boot/en-US/bootmgr.exe.mui"),
                ("PCAT/memtest.exe", "Boot/memtest.exe"),
                ("Resources/bootres.dll", "Boot/Resources/bootres.dll"),
            ]
        );
        assert_eq!(bcd_path(BootMode::Bios), "Boot/BCD");
    }

    #[test]
    fn case_does_not_matter_but_a_missing_manager_does() {
        let upper = vec!["efi/BOOTMGFW.EFI".to_string()];
        let copies = plan(BootMode::Uefi, &upper).unwrap();
        assert_eq!(copies.last().unwrap().to, "EFI/Boot/bootx64.efi");
        let no_efi = vec!["PCAT/bootmgr".to_string()];
        assert_eq!(
            plan(BootMode::Uefi, &no_efi),
            Err(MissingBootManager("EFI\\bootmgfw.efi"))
        );
        let no_pcat = vec!["EFI/bootmgfw.efi".to_string()];
        assert_eq!(
            plan(BootMode::Bios, &no_pcat),
            Err(MissingBootManager("PCAT\\bootmgr"))
        );
        assert!(plan(BootMode::Bios, &[]).is_err());
    }
}
