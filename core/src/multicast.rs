//! Multicast imaging with udpcast (`udp-sender` on the boot service, `udp-receiver` in the
//! imaging environment): the command lines both sides run, what the sender's progress lines
//! say, and when a receiving machine gives the stream up for its own HTTP download.
//!
//! Why udpcast: it streams to stdout in order, so the stream feeds `wimlib-imagex apply -`
//! (a pipable WIM) while the sha256 is computed over the same bytes; uftp writes files into a
//! directory and repairs blocks out of order, so it cannot feed a pipe. Both are in Debian.
//!
//! What udpcast does that recast relies on (udp-sender(1), udp-receiver(1), seen here):
//! - `--min-receivers N --max-wait S`: the sender starts once N receivers joined, or S seconds
//!   after the first one joined, whichever is first. A receiver that joins after the start is
//!   not served: its `--start-timeout` runs out and it falls back to HTTP.
//! - `--start-timeout S` (receiver): gives up when no session started within S seconds;
//!   `--receive-timeout S`: gives up when no data came for S seconds once it had started.
//! - Sync mode (the default): a receiver that stops answering holds the others back until the
//!   sender drops it after `--retries-until-drop` unanswered retransmit rounds, then the others
//!   go on; a slow live receiver paces everyone (the rate cap bounds that pace from above).
//! - `udp-sender` exits 0 even when nobody received; `udp-receiver` prints "Transfer
//!   complete." even when it exits 1. Neither is trusted: a receiver's bytes are checked by
//!   their sha256 and count, the session's figures come from the sender's progress lines.

use std::net::Ipv4Addr;

use crate::imaging::{TaskBlob, TaskMulticast};

/// The boot service's multicast settings (its flags): where sessions go and how fast.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// The interface the sessions leave by (udp-sender `--interface`); the one facing the
    /// machines.
    pub interface: String,
    /// The first session's data group; session `n` uses the `n`-th address after it.
    pub group_base: Ipv4Addr,
    /// The first session's UDP port pair (udpcast uses `port` and `port + 1`); session `n`
    /// uses `port_base + 2n`.
    pub port_base: u16,
    /// Sessions at once (the size of the group and port ranges).
    pub max_sessions: u16,
    /// Multicast TTL: 1 keeps sessions on the machines' own subnet.
    pub ttl: u8,
    /// Rate cap per session, in Mbit/s (udp-sender `--max-bitrate`): a site's network is
    /// shared.
    pub max_mbps: u32,
    /// Unanswered retransmit rounds before the sender drops a receiver that stopped answering
    /// (the others wait that long for it, about 0.6 s a round).
    pub retries_until_drop: u32,
}

/// Default first data group: in 239.0.0.0/8, the organisation-local scope (RFC 2365).
pub const DEFAULT_GROUP_BASE: Ipv4Addr = Ipv4Addr::new(239, 255, 77, 0);
pub const DEFAULT_PORT_BASE: u16 = 9000;
pub const DEFAULT_MAX_SESSIONS: u16 = 8;
pub const DEFAULT_TTL: u8 = 1;
pub const DEFAULT_MAX_MBPS: u32 = 500;
/// About 12 s of waiting for a receiver that went quiet (udpcast's own default waits ≈ 190 s).
pub const DEFAULT_RETRIES_UNTIL_DROP: u32 = 20;
/// How long a batch's session waits for more receivers after the first joined, when the wave
/// does not say (ReimageWave `spec.multicast.maxWait`).
pub const DEFAULT_MAX_WAIT_SECONDS: u32 = 120;
/// Seconds a receiver waits beyond the session's own wait before it gives up and downloads
/// over HTTP (its clock starts when it joins, after the machine's checks).
pub const START_TIMEOUT_MARGIN_SECONDS: u32 = 60;
/// Seconds the sender waits beyond the session's own wait for a first receiver: its clock
/// starts at the first task, and each machine makes its pre-write checks (a driver set
/// download among them) before it joins.
pub const SENDER_START_MARGIN_SECONDS: u32 = 600;
/// The longest a session waits for more receivers after the first one joined (a wave's
/// `maxWait` and `--multicast-automatic-wait` are held to it): nothing waits for hours.
pub const MAX_WAIT_SECONDS: u32 = 1800;
/// The most receivers a session waits for (udpcast reads the count into a C int).
pub const MAX_RECEIVERS: u32 = 100_000;
/// Seconds without data after the start before a receiver gives the stream up.
pub const RECEIVE_TIMEOUT_SECONDS: u32 = 30;

