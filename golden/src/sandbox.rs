//! The deep check in a child process with resource limits.
//!
//! [`crate::deep::collect_evidence`] runs the `wim` crate (a WIM engine with hundreds of
//! `unsafe` blocks) on bytes a tenant chose. In a long-running operator a crash there would take
//! every controller down, and a WIM that makes it allocate without end or loop would starve them.
//! So the operator runs it in a child (`recast-operator deep-check`, see [`run_child`]) that:
//!
//! - gets an address-space limit (RLIMIT_AS), a CPU-time limit (RLIMIT_CPU), a per-file size
//!   limit for what it extracts (RLIMIT_FSIZE) and no core dumps (RLIMIT_CORE 0), set between
//!   fork and exec so they hold before the first byte is parsed;
//! - is killed at a wall-clock deadline (a child that sleeps or blocks burns no CPU), when the
//!   check is cancelled, and when the operator dies (PR_SET_PDEATHSIG);
//! - inherits no file descriptor beyond stdin (/dev/null), stdout (its reply) and stderr, an
//!   empty environment, and a private TMPDIR that the parent removes even when it kills it;
//! - reads the WIM by path (the wim library opens it read-only) and answers one JSON
//!   [`ChildReply`] on stdout.
//!
//! Whatever goes wrong in the child becomes a [`DeepError`]: [`DeepError::Killed`] with a
//! [`KillReason`] for limits and crashes, [`DeepError::Child`] for the errors the check itself
//! reports. The limits bound resources; they are not a jail against code execution inside the
//! child, which runs as the operator's user (docs/security/parsers.md says what remains).

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::deep::{DeepError, DeepFailureKind, DeepOptions, DeepPhase};
use crate::servicing::ServicingEvidence;

/// The environment variable of the test-only hook (see [`run_child`]). Only test harnesses set
/// it; the parent passes it to the child only when its own environment has it.
pub const TEST_HOOK_ENV: &str = "RECAST_TEST_DEEP_CHECK_HOOK";
/// Largest reply read from the child; real evidence is a few KiB.
const MAX_REPLY_BYTES: u64 = 16 << 20;
/// How much of the child's stderr a failure message quotes (its end: where the reason is).
const STDERR_TAIL: usize = 1024;
const POLL: Duration = Duration::from_millis(20);

/// The child's resource limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Address space (virtual memory) in bytes.
    pub memory_bytes: u64,
    /// CPU seconds.
    pub cpu_seconds: u64,
    /// Wall-clock time before the child is killed.
    pub wall: Duration,
    /// Largest file the child may write (each extracted manifest).
    pub file_bytes: u64,
}

impl Default for Limits {
    /// Generous for a genuine image: opening a full Windows WIM and extracting its
    /// `Windows\servicing\Packages` takes well under a GiB and a minute.
    fn default() -> Limits {
        Limits {
            memory_bytes: 4 << 30,
            cpu_seconds: 600,
            wall: Duration::from_secs(900),
            // The largest single file the deep check extracts is the SOFTWARE hive.
            file_bytes: crate::deployable::MAX_HIVE_BYTES,
        }
    }
}

/// Why the sandbox stopped the child.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KillReason {
    /// An allocation failed at the address-space limit.
    MemoryLimit { limit_mib: u64 },
    /// SIGXCPU: the CPU-time limit.
    CpuLimit { seconds: u64 },
    /// The wall-clock deadline passed; the parent killed it.
    Deadline { seconds: u64 },
    /// SIGXFSZ: it tried to write a file larger than the limit.
    FileSizeLimit { limit_mib: u64 },
    /// Another signal (SIGSEGV, SIGABRT, SIGKILL from the kernel's OOM killer, ...).
    Crashed { signal: i32, stderr: String },
    /// It exited with a failure and no reply.
    Exited { code: i32, stderr: String },
    /// It exited without a valid reply.
    BadReply { message: String },
}

