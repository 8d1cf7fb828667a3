//! recast-winbuild: `build.UBR` version numbers such as 26100.7623, as Windows reports them
//! (winver, the registry's CurrentBuild + UBR) and as the GoldenImage spec writes its minimum.
//! One type for the whole project: the core compares reports and minimums with it, the image
//! checks read it from WIM metadata. Its own crate so that both can depend on it without the
//! image checks pulling in the API types or the core pulling in the image checks.

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

    /// Whether this build satisfies a minimum: the same release (CurrentBuild) at the same or a
    /// later UBR, or a later release. 26200.7623 (25H2) satisfies 26100.7623 (24H2): they share
    /// the servicing branch and the January update gives both the same UBR.
    pub fn satisfies(self, minimum: Build) -> bool {
        self >= minimum
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

    #[test]
    fn parses_orders_and_satisfies() {
        let b: Build = "26100.7623".parse().unwrap();
        assert_eq!(
            b,
            Build {
                build: 26100,
                ubr: 7623
            }
        );
        assert_eq!(b.to_string(), "26100.7623");
        assert!("26100.7462".parse::<Build>().unwrap() < b);
        assert!("26200.7623".parse::<Build>().unwrap().satisfies(b));
        assert!(!"26100.7462".parse::<Build>().unwrap().satisfies(b));
        // Numeric, not lexical: 10000 > 9999.
        assert!("26100.10000".parse::<Build>().unwrap() > "26100.9999".parse::<Build>().unwrap());
    }

    #[test]
    fn rejects_malformed_reports() {
        for bad in [
            "",
            "26100",
            "26100.",
            ".7623",
            "26100.7623.1",
            "a.b",
            "26100.-1",
            "99999999999.1",
        ] {
            assert!(bad.parse::<Build>().is_err(), "{bad:?}");
        }
    }
}
