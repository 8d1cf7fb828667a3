//! Identity before any write: the machine's SMBIOS UUID and serial number against what the
//! Endpoint says (`spec.identity.smbiosUuid`, `serialNumber`). A MAC address is easy to copy; a
//! machine that answers for a MAC but is not the Endpoint's machine must never be wiped.
//!
//! Linux shows the UUID in `/sys/class/dmi/id/product_uuid`, lower case, with the first three
//! fields read little-endian when the SMBIOS table is version 2.6 or later (the same string
//! Windows shows). Older tables store the UUID raw, so on those the byte-swapped form is
//! accepted too, and the verdict says which form matched.

use std::fmt;

/// What the Endpoint says about its machine (either may be unset).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Expected {
    pub smbios_uuid: Option<String>,
    pub serial_number: Option<String>,
}

/// What the machine says about itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Seen {
    /// `/sys/class/dmi/id/product_uuid`; None when the file is missing or empty (the kernel
    /// hides all-zero and all-FF UUIDs).
    pub product_uuid: Option<String>,
    /// `/sys/class/dmi/id/product_serial`.
    pub product_serial: Option<String>,
    /// The SMBIOS version (major, minor) from the entry point; None when unknown.
    pub smbios_version: Option<(u8, u8)>,
}

/// Which identity field disagrees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    SmbiosUuid,
    SerialNumber,
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Field::SmbiosUuid => "SMBIOS UUID",
            Field::SerialNumber => "serial number",
        })
    }
}

/// How the UUID matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UuidForm {
    /// As Linux (and Windows) print it.
    AsPrinted,
    /// With the first three fields byte-swapped: a pre-2.6 SMBIOS table stores them raw.
    Swapped,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mismatch {
    pub field: Field,
    pub expected: String,
    /// What the machine said; None when it said nothing usable.
    pub seen: Option<String>,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.seen {
            Some(s) => write!(
                f,
                "the Endpoint's {} is {:?}, this machine's is {s:?}",
                self.field, self.expected
            ),
            None => write!(
                f,
                "the Endpoint's {} is {:?}, this machine reports none",
                self.field, self.expected
            ),
        }
    }
}

/// The verdict on one machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every field the Endpoint sets matches; `uuid` says how the UUID matched, if it was set.
    Match { uuid: Option<UuidForm> },
    /// The Endpoint sets no identity field: nothing to check (the MAC is all recast has).
    NothingToCheck,
    /// Not this Endpoint's machine (or not provably): write nothing.
    Mismatch(Vec<Mismatch>),
}

/// Serial numbers firmware writes when the vendor wrote none: never a match for a set serial.
const PLACEHOLDER_SERIALS: &[&str] = &[
    "to be filled by o.e.m.",
    "default string",
    "system serial number",
    "not specified",
    "not applicable",
    "none",
    "0",
    "0123456789",
];

/// Compares the machine with the Endpoint. Pure; the shell reads sysfs.
pub fn check(expected: &Expected, seen: &Seen) -> Verdict {
    let mut mismatches = Vec::new();
    let mut uuid_form = None;
    if let Some(want) = &expected.smbios_uuid {
        match match_uuid(want, seen) {
            Some(form) => uuid_form = Some(form),
            None => mismatches.push(Mismatch {
                field: Field::SmbiosUuid,
                expected: want.clone(),
                seen: seen.product_uuid.clone(),
            }),
        }
    }
    if let Some(want) = &expected.serial_number {
        let got = seen.product_serial.as_deref().and_then(real_serial);
        if got.is_none_or(|g| !g.eq_ignore_ascii_case(want.trim())) {
            mismatches.push(Mismatch {
                field: Field::SerialNumber,
                expected: want.clone(),
                seen: seen.product_serial.clone(),
            });
        }
    }
    if !mismatches.is_empty() {
        Verdict::Mismatch(mismatches)
    } else if expected.smbios_uuid.is_none() && expected.serial_number.is_none() {
        Verdict::NothingToCheck
    } else {
        Verdict::Match { uuid: uuid_form }
    }
}

fn match_uuid(want: &str, seen: &Seen) -> Option<UuidForm> {
    let want = parse_uuid(want)?;
    let got = parse_uuid(seen.product_uuid.as_deref()?)?;
    if got == want {
        return Some(UuidForm::AsPrinted);
    }
    // Only a table older than 2.6 (or one whose version is unknown) can hold the raw form.
    let may_be_raw = seen.smbios_version.is_none_or(|v| v < (2, 6));
    (may_be_raw && swap_first_fields(got) == want).then_some(UuidForm::Swapped)
}

/// A trimmed serial, or None for an empty one or a placeholder.
fn real_serial(s: &str) -> Option<&str> {
    let t = s.trim();
    let placeholder = PLACEHOLDER_SERIALS
        .iter()
        .any(|p| t.eq_ignore_ascii_case(p));
    (!t.is_empty() && !placeholder).then_some(t)
}