/// Why a settings flag cannot be used, said to the person starting the boot service.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    #[error(
        "--multicast-group {0} is not an IPv4 multicast address (224.0.0.0/4); use one in 239.0.0.0/8, the organisation-local scope"
    )]
    NotMulticast(Ipv4Addr),
    #[error(
        "--multicast-group {base} with --multicast-sessions {sessions} runs past the end of 239.255.255.255 / the multicast range"
    )]
    GroupRange { base: Ipv4Addr, sessions: u16 },
    #[error(
        "--multicast-ports {base} with --multicast-sessions {sessions} needs ports up to {last}, past 65535"
    )]
    PortRange { base: u16, sessions: u16, last: u32 },
    #[error("--multicast-sessions must be at least 1")]
    NoSessions,
    #[error("--multicast-ttl must be 1 to 32 (1 keeps sessions on the machines' subnet)")]
    Ttl,
    #[error(
        "--multicast-max-mbps must be 1 to 100000: a session without a cap can take a site's whole link"
    )]
    Rate,
    #[error("--multicast-ports must be 1024 or above (below is for system services)")]
    PrivilegedPort,
}

impl Settings {
    /// Checks the flags together; the first problem found is the error.
    pub fn check(&self) -> Result<(), SettingsError> {
        if !self.group_base.is_multicast() {
            return Err(SettingsError::NotMulticast(self.group_base));
        }
        if self.max_sessions == 0 {
            return Err(SettingsError::NoSessions);
        }
        let last_group = u32::from(self.group_base) as u64 + self.max_sessions as u64 - 1;
        if last_group > u32::from(Ipv4Addr::new(239, 255, 255, 255)) as u64 {
            return Err(SettingsError::GroupRange {
                base: self.group_base,
                sessions: self.max_sessions,
            });
        }
        if self.port_base < 1024 {
            return Err(SettingsError::PrivilegedPort);
        }
        let last_port = self.port_base as u32 + 2 * self.max_sessions as u32 - 1;
        if last_port > u16::MAX as u32 {
            return Err(SettingsError::PortRange {
                base: self.port_base,
                sessions: self.max_sessions,
                last: last_port,
            });
        }
        if !(1..=32).contains(&self.ttl) {
            return Err(SettingsError::Ttl);
        }
        if !(1..=100_000).contains(&self.max_mbps) {
            return Err(SettingsError::Rate);
        }
        Ok(())
    }

    /// Session slot `n`'s group and port; None past the configured range.
    pub fn slot(&self, n: u16) -> Option<(Ipv4Addr, u16)> {
        (n < self.max_sessions).then(|| {
            (
                Ipv4Addr::from(u32::from(self.group_base) + n as u32),
                self.port_base + 2 * n,
            )
        })
    }
}

/// One session as the boot service starts it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionPlan {
    pub group: Ipv4Addr,
    pub port: u16,
    /// Start as soon as this many receivers joined.
    pub min_receivers: u32,
    /// ... or this long after the first one joined.
    pub max_wait_seconds: u32,
    /// The pipable WIM sent.
    pub file: String,
}

