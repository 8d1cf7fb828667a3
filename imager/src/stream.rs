//! The multicast path: `udp-receiver`'s stdout is hashed and fed to `wimlib-imagex apply -`
//! as it comes (a pipable WIM), so no machine stages the image in RAM and the boot service
//! sends each byte once for a whole batch. What happens after the stream is decided by
//! recast_core::multicast::after_stream; the bytes only count when their sha256 and size are
//! the task's, and the boot files (what makes the disk bootable) are written after that.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use recast_core::imaging::TaskMulticast;
use recast_core::multicast::{StreamEnd, receiver_args};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::progress;
use crate::run::{Reporter, Step, say};

/// Grace beyond the receiver's own timeouts before recast stops it: udpcast keeps its own
/// clock, this one only makes sure nothing waits forever.
const GRACE: Duration = Duration::from_secs(30);

/// The environment variable the imaging environment's init sets to the interface that got the
/// DHCP lease (udp-receiver's `--interface`).
pub const INTERFACE_VAR: &str = "RECAST_NET_INTERFACE";

/// The receiver recast-imager runs (found on PATH).
pub const RECEIVER: &str = "udp-receiver";

/// Receives the session's stream with `receiver` (udp-receiver) and applies it to the
/// (formatted, empty) volume `windows`. The stream is the pipable export of the task's image
/// alone, so it is always its image 1. Progress between `from` and `to` percent.
pub async fn receive_and_apply(
    reporter: &impl Reporter,
    join: &TaskMulticast,
    receiver: &str,
    windows: &Path,
    interface: Option<&str>,
    (from, to): (u8, u8),
) -> StreamEnd {
    const INDEX: &str = "1";
    let step = Step::Download;
    reporter
        .progress(
            from,
            step,
            &format!(
                "joining multicast session {}:{} ({} bytes; up to {} s for it to start)",
                join.group, join.port, join.size, join.start_timeout_seconds
            ),
        )
        .await;
    let mut receiver = match tokio::process::Command::new(receiver)
        .args(receiver_args(join, interface))
        .kill_on_drop(true)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            say(&format!("cannot run {receiver}: {e}"));
            return StreamEnd::NoSession;
        }
    };
    let mut apply = match tokio::process::Command::new("wimlib-imagex")
        .kill_on_drop(true)
        .arg("apply")
        .arg("-")
        .arg(INDEX)
        .arg(windows)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            return StreamEnd::ApplyFailed {
                message: format!("cannot run wimlib-imagex: {e}"),
            };
        }
    };
    let mut stream = receiver.stdout.take().expect("piped");
    let receiver_log = drain(receiver.stderr.take().expect("piped"));
    let apply_log = drain(apply.stderr.take().expect("piped"));
    let mut apply_in = apply.stdin.take();

    let mut hasher = Sha256::new();
    let mut received: u64 = 0;
    let mut last_percent = 0u8;
    let mut buf = vec![0u8; 1 << 20];
    let broke = loop {
        let patience = if received == 0 {
            Duration::from_secs(join.start_timeout_seconds.into()) + GRACE
        } else {
            Duration::from_secs(join.receive_timeout_seconds.into()) + GRACE
        };
        let n = match tokio::time::timeout(patience, stream.read(&mut buf)).await {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => break Some(format!("reading udp-receiver: {e}")),
            Err(_) => break Some(format!("no data for {} s", patience.as_secs())),
        };
        if n == 0 {
            break None;
        }
        let chunk = &buf[..n];
        hasher.update(chunk);
        received += n as u64;
        if received > join.size {
            break Some("more bytes than the stream's size".into());
        }
        // wimlib stops reading once it has the image it applies (the rest of a pipable WIM is
        // the other images and the tables): the stream is still read to its end and hashed.
        if let Some(stdin) = apply_in.as_mut()
            && stdin.write_all(chunk).await.is_err()
        {
            apply_in = None;
        }
        let percent = (received * 100 / join.size.max(1)) as u8;
        if percent >= last_percent + 10 {
            last_percent = percent;
            reporter
                .progress(
                    progress::overall(from, to, percent),
                    step,
                    &format!(
                        "{received} of {} bytes from the multicast session",
                        join.size
                    ),
                )
                .await;
        }
    };
    // End of input for wimlib either way; on a broken stream it fails (or is killed below).
    drop(apply_in);
    if broke.is_some() {
        let _ = receiver.start_kill();
    }
    let _ = receiver.wait().await;
    let receiver_said = last_line(&receiver_log.await.unwrap_or_default());
    if let Some(why) = broke {
        let _ = apply.start_kill();
        let _ = apply.wait().await;
        say(&format!("multicast stream stopped: {why}; {receiver_said}"));
        return if received == 0 {
            StreamEnd::NoSession
        } else {
            StreamEnd::BrokeOff { received }
        };
    }
    if received == 0 {
        let _ = apply.start_kill();
        let _ = apply.wait().await;
        say(&format!("udp-receiver received nothing: {receiver_said}"));
        return StreamEnd::NoSession;
    }
    if received < join.size {
        let _ = apply.start_kill();
        let _ = apply.wait().await;
        say(&format!("udp-receiver: {receiver_said}"));
        return StreamEnd::BrokeOff { received };
    }
    let sha256 = format!("{:x}", hasher.finalize());
    let applied = apply.wait().await;
    let apply_said = apply_log.await.unwrap_or_default();
    // Bytes that are not the image's are the verdict whatever wimlib made of them.
    if !sha256.eq_ignore_ascii_case(&join.sha256) {
        return StreamEnd::WrongBytes { received, sha256 };
    }
    match applied {
        Ok(s) if s.success() => StreamEnd::Complete,
        Ok(s) => StreamEnd::ApplyFailed {
            message: format!("wimlib-imagex apply - ({s}): {}", last_line(&apply_said)),
        },
        Err(e) => StreamEnd::ApplyFailed {
            message: format!("wimlib-imagex: {e}"),
        },
    }
}

fn drain(
    mut from: impl tokio::io::AsyncRead + Unpin + Send + 'static,
) -> tokio::task::JoinHandle<String> {
    tokio::spawn(async move {
        // The tail is enough (udpcast rewrites its progress line with \r for the whole run).
        let mut kept = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = from.read(&mut buf).await {
            if n == 0 {
                break;
            }
            kept.extend_from_slice(&buf[..n]);
            if kept.len() > 64 * 1024 {
                kept.drain(..kept.len() - 16 * 1024);
            }
        }
        String::from_utf8_lossy(&kept).into_owned()
    })
}

/// The last non-empty line of a tool's output (`\r` separates udpcast's progress lines).
fn last_line(text: &str) -> String {
    text.split(['\r', '\n'])
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .unwrap_or("(no output)")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_line_skips_udpcasts_carriage_returns() {
        assert_eq!(
            last_line("Udp-receiver 20120424\nbytes= 1 000 \rbytes= 2 000 \r\n\n"),
            "bytes= 2 000"
        );
        assert_eq!(last_line(""), "(no output)");
    }
}
