//! Windows build numbers as agents report them and images require them: "26100.7623" is
//! CurrentBuild 26100 with update build revision (UBR) 7623.

use std::fmt;
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Build {
    pub build: u32,
    pub ubr: u32,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0:?} is not a Windows build: expected CurrentBuild.UBR such as 26100.7623")]
pub struct BuildParseError(pub String);

impl FromStr for Build {
    type Err = BuildParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || BuildParseError(s.to_string());
        let (b, u) = s.split_once('.').ok_or_else(err)?;
        if b.is_empty() || u.is_empty() || !b.bytes().chain(u.bytes()).all(|c| c.is_ascii_digit()) {
            return Err(err());
        }
        Ok(Build {
            build: b.parse().map_err(|_| err())?,
            ubr: u.parse().map_err(|_| err())?,
        })
    }
}

impl fmt::Display for Build {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.build, self.ubr)
    }
}

impl Build {
    /// Whether this build satisfies a minimum: the same release (CurrentBuild) at the same or a
    /// later UBR, or a later release. 26200.7623 (25H2) satisfies 26100.7623 (24H2): they share
    /// the servicing branch and the January update gives both the same UBR.
    pub fn satisfies(self, minimum: Build) -> bool {
        self >= minimum
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_orders() {
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
    fn rejects_malformed() {
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
