//! Durations as users write them in specs: "90s", "15m", "1h30m", "7d".
//!
//! The grammar is `common::DURATION_PATTERN`; the CEL rules enforce it at admission, and this
//! parser is what the controllers use to turn it into seconds.

use std::time::Duration;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "{input:?} is not a duration: write a number followed by d, h, m or s, such as 90s, 15m or 1h30m"
)]
pub struct DurationError {
    pub input: String,
}

/// Parses "1h30m"-style durations. Rejects empty input, a missing unit, unknown units, and
/// values that overflow.
pub fn parse(input: &str) -> Result<Duration, DurationError> {
    let err = || DurationError {
        input: input.to_string(),
    };
    if input.is_empty() {
        return Err(err());
    }
    let mut total: u64 = 0;
    let mut number: Option<u64> = None;
    for c in input.chars() {
        if let Some(d) = c.to_digit(10) {
            let n = number.unwrap_or(0);
            number = Some(
                n.checked_mul(10)
                    .and_then(|n| n.checked_add(u64::from(d)))
                    .ok_or_else(err)?,
            );
            continue;
        }
        let unit = match c {
            'd' => 86_400,
            'h' => 3_600,
            'm' => 60,
            's' => 1,
            _ => return Err(err()),
        };
        let n = number.take().ok_or_else(err)?;
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(err)?;
    }
    if number.is_some() {
        return Err(err());
    }
    Ok(Duration::from_secs(total))
}

/// Formats seconds the way users write them ("1h30m", "45s", "0s").
pub fn format(d: Duration) -> String {
    let mut s = d.as_secs();
    if s == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, secs) in [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)] {
        if s >= secs {
            out.push_str(&format!("{}{unit}", s / secs));
            s %= secs;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_compound_durations() {
        assert_eq!(parse("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn rejects_what_the_cel_pattern_rejects() {
        for bad in [
            "",
            "10",
            "m",
            "1x",
            "1.5h",
            "-1m",
            "1h 30m",
            "99999999999999999999d",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn format_round_trips() {
        for s in ["1d2h3m4s", "45s", "2h", "0s"] {
            assert_eq!(format(parse(s).unwrap()), s);
        }
    }
}
