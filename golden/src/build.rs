//! `build.UBR` version numbers such as 26100.7623, as Windows reports them (winver, the
//! registry's CurrentBuild + UBR) and as the GoldenImage spec writes its minimum.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A Windows build and update build revision. Ordered by build, then UBR.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Build {
    pub build: u32,
    pub ubr: u32,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "{input:?} is not a build.UBR such as 26100.7623 (five-digit build, a dot, the update revision)"
)]
pub struct BuildParseError {
    pub input: String,
}

impl Build {
    pub const fn new(build: u32, ubr: u32) -> Build {
        Build { build, ubr }
    }

    /// Parses `26100.7623`. Also accepts the four-part `10.0.26100.7623` that PowerShell
    /// prints, since operators paste either.
    pub fn parse(input: &str) -> Result<Build, BuildParseError> {
        let err = || BuildParseError {
            input: input.chars().take(40).collect(),
        };
        let trimmed = input.trim();
        let rest = trimmed.strip_prefix("10.0.").unwrap_or(trimmed);
        let (b, u) = rest.split_once('.').ok_or_else(err)?;
        let digits = |s: &str, max: usize| {
            !s.is_empty() && s.len() <= max && s.bytes().all(|c| c.is_ascii_digit())
        };
        if !digits(b, 5) || !digits(u, 5) {
            return Err(err());
        }
        Ok(Build {
            build: b.parse().map_err(|_| err())?,
            ubr: u.parse().map_err(|_| err())?,
        })
    }
}

impl std::fmt::Display for Build {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.build, self.ubr)
    }
}

impl std::str::FromStr for Build {
    type Err = BuildParseError;
    fn from_str(s: &str) -> Result<Build, BuildParseError> {
        Build::parse(s)
    }
}

impl Serialize for Build {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The deep check's sandboxed child sends its evidence back as JSON.
impl<'de> Deserialize<'de> for Build {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Build, D::Error> {
        let s = String::deserialize(d)?;
        Build::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_orders() {
        assert_eq!(Build::parse("26100.7623"), Ok(Build::new(26100, 7623)));
        assert_eq!(
            Build::parse(" 10.0.26200.7840 "),
            Ok(Build::new(26200, 7840))
        );
        assert!(Build::new(26100, 7462) < Build::new(26100, 7623));
        assert!(Build::new(26100, 9999) < Build::new(26200, 1));
        assert_eq!(Build::new(26100, 7623).to_string(), "26100.7623");
    }

    #[test]
    fn refuses_nonsense() {
        for bad in [
            "",
            "26100",
            "26100.",
            ".7623",
            "26100.7623.1",
            "2610a.1",
            "26100.-1",
            "123456.1",
            "26100.123456",
            "26100.7623 x",
        ] {
            assert!(Build::parse(bad).is_err(), "{bad:?} parsed");
        }
        assert!(
            Build::parse("26100.x")
                .unwrap_err()
                .to_string()
                .contains("26100.7623")
        );
    }
}
