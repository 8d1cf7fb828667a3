//! wimlib-imagex's progress lines, read while it applies: it rewrites one line with `\r`, such
//! as `Extracting file data: 12 MiB of 100 MiB (12%) done`.

/// The percent of file data extracted in `line`, when it is wimlib's file-data line.
pub fn file_data_percent(line: &str) -> Option<u8> {
    let rest = line.trim().strip_prefix("Extracting file data:")?;
    let open = rest.rfind('(')?;
    let close = rest[open..].find("%)")? + open;
    rest[open + 1..close]
        .trim()
        .parse::<u8>()
        .ok()
        .filter(|p| *p <= 100)
}

/// Splits wimlib's output into lines at `\r` and `\n`, keeping an unfinished tail for the next
/// read.
pub fn split_lines(buffer: &mut String, chunk: &str) -> Vec<String> {
    buffer.push_str(chunk);
    let mut lines = Vec::new();
    while let Some(end) = buffer.find(['\r', '\n']) {
        let line: String = buffer.drain(..=end).collect();
        let line = line.trim_end_matches(['\r', '\n']).to_string();
        if !line.is_empty() {
            lines.push(line);
        }
    }
    lines
}

/// Maps a step's own percent into its slice of the whole run (`from..=to`).
pub fn overall(from: u8, to: u8, step_percent: u8) -> u8 {
    let span = u32::from(to.saturating_sub(from));
    (u32::from(from) + span * u32::from(step_percent.min(100)) / 100) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_data_lines_give_their_percent_and_others_none() {
        let cases = [
            (
                "Extracting file data: 12 MiB of 100 MiB (12%) done",
                Some(12),
            ),
            ("Extracting file data: 0 bytes of 3 KiB (0%) done", Some(0)),
            (
                "  Extracting file data: 4 GiB of 4 GiB (100%) done  ",
                Some(100),
            ),
            ("Creating files: 120 of 400 (30%) done", None),
            (
                "Applying image 1 (\"Windows\") from \"x.wim\" to NTFS volume \"/dev/vda3\":",
                None,
            ),
            ("Extracting file data: 1 of 2 (250%) done", None),
            ("Extracting file data: garbage", None),
            ("", None),
        ];
        for (line, want) in cases {
            assert_eq!(file_data_percent(line), want, "{line:?}");
        }
    }

    #[test]
    fn carriage_returns_split_lines_and_a_tail_waits() {
        let mut buf = String::new();
        let a = split_lines(
            &mut buf,
            "Extracting file data: 1 MiB of 4 MiB (25%) done\rExtra",
        );
        assert_eq!(a, ["Extracting file data: 1 MiB of 4 MiB (25%) done"]);
        assert_eq!(buf, "Extra");
        let b = split_lines(
            &mut buf,
            "cting file data: 4 MiB of 4 MiB (100%) done\n\r\n",
        );
        assert_eq!(b, ["Extracting file data: 4 MiB of 4 MiB (100%) done"]);
        assert!(buf.is_empty());
    }

    #[test]
    fn a_step_fills_its_slice_of_the_run() {
        assert_eq!(overall(50, 90, 0), 50);
        assert_eq!(overall(50, 90, 50), 70);
        assert_eq!(overall(50, 90, 100), 90);
        assert_eq!(overall(50, 90, 200), 90);
        assert_eq!(overall(90, 50, 50), 90);
    }
}