/// The 16 bytes of a UUID written 8-4-4-4-12 (braces and case ignored); None when malformed.
pub fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let s = s.trim().trim_start_matches('{').trim_end_matches('}');
    let groups: Vec<&str> = s.split('-').collect();
    if groups.iter().map(|g| g.len()).collect::<Vec<_>>() != [8, 4, 4, 4, 12] {
        return None;
    }
    let hex: String = groups.concat();
    let mut out = [0u8; 16];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The same UUID with its first three fields (4, 2 and 2 bytes) byte-swapped.
fn swap_first_fields(mut u: [u8; 16]) -> [u8; 16] {
    u[0..4].reverse();
    u[4..6].reverse();
    u[6..8].reverse();
    u
}

#[cfg(test)]
mod tests {
    use super::*;

    const UUID: &str = "4c4c4544-0042-3510-8052-b4c04f384d01";
    const SWAPPED: &str = "44454c4c-4200-1035-8052-b4c04f384d01";

    fn seen(uuid: Option<&str>, serial: Option<&str>, version: Option<(u8, u8)>) -> Seen {
        Seen {
            product_uuid: uuid.map(str::to_string),
            product_serial: serial.map(str::to_string),
            smbios_version: version,
        }
    }

    fn expect(uuid: Option<&str>, serial: Option<&str>) -> Expected {
        Expected {
            smbios_uuid: uuid.map(str::to_string),
            serial_number: serial.map(str::to_string),
        }
    }

    #[test]
    fn the_same_machine_matches_in_any_case_and_with_braces() {
        let v = check(
            &expect(Some(&UUID.to_uppercase()), Some("7XK2M01")),
            &seen(
                Some(&format!("{{{UUID}}}")),
                Some(" 7xk2m01\n"),
                Some((3, 4)),
            ),
        );
        assert_eq!(
            v,
            Verdict::Match {
                uuid: Some(UuidForm::AsPrinted)
            }
        );
    }

    #[test]
    fn another_machine_is_a_mismatch_naming_each_field() {
        let v = check(
            &expect(Some(UUID), Some("7XK2M01")),
            &seen(
                Some("1b4e28ba-2fa1-11d2-883f-0016d3cca427"),
                Some("OTHER"),
                Some((3, 4)),
            ),
        );
        let Verdict::Mismatch(m) = v else {
            panic!("{v:?}")
        };
        assert_eq!(
            m.iter().map(|m| m.field).collect::<Vec<_>>(),
            [Field::SmbiosUuid, Field::SerialNumber]
        );
        assert!(m[0].to_string().contains("1b4e28ba"), "{}", m[0]);
    }

    #[test]
    fn the_swapped_form_counts_only_on_old_or_unknown_tables() {
        let want = expect(Some(UUID), None);
        assert_eq!(
            check(&want, &seen(Some(SWAPPED), None, Some((2, 5)))),
            Verdict::Match {
                uuid: Some(UuidForm::Swapped)
            }
        );
        assert_eq!(
            check(&want, &seen(Some(SWAPPED), None, None)),
            Verdict::Match {
                uuid: Some(UuidForm::Swapped)
            }
        );
        assert!(matches!(
            check(&want, &seen(Some(SWAPPED), None, Some((2, 6)))),
            Verdict::Mismatch(_)
        ));
    }

    #[test]
    fn a_machine_that_says_nothing_or_a_placeholder_never_matches() {
        for bad in [
            seen(None, None, Some((3, 0))),
            seen(
                Some("not-a-uuid"),
                Some("To Be Filled By O.E.M."),
                Some((3, 0)),
            ),
            seen(Some(""), Some("   "), Some((3, 0))),
            seen(Some(UUID), Some("Default string"), Some((3, 0))),
        ] {
            let v = check(&expect(Some(UUID), Some("7XK2M01")), &bad);
            assert!(matches!(v, Verdict::Mismatch(_)), "{bad:?}: {v:?}");
        }
    }

    #[test]
    fn only_the_fields_the_endpoint_sets_are_checked() {
        let machine = seen(Some(UUID), Some("whatever"), Some((3, 4)));
        assert_eq!(
            check(&Expected::default(), &machine),
            Verdict::NothingToCheck
        );
        assert_eq!(
            check(&expect(None, Some("WHATEVER")), &machine),
            Verdict::Match { uuid: None }
        );
    }

    #[test]
    fn malformed_uuids_do_not_parse() {
        for bad in [
            "",
            "4c4c4544",
            "4c4c4544-0042-3510-8052-b4c04f384d0",
            "zzzzzzzz-0042-3510-8052-b4c04f384d01",
        ] {
            assert_eq!(parse_uuid(bad), None, "{bad:?}");
        }
        assert!(parse_uuid(UUID).is_some());
    }
}