impl std::fmt::Display for KillReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tail = |s: &str| {
            if s.is_empty() {
                String::new()
            } else {
                format!(" (its last words: {s:?})")
            }
        };
        match self {
            KillReason::MemoryLimit { limit_mib } => {
                write!(f, "it ran out of its {limit_mib} MiB memory limit")
            }
            KillReason::CpuLimit { seconds } => {
                write!(f, "it used up its {seconds} s CPU-time limit")
            }
            KillReason::Deadline { seconds } => {
                write!(f, "it was still running after its {seconds} s deadline")
            }
            KillReason::FileSizeLimit { limit_mib } => write!(
                f,
                "it tried to extract a file larger than its {limit_mib} MiB limit"
            ),
            KillReason::Crashed { signal, stderr } => write!(
                f,
                "it crashed with signal {signal} ({}){}",
                signal_name(*signal),
                tail(stderr)
            ),
            KillReason::Exited { code, stderr } => {
                write!(
                    f,
                    "it exited with status {code} and no result{}",
                    tail(stderr)
                )
            }
            KillReason::BadReply { message } => write!(f, "its reply was unreadable: {message}"),
        }
    }
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGABRT => "SIGABRT",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGBUS => "SIGBUS",
        libc::SIGILL => "SIGILL",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL, maybe the kernel's OOM killer",
        libc::SIGTERM => "SIGTERM",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        _ => "a signal",
    }
}

/// What the child writes on stdout: one JSON object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ChildReply {
    Evidence(Box<ServicingEvidence>),
    Failed {
        kind: DeepFailureKind,
        message: String,
    },
}

/// The child's arguments, as the operator's hidden `deep-check` subcommand takes them.
#[derive(Debug, Clone)]
pub struct ChildRequest {
    pub path: PathBuf,
    pub index: u32,
    pub options: DeepOptions,
}

impl ChildRequest {
    /// `--index N [--part PATH]... [--full-verify] -- PATH`
    pub fn to_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec!["--index".into(), self.index.to_string().into()];
        for part in &self.options.split_parts {
            args.push("--part".into());
            args.push(part.into());
        }
        if self.options.full_verify {
            args.push("--full-verify".into());
        }
        args.push("--".into());
        args.push(self.path.clone().into());
        args
    }
}

/// The child's side: runs the deep check in this process and writes the reply to `out`.
///
/// Test-only hook: when [`TEST_HOOK_ENV`] holds `SUBSTRING=ACTION[;SUBSTRING=ACTION...]` and
/// the WIM's path contains SUBSTRING, the child misbehaves like a hostile WIM could make the
/// parser do, before touching the file: `abort` (a crash), `spin` (an endless loop),
/// `sleep` (a hang that burns no CPU), `alloc` (allocates until memory runs out), `bigfile`
/// (writes an endless file to TMPDIR), `report` (prints its descriptors, environment size and
/// limits on stderr, then aborts). The attack tests (operator/tests/attack_wim.rs) use it to
/// prove the sandbox's reactions; nothing sets it in production, and a process that can set the
/// operator's environment needs no hook to misbehave.
pub fn run_child(request: &ChildRequest, out: &mut dyn Write) -> std::io::Result<()> {
    if let Ok(hooks) = std::env::var(TEST_HOOK_ENV) {
        test_hook(&hooks, &request.path);
    }
    let never = AtomicBool::new(false);
    let reply = match crate::deep::collect_evidence(
        &request.path,
        request.index,
        &request.options,
        &never,
        &mut |_| {},
    ) {
        Ok(evidence) => ChildReply::Evidence(Box::new(evidence)),
        Err(e) => ChildReply::Failed {
            kind: e.kind(),
            message: e.to_string(),
        },
    };
    serde_json::to_writer(&mut *out, &reply).map_err(std::io::Error::other)?;
    out.write_all(b"\n")?;
    out.flush()
}

