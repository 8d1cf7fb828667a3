//! What the agent keeps between runs: the last report sequence number, the update hold the
//! gateway asked for, and what it did with the last restart-into-the-network order.
//!
//! The gateway refuses any sequence at or below the last one it accepted (replay protection),
//! so the number must never go backwards, not even across a reimage that wipes this file. It is
//! therefore seeded from the clock: the next sequence is max(last + 1, now in milliseconds).
//! A wiped agent starts above anything it sent before as long as the clock moved forward, and
//! a clock that jumps back still cannot make it repeat itself.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("reading agent state {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "agent state {path} is damaged ({source}); delete it and the agent starts a new sequence from the clock"
    )]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("writing agent state {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AgentState {
    pub last_sequence: u64,
    /// The update hold the gateway last asked for, re-asserted every interval (and after a
    /// restart) until it answers otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_hold: Option<recast_crds::report::DesiredUpdateHold>,
    /// What the agent did with the last restart-into-the-network order (see
    /// [`crate::restart`]). Written before the restart is scheduled, so a crash or a second
    /// reply with the same order never schedules a second one; every report carries it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_restart: Option<recast_crds::report::NetworkRestartOutcome>,
}

/// The sequence after `last`, given the clock in milliseconds since the epoch.
pub fn next_sequence(last: u64, now_millis: u64) -> u64 {
    last.saturating_add(1).max(now_millis)
}

pub fn load(path: &Path) -> Result<AgentState, StateError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| StateError::Parse {
            path: path.to_path_buf(),
            source,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(AgentState::default()),
        Err(source) => Err(StateError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Writes the state through a temporary file and a rename, so a crash mid-write leaves the old
/// state, never half of the new one.
pub fn save(path: &Path, state: &AgentState) -> Result<(), StateError> {
    let err = |source| StateError::Write {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let body = serde_json::to_vec(state).map_err(|e| err(std::io::Error::other(e)))?;
    std::fs::write(&tmp, body).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// Reserves the next sequence number: persisted before the report is sent, so a crash after
/// sending can never make the agent reuse it.
pub fn reserve(path: &Path, now_millis: u64) -> Result<u64, StateError> {
    let mut state = load(path)?;
    let next = next_sequence(state.last_sequence, now_millis);
    state.last_sequence = next;
    save(path, &state)?;
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_never_goes_back() {
        assert_eq!(next_sequence(0, 1_000), 1_000);
        assert_eq!(next_sequence(5_000, 1_000), 5_001);
        assert_eq!(next_sequence(u64::MAX, 0), u64::MAX);
    }

    #[test]
    fn reserve_persists_and_survives_a_damaged_file() {
        let dir = std::env::temp_dir().join(format!("recast-agent-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.json");
        let _ = std::fs::remove_file(&path);
        assert_eq!(reserve(&path, 10).unwrap(), 10);
        assert_eq!(reserve(&path, 3).unwrap(), 11);
        assert_eq!(load(&path).unwrap().last_sequence, 11);
        std::fs::write(&path, b"{not json").unwrap();
        assert!(matches!(reserve(&path, 1), Err(StateError::Parse { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