/// The session's `udp-sender` arguments. `--nopointopoint`: with one receiver udpcast would
/// otherwise switch to unicast to it, and a second machine that joins late could not.
pub fn sender_args(s: &Settings, p: &SessionPlan) -> Vec<String> {
    let mut args = vec![
        "--nokbd".to_string(),
        "--file".into(),
        p.file.clone(),
        "--interface".into(),
        s.interface.clone(),
        "--portbase".into(),
        p.port.to_string(),
        "--mcast-data-address".into(),
        p.group.to_string(),
        "--ttl".into(),
        s.ttl.to_string(),
        "--max-bitrate".into(),
        format!("{}m", s.max_mbps),
        "--min-receivers".into(),
        p.min_receivers.clamp(1, MAX_RECEIVERS).to_string(),
        // 0 would mean "no limit" to udpcast.
        "--max-wait".into(),
        p.max_wait_seconds.clamp(1, MAX_WAIT_SECONDS).to_string(),
        // The sender gives up when nobody joined in time (its clock starts now, at the
        // first task; the machines join after their pre-write checks).
        "--start-timeout".into(),
        (p.max_wait_seconds.clamp(1, MAX_WAIT_SECONDS) + SENDER_START_MARGIN_SECONDS).to_string(),
        "--retries-until-drop".into(),
        s.retries_until_drop.to_string(),
        "--nopointopoint".into(),
    ];
    args.shrink_to_fit();
    args
}

/// What the pipable form of a verified image is, for a task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stream {
    pub sha256: String,
    pub size: u64,
    /// The image's expanded size.
    pub image_bytes: u64,
}

/// What the task tells a machine about its batch's session.
pub fn join(p: &SessionPlan, stream: &Stream, boot_manager: Option<TaskBlob>) -> TaskMulticast {
    TaskMulticast {
        group: p.group.to_string(),
        port: p.port,
        start_timeout_seconds: p.max_wait_seconds.clamp(1, MAX_WAIT_SECONDS)
            + START_TIMEOUT_MARGIN_SECONDS,
        receive_timeout_seconds: RECEIVE_TIMEOUT_SECONDS,
        sha256: stream.sha256.clone(),
        size: stream.size,
        image_bytes: stream.image_bytes,
        boot_manager,
    }
}

/// The machine's `udp-receiver` arguments (the stream goes to its stdout).
pub fn receiver_args(j: &TaskMulticast, interface: Option<&str>) -> Vec<String> {
    let mut args = vec![
        "--nokbd".to_string(),
        "--portbase".into(),
        j.port.to_string(),
        "--start-timeout".into(),
        j.start_timeout_seconds.to_string(),
        "--receive-timeout".into(),
        j.receive_timeout_seconds.to_string(),
    ];
    if let Some(i) = interface {
        args.extend(["--interface".to_string(), i.to_string()]);
    }
    args
}

/// Why a task's multicast join is not used (the machine downloads over HTTP instead).
pub fn join_problem(j: &TaskMulticast) -> Option<String> {
    let group: Option<Ipv4Addr> = j.group.parse().ok();
    if !group.is_some_and(|g| g.is_multicast()) {
        return Some(format!("{:?} is not a multicast group", j.group));
    }
    if j.port < 1024 || j.port == u16::MAX {
        return Some(format!("port {} is not a session port", j.port));
    }
    if j.sha256.len() != 64 || !j.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Some("the stream's sha256 is not 64 hex digits".into());
    }
    if j.size == 0 || j.image_bytes == 0 {
        return Some("the stream or its image is empty".into());
    }
    if let Some(b) = &j.boot_manager
        && (b.sha256.len() != 64 || !b.sha256.bytes().all(|c| c.is_ascii_hexdigit()) || b.size == 0)
    {
        return Some("the boot manager's sha256 or size is not usable".into());
    }
    if j.start_timeout_seconds == 0 || j.receive_timeout_seconds == 0 {
        return Some("a timeout of 0 would wait forever".into());
    }
    None
}

/// One line of `udp-sender`'s output (stdout and stderr, `\r`-separated progress included).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SenderLine {
    /// `New connection from 10.77.0.2  (#0) 00000009`
    Joined {
        receiver: u32,
        address: String,
    },
    /// `Starting transfer: 00000009`
    Started,
    /// `bytes= 12 230 400  re-xmits=0000012 (  0.1%) slice=0112 -   0`
    Progress {
        bytes: u64,
        retransmits: u64,
    },
    /// `Dropping client #3 because of timeout`
    Dropped {
        receiver: u32,
    },
    /// `Disconnecting #0 (10.77.0.2)`
    Disconnected {
        receiver: u32,
    },
    /// `Transfer complete.`
    Complete,
    Other,
}