fn test_hook(hooks: &str, path: &Path) {
    let path = path.to_string_lossy();
    for hook in hooks.split(';') {
        let Some((needle, action)) = hook.split_once('=') else {
            continue;
        };
        if needle.is_empty() || !path.contains(needle) {
            continue;
        }
        match action {
            "abort" => std::process::abort(),
            "spin" => {
                let mut x = 0u64;
                loop {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            }
            "sleep" => loop {
                std::thread::sleep(Duration::from_secs(3600));
            },
            "alloc" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 64 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            // What the child was given: its descriptors and limits, on stderr, then a
            // crash so the parent's failure message quotes them.
            "report" => {
                let fds: Vec<String> = std::fs::read_dir("/proc/self/fd")
                    .map(|d| {
                        d.filter_map(|e| e.ok())
                            .map(|e| e.file_name().to_string_lossy().into_owned())
                            .collect()
                    })
                    .unwrap_or_default();
                let limit = |resource| {
                    let mut lim = libc::rlimit {
                        rlim_cur: 0,
                        rlim_max: 0,
                    };
                    // SAFETY: getrlimit writes the struct we pass and nothing else.
                    unsafe { libc::getrlimit(resource, &mut lim) };
                    lim.rlim_cur
                };
                eprintln!(
                    "fds={} env={} as={} cpu={} fsize={} core={}",
                    fds.join(","),
                    std::env::vars_os().count(),
                    limit(libc::RLIMIT_AS),
                    limit(libc::RLIMIT_CPU),
                    limit(libc::RLIMIT_FSIZE),
                    limit(libc::RLIMIT_CORE),
                );
                std::process::abort();
            }
            "bigfile" => {
                let dir = std::env::temp_dir();
                if let Ok(mut f) = std::fs::File::create(dir.join("big")) {
                    let chunk = vec![0u8; 1 << 20];
                    while f.write_all(&chunk).is_ok() {}
                }
            }
            _ => {}
        }
    }
}

/// The parent's side: how to start the child and with which limits.
#[derive(Debug, Clone)]
pub struct Sandbox {
    /// The program, such as the operator's own binary.
    pub program: PathBuf,
    /// Arguments before the request's (the subcommand, such as `deep-check`).
    pub args: Vec<OsString>,
    pub limits: Limits,
}

impl Sandbox {
    /// The running binary itself (`/proc/self/exe`, which still works after an upgrade
    /// replaced the file) with `subcommand`.
    pub fn this_binary(subcommand: &str, limits: Limits) -> Sandbox {
        Sandbox {
            program: PathBuf::from("/proc/self/exe"),
            args: vec![subcommand.into()],
            limits,
        }
    }

    /// [`crate::deep::collect_evidence`] in a limited child. Same signature, so it plugs into
    /// [`crate::verify_image_with`].
    pub fn collect_evidence(
        &self,
        path: &Path,
        index: u32,
        options: &DeepOptions,
        cancel: &AtomicBool,
        progress: &mut dyn FnMut(DeepPhase),
    ) -> Result<ServicingEvidence, DeepError> {
        let sandbox_err = |message: String| DeepError::Sandbox {
            program: self.program.clone(),
            message,
        };
        progress(DeepPhase::Opening);
        // The child's scratch space (it extracts the manifests there). Removed when this
        // returns, also after a kill, which gives the child no chance to clean up.
        let scratch = tempfile::Builder::new()
            .prefix("recast-deep-check-")
            .tempdir()
            .map_err(DeepError::Temp)?;
        let request = ChildRequest {
            path: path.to_path_buf(),
            index,
            options: options.clone(),
        };
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .args(request.to_args())
            .env_clear()
            .env("TMPDIR", scratch.path())
            .current_dir(scratch.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(hook) = std::env::var_os(TEST_HOOK_ENV) {
            cmd.env(TEST_HOOK_ENV, hook);
        }
        let limits = self.limits;
        // SAFETY: the closure runs between fork and exec, where only async-signal-safe calls
        // are allowed: it makes raw setrlimit, prctl and close_range system calls and
        // allocates nothing.
        unsafe {
            cmd.pre_exec(move || limit_child(&limits));
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| sandbox_err(format!("cannot start it: {e}")))?;
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        // Readers on their own threads: a child that writes more than a pipe holds must not
        // block on us while we wait for it.
        let reply = std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(out) = stdout {
                let mut out = out.take(MAX_REPLY_BYTES);
                let _ = out.read_to_end(&mut buf);
                // Drain the rest so the child never blocks on a full pipe.
                let _ = std::io::copy(&mut out.into_inner(), &mut std::io::sink());
            }
            buf
        });
        let errors = std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut err) = stderr {
                let mut chunk = [0u8; 4096];
                while let Ok(n) = err.read(&mut chunk) {
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if buf.len() > 4 * STDERR_TAIL {
                        buf.drain(..buf.len() - STDERR_TAIL);
                    }
                }
            }
            buf
        });

        let deadline = Instant::now() + limits.wall;
        let mut stopped: Option<Stop> = None;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) => {}
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(sandbox_err(format!("cannot wait for it: {e}")));
                }
            }
            if stopped.is_none() {
                if cancel.load(Ordering::Relaxed) {
                    stopped = Some(Stop::Cancelled);
                } else if Instant::now() >= deadline {
                    stopped = Some(Stop::Deadline);
                }
                if stopped.is_some() {
                    let _ = child.kill();
                }
            }
            std::thread::sleep(POLL);
        };
        let reply = reply.join().unwrap_or_default();
        let stderr = errors.join().unwrap_or_default();
        drop(scratch);
        let killed = |why| DeepError::Killed {
            path: path.to_path_buf(),
            index,
            why,
        };
        match stopped {
            Some(Stop::Cancelled) => {
                return Err(DeepError::Cancelled {
                    path: path.to_path_buf(),
                });
            }
            Some(Stop::Deadline) => {
                return Err(killed(KillReason::Deadline {
                    seconds: limits.wall.as_secs(),
                }));
            }
            None => {}
        }
        if let Some(why) = judge_exit(status, &stderr, &limits) {
            return Err(killed(why));
        }
        match serde_json::from_slice::<ChildReply>(&reply) {
            Ok(ChildReply::Evidence(evidence)) => Ok(*evidence),
            Ok(ChildReply::Failed { kind, message }) => Err(DeepError::Child { kind, message }),
            Err(e) => Err(killed(KillReason::BadReply {
                message: e.to_string(),
            })),
        }
    }
}

