//! Parsers for the text `reg.exe query` and `fsutil volume diskfree` print.
//!
//! `reg query KEY /v NAME` prints a blank line, the key path, then one line per value indented
//! by four spaces: `    NAME    TYPE    DATA`, fields separated by four spaces, lines ending in
//! CRLF. A missing key or value makes reg.exe exit with status 1 and print
//! "ERROR: The system was unable to find the specified registry key or value." on stderr, so
//! presence is read from the exit status, never from the (localised) message.

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ToolOutputError {
    #[error("reg.exe printed no value named {name:?}: is the agent reading the right key?")]
    MissingValue { name: String },
    #[error("reg.exe value {name:?} has type {found}, expected {expected}")]
    WrongType {
        name: String,
        found: String,
        expected: &'static str,
    },
    #[error("reg.exe value {name:?} has data {data:?}, which is not a {expected}")]
    BadData {
        name: String,
        data: String,
        expected: &'static str,
    },
    #[error(
        "fsutil volume diskfree printed {0:?} where it prints the free and total byte counts: run it by hand and compare"
    )]
    DiskFree(String),
}

/// One value line of reg.exe output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegValue {
    pub name: String,
    pub type_: String,
    pub data: String,
}

/// Every value line in reg.exe output (key lines and blank lines are skipped).
pub fn parse_reg_values(text: &str) -> Vec<RegValue> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim_end_matches('\r');
            let rest = line.strip_prefix("    ")?;
            let mut parts = rest.splitn(3, "    ");
            let name = parts.next()?.to_string();
            let type_ = parts.next()?.trim().to_string();
            if !type_.starts_with("REG_") {
                return None;
            }
            let data = parts.next().unwrap_or("").to_string();
            Some(RegValue { name, type_, data })
        })
        .collect()
}

fn find<'a>(values: &'a [RegValue], name: &str) -> Result<&'a RegValue, ToolOutputError> {
    values
        .iter()
        .find(|v| v.name.eq_ignore_ascii_case(name))
        .ok_or_else(|| ToolOutputError::MissingValue {
            name: name.to_string(),
        })
}

/// A REG_DWORD value ("0x1dc7").
pub fn reg_dword(text: &str, name: &str) -> Result<u32, ToolOutputError> {
    let values = parse_reg_values(text);
    let v = find(&values, name)?;
    if v.type_ != "REG_DWORD" {
        return Err(ToolOutputError::WrongType {
            name: name.to_string(),
            found: v.type_.clone(),
            expected: "REG_DWORD",
        });
    }
    let data = v.data.trim();
    dword_data(data).ok_or_else(|| ToolOutputError::BadData {
        name: name.to_string(),
        data: data.to_string(),
        expected: "hexadecimal REG_DWORD",
    })
}

/// A REG_DWORD's data as reg.exe prints it ("0x1dc7"); None for anything else.
pub fn dword_data(data: &str) -> Option<u32> {
    data.trim()
        .strip_prefix("0x")
        .filter(|h| !h.is_empty() && h.len() <= 8)
        .and_then(|h| u32::from_str_radix(h, 16).ok())
}

/// A REG_SZ value holding a number (CurrentBuild is a string: "26100").
pub fn reg_sz_number(text: &str, name: &str) -> Result<u32, ToolOutputError> {
    let data = reg_sz(text, name)?;
    data.parse().map_err(|_| ToolOutputError::BadData {
        name: name.to_string(),
        data,
        expected: "decimal number",
    })
}

/// A REG_SZ value's text (ImageState: "IMAGE_STATE_COMPLETE").
pub fn reg_sz(text: &str, name: &str) -> Result<String, ToolOutputError> {
    let values = parse_reg_values(text);
    let v = find(&values, name)?;
    if v.type_ != "REG_SZ" {
        return Err(ToolOutputError::WrongType {
            name: name.to_string(),
            found: v.type_.clone(),
            expected: "REG_SZ",
        });
    }
    Ok(v.data.trim().to_string())
}

/// `fsutil volume diskfree C:` → (free, total) bytes.
///
/// The labels are localised and the digit grouping follows the locale ("52,343,234,560",
/// "52.343.234.560", or none on older Windows 10), but the order is fixed: free bytes first,
/// total bytes second. So the parser takes the first two "label : number" lines by position and
/// keeps only the digits before any "(48.7 GB)" suffix.
pub fn parse_diskfree(text: &str) -> Result<(u64, u64), ToolOutputError> {
    let mut numbers = text.lines().filter_map(|line| {
        let (_, value) = line.split_once(':')?;
        let value = value.split('(').next().unwrap_or("");
        let digits: String = value.chars().filter(char::is_ascii_digit).collect();
        if digits.is_empty() || digits.len() > 20 {
            return Some(Err(line.trim().to_string()));
        }
        Some(digits.parse::<u64>().map_err(|_| line.trim().to_string()))
    });
    let mut next = || match numbers.next() {
        Some(Ok(n)) => Ok(n),
        Some(Err(line)) => Err(ToolOutputError::DiskFree(line)),
        None => Err(ToolOutputError::DiskFree(String::new())),
    };
    let free = next()?;
    let total = next()?;
    if free > total {
        return Err(ToolOutputError::DiskFree(format!(
            "free {free} larger than total {total}"
        )));
    }
    Ok((free, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reg_lines() {
        let text = "\r\nHKEY_LOCAL_MACHINE\\X\r\n    UBR    REG_DWORD    0x1dc7\r\n    ProductName    REG_SZ    Windows 10 Pro\r\n    (Default)    REG_SZ    \r\n\r\n";
        let v = parse_reg_values(text);
        assert_eq!(v.len(), 3);
        assert_eq!(v[1].data, "Windows 10 Pro");
        assert_eq!(reg_dword(text, "ubr").unwrap(), 7623);
        assert!(matches!(
            reg_dword(text, "ProductName"),
            Err(ToolOutputError::WrongType { .. })
        ));
        assert!(matches!(
            reg_dword(text, "CurrentBuild"),
            Err(ToolOutputError::MissingValue { .. })
        ));
        assert!(matches!(
            reg_sz_number(text, "ProductName"),
            Err(ToolOutputError::BadData { .. })
        ));
        for bad in ["0x", "0x123456789", "1dc7", "0xzz"] {
            let t = format!("    UBR    REG_DWORD    {bad}\r\n");
            assert!(
                matches!(reg_dword(&t, "UBR"), Err(ToolOutputError::BadData { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn diskfree_locales_and_garbage() {
        let de = "Gesamtanzahl freier Bytes      :  52.343.234.560 ( 48,7 GB)\r\nGesamtanzahl Bytes             : 255.380.000.768 (237,8 GB)\r\n";
        assert_eq!(
            parse_diskfree(de).unwrap(),
            (52_343_234_560, 255_380_000_768)
        );
        for bad in [
            "",
            "Error:  Access is denied.",
            "a : 5\r\nb : 4\r\n",
            "a : 1\r\n",
            "a : 123456789012345678901234\r\nb : 1\r\n",
        ] {
            assert!(parse_diskfree(bad).is_err(), "{bad:?}");
        }
    }
}