/// Reads one line of udp-sender's output.
pub fn parse_sender_line(line: &str) -> SenderLine {
    // udp-sender rings the terminal bell after "Transfer complete." (`\a`).
    let line = line.trim_matches(|c: char| c.is_whitespace() || c.is_control());
    let number_after_hash = |s: &str| -> Option<u32> {
        let rest = &s[s.find('#')? + 1..];
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    };
    if let Some(rest) = line.strip_prefix("New connection from ") {
        let address = rest
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string();
        if let Some(receiver) = number_after_hash(rest) {
            return SenderLine::Joined { receiver, address };
        }
    }
    if line.starts_with("Starting transfer") {
        return SenderLine::Started;
    }
    if line == "Transfer complete." {
        return SenderLine::Complete;
    }
    if line.starts_with("Dropping client")
        && let Some(receiver) = number_after_hash(line)
    {
        return SenderLine::Dropped { receiver };
    }
    if let Some(rest) = line.strip_prefix("Disconnecting")
        && let Some(receiver) = number_after_hash(rest)
    {
        return SenderLine::Disconnected { receiver };
    }
    if let Some(rest) = line.strip_prefix("bytes=") {
        let (figures, tail) = rest.split_once("re-xmits=").unwrap_or((rest, ""));
        // Above 10^9 bytes udpcast counts in KiB ("1 074 218K"), above 10^12 in MiB ("M").
        let figures = figures.trim();
        let unit: u64 = match figures.chars().last() {
            Some('K') => 1 << 10,
            Some('M') => 1 << 20,
            _ => 1,
        };
        let digits: String = figures.chars().filter(char::is_ascii_digit).collect();
        let retransmits: String = tail.chars().take_while(char::is_ascii_digit).collect();
        if let Ok(count) = digits.parse::<u64>() {
            return SenderLine::Progress {
                bytes: count.saturating_mul(unit),
                retransmits: retransmits.parse().unwrap_or(0),
            };
        }
    }
    SenderLine::Other
}

/// Where a session is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum SessionPhase {
    /// Waiting for receivers.
    Waiting,
    Sending,
    /// The sender said the transfer is complete.
    Complete,
    /// The sender ended without a complete transfer (nobody joined, or it failed).
    Ended,
}

/// A session's figures, from the sender's own lines (what `recastctl wave status` and the
/// metrics show; the byte count on the wire is the interface's, not this).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionFigures {
    pub phase: SessionPhase,
    /// Receivers that joined so far.
    pub joined: u32,
    /// Receivers the sender dropped (they fall back to HTTP).
    pub dropped: u32,
    /// Bytes of the file sent so far.
    pub bytes: u64,
    pub retransmits: u64,
}

impl Default for SessionFigures {
    fn default() -> Self {
        SessionFigures {
            phase: SessionPhase::Waiting,
            joined: 0,
            dropped: 0,
            bytes: 0,
            retransmits: 0,
        }
    }
}

impl SessionFigures {
    /// The figures after one more line.
    pub fn after(mut self, line: &SenderLine) -> Self {
        match line {
            SenderLine::Joined { .. } => self.joined += 1,
            SenderLine::Started => self.phase = SessionPhase::Sending,
            SenderLine::Progress { bytes, retransmits } => {
                self.bytes = self.bytes.max(*bytes);
                self.retransmits = *retransmits;
            }
            SenderLine::Dropped { .. } => self.dropped += 1,
            // udp-sender says "Transfer complete." even when it dropped every receiver.
            SenderLine::Complete => {
                self.phase = if self.joined > self.dropped {
                    SessionPhase::Complete
                } else {
                    SessionPhase::Ended
                }
            }
            SenderLine::Disconnected { .. } | SenderLine::Other => {}
        }
        self
    }

