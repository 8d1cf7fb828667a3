//! Names recast derives for a machine.

/// A NetBIOS-safe computer name from the endpoint name: upper case, at most 15 characters.
pub fn hostname(endpoint: &str) -> String {
    endpoint
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(15)
        .collect::<String>()
        .trim_end_matches('-')
        .to_ascii_uppercase()
}
