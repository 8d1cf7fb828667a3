//! Names recast derives for a machine.

/// The longest computer name Windows takes (its NetBIOS name).
pub const MAX_COMPUTER_NAME: usize = 15;

/// A NetBIOS-safe computer name from the endpoint name: upper case, at most 15 characters.
pub fn hostname(endpoint: &str) -> String {
    endpoint
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(MAX_COMPUTER_NAME)
        .collect::<String>()
        .trim_end_matches('-')
        .to_ascii_uppercase()
}

/// The computer name Windows gets for an Endpoint: its `spec.hostname` (upper case) when set,
/// else [`hostname`] of its name. The one rule every user of the name goes through (unattend,
/// the imaging task, WDS prestaging, admission).
pub fn computer_name(endpoint: &str, spec_hostname: Option<&str>) -> String {
    match spec_hostname {
        Some(h) => h.to_ascii_uppercase(),
        None => hostname(endpoint),
    }
}

/// Why Windows would refuse `name` as a computer name, and what to do (None: it takes it).
/// The rules of Windows Setup's ComputerName: 1 to 15 characters, letters, digits and '-', not
/// only digits. A set spec.hostname never gets here (the CRD's rule refuses it first), so the
/// remedy is always to set one.
pub fn computer_name_problem(name: &str) -> Option<String> {
    computer_name_fault(name).map(|fault| {
        format!("{fault}; set spec.hostname (at most {MAX_COMPUTER_NAME} letters, digits and '-')")
    })
}

fn computer_name_fault(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("the computer name is empty".into());
    }
    if name.len() > MAX_COMPUTER_NAME {
        return Some(format!(
            "the computer name {name} is longer than {MAX_COMPUTER_NAME} characters"
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
    {
        return Some(format!(
            "the computer name {name} holds {c:?}: only letters, digits and '-' are allowed"
        ));
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Some(format!("the computer name {name} starts or ends with '-'"));
    }
    if name.chars().all(|c| c.is_ascii_digit()) {
        return Some(format!(
            "the computer name {name} is only digits, which Windows refuses"
        ));
    }
    None
}

/// The Endpoints (`namespace/name`, sorted) in the candidate's namespace whose computer name
/// equals the candidate's: two machines of one site must not share a name (the second one's
/// domain join would take over the first one's computer account). The candidate itself (same
/// namespace and name) is never a conflict; names compare without regard to case, as Windows
/// compares them.
pub fn computer_name_conflicts<'a>(
    candidate: (&str, &str, &str),
    others: impl IntoIterator<Item = (&'a str, &'a str, String)>,
) -> Vec<String> {
    let (namespace, name, computer) = candidate;
    let mut out: Vec<String> = others
        .into_iter()
        .filter(|(ns, n, c)| *ns == namespace && *n != name && c.eq_ignore_ascii_case(computer))
        .map(|(ns, n, _)| format!("{ns}/{n}"))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// What a person reads when an Endpoint's computer name is refused.
pub fn computer_name_refusal(computer: &str, conflicts: &[String]) -> String {
    format!(
        "computer name {computer} is already {}'s: two machines of one site cannot share a name (a domain join would take over the other's computer account); set spec.hostname on one of them (at most {MAX_COMPUTER_NAME} characters)",
        conflicts.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_computer_name_is_the_spec_hostname_or_the_name_cut_to_15() {
        assert_eq!(computer_name("kiosk-01", None), "KIOSK-01");
        assert_eq!(computer_name("kiosk-01", Some("till-7")), "TILL-7");
        assert_eq!(
            computer_name("a-very-long-endpoint-name", None),
            "A-VERY-LONG-END"
        );
        assert_eq!(computer_name("store-0042-till-", None), "STORE-0042-TILL");
        assert_eq!(computer_name("kiosk.lobby", None), "KIOSKLOBBY");
    }

    #[test]
    fn windows_refuses_what_setup_would() {
        for ok in ["KIOSK-01", "A", "A-VERY-LONG-END", "0042A"] {
            assert_eq!(computer_name_problem(ok), None, "{ok}");
        }
        for (bad, says) in [
            ("", "empty"),
            ("A-VERY-LONG-ENDP", "longer than 15"),
            ("KIOSK_01", "'_'"),
            ("-KIOSK", "starts or ends"),
            ("KIOSK-", "starts or ends"),
            ("0042", "only digits"),
        ] {
            let got = computer_name_problem(bad).unwrap_or_default();
            assert!(got.contains(says), "{bad:?}: {got}");
            assert!(got.contains("set spec.hostname"), "{bad:?}: {got}");
        }
    }

    #[test]
    fn conflicts_are_per_namespace_case_blind_and_never_the_candidate() {
        let others = vec![
            (
                "site-a",
                "a-very-long-endpoint-name",
                "A-VERY-LONG-END".to_string(),
            ),
            ("site-a", "kiosk-01", "KIOSK-01".to_string()),
            (
                "site-b",
                "a-very-long-endpoint-other",
                "A-VERY-LONG-END".to_string(),
            ),
        ];
        assert_eq!(
            computer_name_conflicts(
                ("site-a", "a-very-long-endpoint-other", "a-very-long-end"),
                others.clone()
            ),
            vec!["site-a/a-very-long-endpoint-name".to_string()]
        );
        // Re-applying an Endpoint conflicts with nothing; another site's same name neither.
        assert!(
            computer_name_conflicts(("site-a", "kiosk-01", "KIOSK-01"), others.clone()).is_empty()
        );
        assert!(computer_name_conflicts(("site-c", "x", "A-VERY-LONG-END"), others).is_empty());
        let msg = computer_name_refusal("KIOSK-01", &["site-a/kiosk-01".into()]);
        assert!(
            msg.contains("site-a/kiosk-01") && msg.contains("spec.hostname"),
            "{msg}"
        );
    }
}
