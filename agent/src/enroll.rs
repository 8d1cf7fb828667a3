//! The agent configuration a reimage leaves in the new image (`agent.json`, rendered by the
//! boot service): who the endpoint is, the attempt that installed it, where to report, and the
//! one-attempt enrollment credential the agent trades for its own token at first start.

use std::path::Path;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AgentConfig {
    pub namespace: String,
    pub endpoint: String,
    pub attempt_id: String,
    #[serde(default)]
    pub gateway_url: Option<String>,
    pub enrollment_token: String,
}

/// Reads agent.json; the error says which file and what is wrong with it.
pub fn load(path: &Path) -> Result<AgentConfig, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("reading agent configuration {}: {e}", path.display()))?;
    // Windows tools may write a BOM.
    let text = text.trim_start_matches('\u{feff}');
    serde_json::from_str(text).map_err(|e| {
        format!(
            "{} is not the agent.json recast writes during a reimage: {e}",
            path.display()
        )
    })
}

/// Writes the token where `run --token-file` reads it; on Unix readable by the owner only
/// (on Windows the folder's ACL, set at install, protects it).
pub fn save_token(path: &Path, token: &str) -> Result<(), String> {
    let err = |e: std::io::Error| format!("writing token file {}: {e}", path.display());
    let tmp = path.with_extension("tmp");
    {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp).map_err(err)?;
        std::io::Write::write_all(&mut f, token.as_bytes()).map_err(err)?;
        f.sync_all().map_err(err)?;
    }
    std::fs::rename(&tmp, path).map_err(err)
}

/// Whether a failed enrollment is worth trying again: the gateway unreachable (`None`: no
/// answer), overloaded (429) or briefly without its store (5xx) — a freshly imaged machine
/// often boots while the operator restarts. A refusal (401 forged, 404 enrollment off, 409
/// another attempt's agent.json) will not change by waiting.
pub fn enrollment_retryable(status: Option<u16>) -> bool {
    match status {
        None => true,
        Some(s) => s == 429 || s >= 500,
    }
}

/// The wait before enrollment try `n` (0-based): 2 s doubling, at most a minute.
pub fn enrollment_backoff(n: u32) -> std::time::Duration {
    std::time::Duration::from_secs((2u64 << n.min(5)).min(60))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enrollment_retries_only_what_waiting_can_fix() {
        for (status, retry) in [
            (None, true),
            (Some(429), true),
            (Some(500), true),
            (Some(503), true),
            (Some(400), false),
            (Some(401), false),
            (Some(404), false),
            (Some(409), false),
            (Some(413), false),
        ] {
            assert_eq!(enrollment_retryable(status), retry, "{status:?}");
        }
        let waits: Vec<u64> = (0..8).map(|n| enrollment_backoff(n).as_secs()).collect();
        assert_eq!(waits, [2, 4, 8, 16, 32, 60, 60, 60]);
    }

    #[test]
    fn reads_what_the_boot_service_renders() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("agent.json");
        std::fs::write(
            &p,
            "\u{feff}{\"namespace\":\"default\",\"endpoint\":\"kiosk-01\",\"attemptId\":\"kiosk-01-0b5e2c1a-1\",\"gatewayUrl\":\"https://gw:8443\",\"enrollmentToken\":\"abc\"}",
        )
        .unwrap();
        let c = load(&p).unwrap();
        assert_eq!(c.attempt_id, "kiosk-01-0b5e2c1a-1");
        assert_eq!(c.gateway_url.as_deref(), Some("https://gw:8443"));
        std::fs::write(&p, "{\"endpoint\":\"kiosk-01\"}").unwrap();
        let e = load(&p).unwrap_err();
        assert!(e.contains("not the agent.json recast writes"), "{e}");
        let t = dir.path().join("token");
        save_token(&t, "rct_x").unwrap();
        assert_eq!(std::fs::read_to_string(&t).unwrap(), "rct_x");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&t).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