enum Stop {
    Cancelled,
    Deadline,
}

/// How the child ended, as a reason to refuse; None for a clean exit (its reply decides).
fn judge_exit(
    status: std::process::ExitStatus,
    stderr: &[u8],
    limits: &Limits,
) -> Option<KillReason> {
    let text = String::from_utf8_lossy(stderr);
    let tail = {
        let t = text.trim();
        let start = t
            .char_indices()
            .rev()
            .nth(STDERR_TAIL / 2)
            .map_or(0, |(i, _)| i);
        t[start..].to_string()
    };
    let mib = |b: u64| b >> 20;
    if let Some(signal) = status.signal() {
        return Some(match signal {
            libc::SIGXCPU => KillReason::CpuLimit {
                seconds: limits.cpu_seconds,
            },
            libc::SIGXFSZ => KillReason::FileSizeLimit {
                limit_mib: mib(limits.file_bytes),
            },
            // Rust's allocation-failure handler says so before it aborts.
            libc::SIGABRT if text.contains("memory allocation of") => KillReason::MemoryLimit {
                limit_mib: mib(limits.memory_bytes),
            },
            signal => KillReason::Crashed {
                signal,
                stderr: tail,
            },
        });
    }
    match status.code() {
        Some(0) => None,
        Some(code) => Some(KillReason::Exited { code, stderr: tail }),
        None => Some(KillReason::Exited {
            code: -1,
            stderr: tail,
        }),
    }
}