    /// The figures once the sender exited: complete only when it said so and sent every byte
    /// of the `size`-byte stream; otherwise the session ended.
    pub fn exited(mut self, size: u64) -> Self {
        if self.phase != SessionPhase::Complete || self.bytes < size {
            self.phase = SessionPhase::Ended;
        }
        self
    }
}

/// What the boot service does for one machine's task, given its batch's session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JoinDecision {
    /// The batch's session is waiting for receivers: join it.
    Join,
    /// No session for the batch yet: start one in this slot and join it.
    Start { slot: u16 },
    /// Download over HTTP, for this reason (said in the boot service's log).
    Download(String),
}

/// The decision for one task: `session` is the batch's session's phase if one was started,
/// `free_slot` the first slot no live session holds.
///
/// `renewable`: a session that has run may be replaced by a new one for the same key
/// (automatic attempts of an image arrive over hours; a wave batch runs once).
pub fn decide_join(
    session: Option<SessionPhase>,
    free_slot: Option<u16>,
    renewable: bool,
) -> JoinDecision {
    let session = match session {
        Some(SessionPhase::Complete | SessionPhase::Ended) if renewable => None,
        s => s,
    };
    match (session, free_slot) {
        (Some(SessionPhase::Waiting), _) => JoinDecision::Join,
        (Some(SessionPhase::Sending), _) => JoinDecision::Download(
            "the batch's multicast session is already sending (this machine came late)".into(),
        ),
        (Some(SessionPhase::Complete | SessionPhase::Ended), _) => JoinDecision::Download(
            "the batch's multicast session has already run (a retry, or a late machine)".into(),
        ),
        (None, Some(slot)) => JoinDecision::Start { slot },
        (None, None) => JoinDecision::Download(
            "every multicast session slot is in use (--multicast-sessions)".into(),
        ),
    }
}

/// How a machine's stream ended, as its imaging environment saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamEnd {
    /// The receiver gave up before any byte (no session started in time).
    NoSession,
    /// Bytes came but the stream broke off (the receiver was dropped or timed out).
    BrokeOff {
        received: u64,
    },
    /// Every byte came but the apply failed.
    ApplyFailed {
        message: String,
    },
    /// Every byte came; the sha256 was not the task's.
    WrongBytes {
        received: u64,
        sha256: String,
    },
    Complete,
}

/// What the imaging environment does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AfterStream {
    /// The image is on the disk: go on.
    Done,
    /// Download the image over HTTP and apply it (the Windows partition is made again);
    /// the reason is said on the machine's screen and in its progress.
    FallBack(String),
    /// End the try: the reason is the failure.
    Fail(String),
}

