//! What a requested filename may name. Pure: the request's filename in, a path relative to the
//! boot root (or a refusal) out. Symlinks are checked later, against the real filesystem, by
//! [`super::source::FsSource`].
//!
//! Decisions (documented in docs/boot-tftp.md):
//! - `\` is a separator. Windows PXE clients and WDS-style configs ask for `boot\x64\wdsnbp.com`;
//!   serving the same tree to them and to Unix-style clients beats keeping two copies.
//! - A leading `/` (or `\`) is stripped: `/ipxe.efi` means `<root>/ipxe.efi`, as with tftpd-hpa
//!   run with `-s`. Many DHCP configs write boot files that way; the path still cannot leave the
//!   root.
//! - `..` anywhere is refused, even where it would stay inside the root (`a/../b`): no real
//!   client needs it, and refusing is simpler to reason about than resolving.
//! - `.` and empty components (`a//b`) are dropped.
//! - A Windows drive or UNC prefix (`C:`, `\\server`) is refused: it names another filesystem.
//! - Names are case-sensitive, like the filesystem under the root.

use std::path::PathBuf;

/// Longest path accepted, in bytes, after normalisation.
pub const MAX_PATH_LEN: usize = 255;

/// A path relative to the boot root, with no `..`, no root, no empty components.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct BootPath {
    components: Vec<String>,
}

impl BootPath {
    /// The components, e.g. `["boot", "x64", "wdsnbp.com"]`.
    pub fn components(&self) -> &[String] {
        &self.components
    }

    /// The path relative to the root, `/`-separated.
    pub fn as_slash_path(&self) -> String {
        self.components.join("/")
    }

    pub fn to_relative_path_buf(&self) -> PathBuf {
        self.components.iter().collect()
    }
}

impl std::fmt::Display for BootPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.as_slash_path())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path names no file (only separators or `.`)")]
    Empty,
    #[error("the path contains `..`; request a path inside the boot root")]
    ParentComponent,
    #[error("the path names a Windows drive or network share; request a path inside the boot root")]
    DriveOrShare,
    #[error("the path is longer than {MAX_PATH_LEN} bytes")]
    TooLong,
    #[error("the path contains control characters")]
    ControlCharacter,
}

/// Normalises a requested filename into a path under the boot root.
pub fn normalize(requested: &str) -> Result<BootPath, PathError> {
    if requested.chars().any(char::is_control) {
        return Err(PathError::ControlCharacter);
    }
    if requested.starts_with("\\\\") || requested.starts_with("//") {
        return Err(PathError::DriveOrShare);
    }
    let bytes = requested.as_bytes();
    if bytes.len() >= 2 && bytes[0].is_ascii_alphabetic() && bytes[1] == b':' {
        return Err(PathError::DriveOrShare);
    }
    let mut components = Vec::new();
    for part in requested.split(['/', '\\']) {
        match part {
            "" | "." => {}
            ".." => return Err(PathError::ParentComponent),
            other => components.push(other.to_string()),
        }
    }
    if components.is_empty() {
        return Err(PathError::Empty);
    }
    let len: usize = components.iter().map(|c| c.len() + 1).sum::<usize>() - 1;
    if len > MAX_PATH_LEN {
        return Err(PathError::TooLong);
    }
    Ok(BootPath { components })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> String {
        normalize(s)
            .unwrap_or_else(|e| panic!("{s:?}: {e}"))
            .as_slash_path()
    }

    #[test]
    fn plain_and_nested_paths() {
        assert_eq!(ok("ipxe.efi"), "ipxe.efi");
        assert_eq!(ok("boot/x64/wdsnbp.com"), "boot/x64/wdsnbp.com");
        assert_eq!(ok("a file with spaces.txt"), "a file with spaces.txt");
        assert_eq!(ok("...hidden"), "...hidden");
        assert_eq!(ok("a..b"), "a..b");
    }

    #[test]
    fn backslashes_are_separators() {
        assert_eq!(ok("boot\\x64\\wdsmgfw.efi"), "boot/x64/wdsmgfw.efi");
        assert_eq!(ok("\\boot\\x64\\wdsnbp.com"), "boot/x64/wdsnbp.com");
        assert_eq!(ok("boot\\x64/mixed"), "boot/x64/mixed");
    }

    #[test]
    fn leading_slash_is_relative_to_the_root() {
        assert_eq!(ok("/ipxe.efi"), "ipxe.efi");
        assert_eq!(ok("/./boot//x64/./f"), "boot/x64/f");
    }

    #[test]
    fn parent_components_are_refused_everywhere() {
        for s in [
            "..",
            "../etc/passwd",
            "/../etc/passwd",
            "a/../../etc/passwd",
            "a/../b",
            "..\\..\\windows\\win.ini",
            "boot\\..\\..\\x",
            "a/..",
        ] {
            assert_eq!(normalize(s), Err(PathError::ParentComponent), "{s:?}");
        }
    }

    #[test]
    fn drives_shares_and_empty_paths_are_refused() {
        for s in [
            "C:\\Windows\\win.ini",
            "c:/x",
            "\\\\server\\share\\f",
            "//server/share",
        ] {
            assert_eq!(normalize(s), Err(PathError::DriveOrShare), "{s:?}");
        }
        for s in ["", "/", "\\", ".", "./", "/./."] {
            assert_eq!(normalize(s), Err(PathError::Empty), "{s:?}");
        }
        assert_eq!(normalize("a\u{7}b"), Err(PathError::ControlCharacter));
        assert_eq!(normalize(&"a".repeat(256)), Err(PathError::TooLong));
        assert!(normalize(&"a".repeat(255)).is_ok());
    }

    mod fuzz {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(4000))]

            /// Whatever is accepted stays under the root: no parent, no root, no drive, no
            /// separator inside a component.
            #[test]
            fn accepted_paths_stay_under_the_root(s in "[a-zA-Z0-9./\\\\:]{0,40}") {
                if let Ok(p) = normalize(&s) {
                    for c in p.components() {
                        prop_assert!(c != ".." && c != "." && !c.is_empty());
                        prop_assert!(!c.contains('/') && !c.contains('\\'));
                    }
                    let rel = p.to_relative_path_buf();
                    prop_assert!(rel.is_relative());
                    prop_assert!(rel.components().all(|c| matches!(c, std::path::Component::Normal(_))));
                }
            }
        }
    }
}