/// Between fork and exec: the limits, no core dumps, death with the parent, no inherited
/// descriptors beyond 0-2. Only raw system calls (async-signal-safe).
fn limit_child(limits: &Limits) -> std::io::Result<()> {
    let set = |resource, soft: u64, hard: u64| {
        let lim = libc::rlimit {
            rlim_cur: soft as libc::rlim_t,
            rlim_max: hard as libc::rlim_t,
        };
        // SAFETY: setrlimit reads the struct we pass and nothing else.
        if unsafe { libc::setrlimit(resource, &lim) } == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    set(libc::RLIMIT_AS, limits.memory_bytes, limits.memory_bytes)?;
    // SIGXCPU at the soft limit (reported as CpuLimit); SIGKILL a second later if ignored.
    set(
        libc::RLIMIT_CPU,
        limits.cpu_seconds,
        limits.cpu_seconds.saturating_add(1),
    )?;
    set(libc::RLIMIT_FSIZE, limits.file_bytes, limits.file_bytes)?;
    set(libc::RLIMIT_CORE, 0, 0)?;
    // SAFETY: prctl with integer arguments only.
    if unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        )
    } != 0
    {
        return Err(std::io::Error::last_os_error());
    }
    // std opens its own descriptors close-on-exec, but C code in the process may not; the
    // child gets none of them. (close_range is Linux 5.9+; on older kernels the CLOEXEC
    // discipline is what remains.)
    // SAFETY: a raw system call with integer arguments.
    let _ = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_round_trips() {
        let reply = ChildReply::Failed {
            kind: DeepFailureKind::NotWindows,
            message: "x".into(),
        };
        let json = serde_json::to_string(&reply).unwrap();
        assert_eq!(serde_json::from_str::<ChildReply>(&json).unwrap(), reply);
        let reply = ChildReply::Evidence(Box::new(ServicingEvidence {
            // So do the registry's deployability facts.
            deployment: Some(crate::deployable::DeploymentFacts {
                system: crate::deployable::HiveState::Unreadable { why: "x".into() },
                image_state: Some(crate::deployable::GENERALIZED.into()),
                agent_services: vec![crate::deployable::AgentService {
                    name: "recast-agent".into(),
                    image_path: "recast-agent.exe run".into(),
                    start: Some(2),
                }],
                ..Default::default()
            }),
            rollups: vec![crate::servicing::RollupPackage {
                file_name: "f.mum".into(),
                arch: "amd64".into(),
                build: crate::Build::new(26100, 7623),
                version: "26100.7623.1.3".into(),
                kbs: vec!["KB5074109".into()],
            }],
            kb_packages: vec!["KB5074109".into()],
            manifest_count: 3,
            // The boot manager's facts travel back from the child too.
            boot_manager: Some(recast_core::boot_manager::facts_of(None)),
            // And what the servicing log records.
            session_log: crate::servicing::SessionLog::Read {
                updates: vec![crate::servicing::LoggedUpdate {
                    kb: "KB5072033".into(),
                    build: crate::Build::new(26100, 7462),
                    version: "26100.7462.1.5".into(),
                }],
            },
        }));
        let json = serde_json::to_string(&reply).unwrap();
        assert_eq!(serde_json::from_str::<ChildReply>(&json).unwrap(), reply);
    }

    #[test]
    fn request_becomes_args() {
        let r = ChildRequest {
            path: "/s/-x.wim".into(),
            index: 2,
            options: DeepOptions {
                split_parts: vec!["/s/p2.swm".into()],
                full_verify: true,
            },
        };
        let args: Vec<String> = r
            .to_args()
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        assert_eq!(
            args,
            [
                "--index",
                "2",
                "--part",
                "/s/p2.swm",
                "--full-verify",
                "--",
                "/s/-x.wim"
            ]
        );
    }

    fn exit(raw: i32) -> std::process::ExitStatus {
        std::process::ExitStatus::from_raw(raw)
    }

    #[test]
    fn exits_are_judged() {
        let l = Limits::default();
        assert_eq!(judge_exit(exit(0), b"", &l), None);
        assert_eq!(
            judge_exit(exit(libc::SIGXCPU), b"", &l),
            Some(KillReason::CpuLimit { seconds: 600 })
        );
        assert_eq!(
            judge_exit(exit(libc::SIGXFSZ), b"", &l),
            Some(KillReason::FileSizeLimit { limit_mib: 256 })
        );
        assert_eq!(
            judge_exit(
                exit(libc::SIGABRT),
                b"memory allocation of 67108864 bytes failed\n",
                &l
            ),
            Some(KillReason::MemoryLimit { limit_mib: 4096 })
        );
        assert!(matches!(
            judge_exit(exit(libc::SIGSEGV), b"boom", &l),
            Some(KillReason::Crashed { signal: libc::SIGSEGV, stderr }) if stderr == "boom"
        ));
        assert!(matches!(
            judge_exit(exit(3 << 8), b"", &l),
            Some(KillReason::Exited { code: 3, .. })
        ));
        let msg = KillReason::Crashed {
            signal: libc::SIGSEGV,
            stderr: String::new(),
        }
        .to_string();
        assert!(msg.contains("SIGSEGV"), "{msg}");
    }
}