/// The decision after a stream: anything the network did falls back to HTTP; bytes that are
/// not the image's end the try (the same as a download whose sha256 does not match), as does
/// an apply that failed on bytes that were the image's... which cannot be told apart until the
/// end, so an apply failure falls back too: HTTP then applies a verified file, and if that
/// fails as well the try fails there.
pub fn after_stream(end: &StreamEnd, expected_size: u64) -> AfterStream {
    match end {
        StreamEnd::Complete => AfterStream::Done,
        StreamEnd::NoSession => AfterStream::FallBack(
            "no multicast session started in time: downloading over HTTP".into(),
        ),
        StreamEnd::BrokeOff { received } => AfterStream::FallBack(format!(
            "the multicast stream broke off at byte {received} of {expected_size}: downloading over HTTP"
        )),
        StreamEnd::ApplyFailed { message } => AfterStream::FallBack(format!(
            "applying the multicast stream failed ({message}): downloading over HTTP"
        )),
        StreamEnd::WrongBytes { received, sha256 } => AfterStream::Fail(format!(
            "the multicast stream's sha256 is {sha256} ({received} bytes), not the image's: the session sent other bytes; nothing boots from this disk"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream() -> Stream {
        Stream {
            sha256: "a".repeat(64),
            size: 1234,
            image_bytes: 5000,
        }
    }

    fn settings() -> Settings {
        Settings {
            interface: "br0".into(),
            group_base: DEFAULT_GROUP_BASE,
            port_base: DEFAULT_PORT_BASE,
            max_sessions: DEFAULT_MAX_SESSIONS,
            ttl: DEFAULT_TTL,
            max_mbps: DEFAULT_MAX_MBPS,
            retries_until_drop: DEFAULT_RETRIES_UNTIL_DROP,
        }
    }

    #[test]
    fn default_settings_are_usable_and_every_bad_flag_says_which() {
        assert_eq!(settings().check(), Ok(()));
        let cases: Vec<(Settings, SettingsError)> = vec![
            (
                Settings {
                    group_base: Ipv4Addr::new(10, 0, 0, 1),
                    ..settings()
                },
                SettingsError::NotMulticast(Ipv4Addr::new(10, 0, 0, 1)),
            ),
            (
                Settings {
                    max_sessions: 0,
                    ..settings()
                },
                SettingsError::NoSessions,
            ),
            (
                Settings {
                    group_base: Ipv4Addr::new(239, 255, 255, 250),
                    max_sessions: 8,
                    ..settings()
                },
                SettingsError::GroupRange {
                    base: Ipv4Addr::new(239, 255, 255, 250),
                    sessions: 8,
                },
            ),
            (
                Settings {
                    port_base: 65530,
                    ..settings()
                },
                SettingsError::PortRange {
                    base: 65530,
                    sessions: 8,
                    last: 65545,
                },
            ),
            (
                Settings {
                    port_base: 80,
                    ..settings()
                },
                SettingsError::PrivilegedPort,
            ),
            (
                Settings {
                    ttl: 0,
                    ..settings()
                },
                SettingsError::Ttl,
            ),
            (
                Settings {
                    ttl: 33,
                    ..settings()
                },
                SettingsError::Ttl,
            ),
            (
                Settings {
                    max_mbps: 0,
                    ..settings()
                },
                SettingsError::Rate,
            ),
        ];
        for (s, want) in cases {
            assert_eq!(s.check(), Err(want.clone()), "{s:?}");
            assert!(want.to_string().starts_with("--multicast-"), "{want}");
        }
        // The last slot fits exactly.
        let s = Settings {
            port_base: 65535 - 15,
            ..settings()
        };
        assert_eq!(s.check(), Ok(()));
    }

    #[test]
    fn slots_step_groups_by_one_and_ports_by_two() {
        let s = settings();
        assert_eq!(s.slot(0), Some((Ipv4Addr::new(239, 255, 77, 0), 9000)));
        assert_eq!(s.slot(7), Some((Ipv4Addr::new(239, 255, 77, 7), 9014)));
        assert_eq!(s.slot(8), None);
    }

    #[test]
    fn sender_and_receiver_agree_on_the_session() {
        let s = settings();
        let plan = SessionPlan {
            group: Ipv4Addr::new(239, 255, 77, 3),
            port: 9006,
            min_receivers: 0,
            max_wait_seconds: 90,
            file: "/var/lib/recast/images/abc.pipable.wim".into(),
        };
        let a = sender_args(&s, &plan);
        let after = |flag: &str| a[a.iter().position(|x| x == flag).unwrap() + 1].clone();
        assert_eq!(after("--portbase"), "9006");
        assert_eq!(after("--mcast-data-address"), "239.255.77.3");
        assert_eq!(after("--max-bitrate"), "500m");
        assert_eq!(after("--ttl"), "1");
        assert_eq!(after("--interface"), "br0");
        // At least one receiver, whatever the wave said.
        assert_eq!(after("--min-receivers"), "1");
        assert_eq!(after("--max-wait"), "90");
        assert_eq!(after("--start-timeout"), "690");
        // udpcast reads counts into a C int and takes 0 s as "no limit": both are held.
        let huge = SessionPlan {
            min_receivers: u32::MAX,
            max_wait_seconds: u32::MAX,
            ..plan.clone()
        };
        let a2 = sender_args(&s, &huge);
        let after2 = |flag: &str| a2[a2.iter().position(|x| x == flag).unwrap() + 1].clone();
        assert_eq!(after2("--min-receivers"), "100000");
        assert_eq!(after2("--max-wait"), "1800");
        assert_eq!(after2("--start-timeout"), "2400");
        assert_eq!(join(&huge, &stream(), None).start_timeout_seconds, 1860);
        let zero = SessionPlan {
            max_wait_seconds: 0,
            ..plan.clone()
        };
        let a3 = sender_args(&s, &zero);
        assert_eq!(
            a3[a3.iter().position(|x| x == "--max-wait").unwrap() + 1],
            "1"
        );
        assert_eq!(after("--retries-until-drop"), "20");
        assert!(a.contains(&"--nopointopoint".to_string()));
        assert!(a.contains(&"--nokbd".to_string()));

        let j = join(&plan, &stream(), None);
        assert_eq!(join_problem(&j), None);
        assert_eq!(j.start_timeout_seconds, 150);
        let r = receiver_args(&j, Some("eth0"));
        assert_eq!(
            r,
            [
                "--nokbd",
                "--portbase",
                "9006",
                "--start-timeout",
                "150",
                "--receive-timeout",
                "30",
                "--interface",
                "eth0"
            ]
        );
        assert!(!receiver_args(&j, None).contains(&"--interface".to_string()));
    }

    #[test]
    fn a_join_that_cannot_work_is_named() {
        let good = join(
            &SessionPlan {
                group: Ipv4Addr::new(239, 1, 1, 1),
                port: 9000,
                min_receivers: 2,
                max_wait_seconds: 10,
                file: String::new(),
            },
            &stream(),
            Some(TaskBlob {
                url: "http://boot/bootmgfw.efi".into(),
                sha256: "1".repeat(64),
                size: 1000,
            }),
        );
        assert_eq!(join_problem(&good), None);
        let bad = [
            TaskMulticast {
                group: "10.0.0.1".into(),
                ..good.clone()
            },
            TaskMulticast {
                group: "nonsense".into(),
                ..good.clone()
            },
            TaskMulticast {
                port: 80,
                ..good.clone()
            },
            TaskMulticast {
                sha256: "xyz".into(),
                ..good.clone()
            },
            TaskMulticast {
                size: 0,
                ..good.clone()
            },
            TaskMulticast {
                image_bytes: 0,
                ..good.clone()
            },
            TaskMulticast {
                boot_manager: Some(TaskBlob {
                    url: String::new(),
                    sha256: "short".into(),
                    size: 1,
                }),
                ..good.clone()
            },
            TaskMulticast {
                receive_timeout_seconds: 0,
                ..good.clone()
            },
            TaskMulticast {
                start_timeout_seconds: 0,
                ..good.clone()
            },
        ];
        for j in bad {
            assert!(join_problem(&j).is_some(), "{j:?}");
        }
    }

    #[test]
    fn sender_lines_as_udp_sender_20120424_prints_them() {
        let cases = [
            (
                "New connection from 10.77.0.2  (#0) 00000009",
                SenderLine::Joined {
                    receiver: 0,
                    address: "10.77.0.2".into(),
                },
            ),
            ("Starting transfer: 00000009", SenderLine::Started),
            (
                "bytes= 12 230 400  re-xmits=0000012 (  0.1%) slice=0112 -   0",
                SenderLine::Progress {
                    bytes: 12_230_400,
                    retransmits: 12,
                },
            ),
            (
                "bytes=   0  re-xmits=0000000",
                SenderLine::Progress {
                    bytes: 0,
                    retransmits: 0,
                },
            ),
            ("Transfer complete.", SenderLine::Complete),
            ("Transfer complete.\u{7}", SenderLine::Complete),
            (
                "Dropping client #3 because of timeout",
                SenderLine::Dropped { receiver: 3 },
            ),
            (
                "Disconnecting #0 (10.77.0.2)",
                SenderLine::Disconnected { receiver: 0 },
            ),
            ("Udp-sender 20120424", SenderLine::Other),
            ("Broadcasting control to 10.77.0.255", SenderLine::Other),
            ("bytes=", SenderLine::Other),
            ("New connection from", SenderLine::Other),
            ("", SenderLine::Other),
        ];
        for (line, want) in cases {
            assert_eq!(parse_sender_line(line), want, "{line:?}");
        }
    }

    #[test]
    fn figures_follow_a_session_from_wait_to_end() {
        let lines = [
            "Udp-sender 20120424",
            "New connection from 10.77.0.2  (#0) 00000009",
            "New connection from 10.77.0.3  (#1) 00000009",
            "Starting transfer: 00000009",
            "bytes= 1 000  re-xmits=0000000 (  0.0%)",
            "Dropping client #1 because of timeout",
            "bytes= 3 000  re-xmits=0000004 (  0.0%)",
        ];
        let f = lines
            .iter()
            .map(|l| parse_sender_line(l))
            .fold(SessionFigures::default(), |f, l| f.after(&l));
        assert_eq!(
            f,
            SessionFigures {
                phase: SessionPhase::Sending,
                joined: 2,
                dropped: 1,
                bytes: 3000,
                retransmits: 4
            }
        );
        assert_eq!(f.clone().exited(3000).phase, SessionPhase::Ended);
        let done = f.clone().after(&SenderLine::Complete).exited(3000);
        assert_eq!(done.phase, SessionPhase::Complete);
        // Fewer bytes than the stream: not complete, whatever the sender said.
        assert_eq!(
            f.clone().after(&SenderLine::Complete).exited(4000).phase,
            SessionPhase::Ended
        );
        // Every receiver dropped: udp-sender still says "Transfer complete.".
        let all_dropped = f
            .after(&SenderLine::Dropped { receiver: 0 })
            .after(&SenderLine::Complete);
        assert_eq!(all_dropped.phase, SessionPhase::Ended);
        // A session nobody joined ends, it does not complete.
        assert_eq!(
            SessionFigures::default().exited(0).phase,
            SessionPhase::Ended
        );
    }

    #[test]
    fn a_machine_joins_a_waiting_session_and_downloads_from_any_other() {
        for renewable in [false, true] {
            assert_eq!(
                decide_join(None, Some(2), renewable),
                JoinDecision::Start { slot: 2 }
            );
            assert_eq!(
                decide_join(Some(SessionPhase::Waiting), None, renewable),
                JoinDecision::Join
            );
            assert!(matches!(
                decide_join(Some(SessionPhase::Sending), Some(0), renewable),
                JoinDecision::Download(_)
            ));
            assert!(
                matches!(decide_join(None, None, renewable), JoinDecision::Download(m) if m.contains("--multicast-sessions"))
            );
        }
        // A batch's session runs once; an image's automatic one is started again.
        for phase in [SessionPhase::Complete, SessionPhase::Ended] {
            assert!(
                matches!(
                    decide_join(Some(phase), Some(0), false),
                    JoinDecision::Download(_)
                ),
                "{phase:?}"
            );
            assert_eq!(
                decide_join(Some(phase), Some(0), true),
                JoinDecision::Start { slot: 0 }
            );
        }
    }

    #[test]
    fn the_network_falls_back_to_http_and_wrong_bytes_end_the_try() {
        assert_eq!(after_stream(&StreamEnd::Complete, 10), AfterStream::Done);
        for end in [
            StreamEnd::NoSession,
            StreamEnd::BrokeOff { received: 4 },
            StreamEnd::ApplyFailed {
                message: "short read".into(),
            },
        ] {
            assert!(
                matches!(after_stream(&end, 10), AfterStream::FallBack(m) if m.ends_with("downloading over HTTP")),
                "{end:?}"
            );
        }
        assert!(matches!(
            after_stream(
                &StreamEnd::WrongBytes {
                    received: 10,
                    sha256: "ab".into()
                },
                10
            ),
            AfterStream::Fail(m) if m.contains("not the image's")
        ));
    }
}
