//! The one-time attempt token the imaging environment presents when it fetches its task and
//! reports progress. It is an HMAC of (endpoint, attempt, try) under the boot service's key, so
//! nothing secret is stored beside the boot intent, every replica holding the key can check it,
//! and it stops working as soon as the intent for that try is gone (the controller disarms it).

use std::path::Path;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::encoding::hex;

type HmacSha256 = Hmac<Sha256>;

pub const KEY_LEN: usize = 32;

#[derive(Clone)]
pub struct TokenKey([u8; KEY_LEN]);

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(..)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(
        "cannot read the imaging token key {path}: {source}; restore it or delete it to create a new one (running imaging tries then fail and retry)"
    )]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "cannot create the imaging token key {path}: {source}; check that the directory is writable"
    )]
    Create {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "the imaging token key {path} holds {len} bytes, expected {KEY_LEN}; delete it to create a new one"
    )]
    Length { path: String, len: usize },
}

impl TokenKey {
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> TokenKey {
        TokenKey(bytes)
    }

    /// Reads the key file, creating it (mode 0600, random bytes) when it does not exist. All
    /// replicas must share it (the Helm chart mounts it from a Secret).
    pub fn load_or_create(path: &Path) -> Result<TokenKey, KeyError> {
        let shown = path.display().to_string();
        match std::fs::read(path) {
            Ok(bytes) => {
                let arr: [u8; KEY_LEN] =
                    bytes.as_slice().try_into().map_err(|_| KeyError::Length {
                        path: shown.clone(),
                        len: bytes.len(),
                    })?;
                Ok(TokenKey(arr))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = [0u8; KEY_LEN];
                // uuid v4 draws from the OS generator; two of them give 32 random bytes without
                // adding a dependency for it.
                key[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
                key[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
                write_private(path, &key).map_err(|source| KeyError::Create {
                    path: shown,
                    source,
                })?;
                Ok(TokenKey(key))
            }
            Err(source) => Err(KeyError::Read {
                path: shown,
                source,
            }),
        }
    }

    /// The token for one try of one attempt of one endpoint, as lower-case hex.
    pub fn token(
        &self,
        namespace: &str,
        endpoint: &str,
        attempt_id: &str,
        try_number: u32,
    ) -> String {
        // HMAC accepts keys of any length, so this never fails; an empty token never verifies.
        let Ok(mut mac) = HmacSha256::new_from_slice(&self.0) else {
            return String::new();
        };
        // Length-prefixed fields: no two different tuples produce the same message.
        for part in [namespace, endpoint, attempt_id, &try_number.to_string()] {
            mac.update(&(part.len() as u32).to_be_bytes());
            mac.update(part.as_bytes());
        }
        hex(&mac.finalize().into_bytes())
    }

    /// The session token of one try as claimed by one client address: the imaging
    /// environment gets it once, from the claim, and it is good only from that address (a
    /// different HMAC domain from [`TokenKey::token`], so neither can stand in for the other).
    pub fn client_token(
        &self,
        namespace: &str,
        endpoint: &str,
        attempt_id: &str,
        try_number: u32,
        client: &str,
    ) -> String {
        self.token(
            namespace,
            endpoint,
            &format!("claim/{attempt_id}/{client}"),
            try_number,
        )
    }

    /// Constant-time check of a presented session token against the address it came from.
    pub fn verify_client(
        &self,
        namespace: &str,
        endpoint: &str,
        attempt_id: &str,
        try_number: u32,
        client: &str,
        presented: &str,
    ) -> bool {
        let expected = self.client_token(namespace, endpoint, attempt_id, try_number, client);
        constant_time_eq(expected.as_bytes(), presented.as_bytes())
    }

    /// A key for another purpose, derived from this one (HMAC with the purpose as message), so
    /// a MAC made for that purpose can never pass as an imaging token or the reverse.
    pub fn derive(&self, purpose: &str) -> [u8; KEY_LEN] {
        let Ok(mut mac) = HmacSha256::new_from_slice(&self.0) else {
            return [0; KEY_LEN];
        };
        mac.update(b"recast derived key\0");
        mac.update(purpose.as_bytes());
        let mut out = [0u8; KEY_LEN];
        out.copy_from_slice(&mac.finalize().into_bytes()[..KEY_LEN]);
        out
    }

    /// Constant-time check of a presented token.
    pub fn verify(
        &self,
        namespace: &str,
        endpoint: &str,
        attempt_id: &str,
        try_number: u32,
        presented: &str,
    ) -> bool {
        let expected = self.token(namespace, endpoint, attempt_id, try_number);
        constant_time_eq(expected.as_bytes(), presented.as_bytes())
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.is_empty() || a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_bind_every_field() {
        let k = TokenKey::from_bytes([7; KEY_LEN]);
        let t = k.token("default", "kiosk-01", "a1", 1);
        assert_eq!(t.len(), 64);
        assert!(k.verify("default", "kiosk-01", "a1", 1, &t));
        assert!(!k.verify("default", "kiosk-01", "a1", 2, &t), "another try");
        assert!(
            !k.verify("default", "kiosk-02", "a1", 1, &t),
            "another endpoint"
        );
        assert!(
            !k.verify("default", "kiosk-01", "a2", 1, &t),
            "another attempt"
        );
        assert!(
            !k.verify("other", "kiosk-01", "a1", 1, &t),
            "another namespace"
        );
        assert!(
            !k.verify("default", "kiosk-01", "a1", 1, &t[..63]),
            "truncated"
        );
        assert!(!k.verify("default", "kiosk-01", "a1", 1, ""), "empty");
        // Field boundaries matter: ("ab","c") and ("a","bc") differ.
        assert_ne!(k.token("ab", "c", "x", 1), k.token("a", "bc", "x", 1));
        let other = TokenKey::from_bytes([8; KEY_LEN]);
        assert!(
            !other.verify("default", "kiosk-01", "a1", 1, &t),
            "another key"
        );
    }

    #[test]
    fn session_tokens_bind_the_client_address() {
        let k = TokenKey::from_bytes([7; KEY_LEN]);
        let t = k.client_token("default", "kiosk-01", "a1", 1, "10.0.40.17");
        assert!(k.verify_client("default", "kiosk-01", "a1", 1, "10.0.40.17", &t));
        assert!(
            !k.verify_client("default", "kiosk-01", "a1", 1, "10.0.40.18", &t),
            "another address"
        );
        assert!(
            !k.verify_client("default", "kiosk-01", "a1", 2, "10.0.40.17", &t),
            "another try"
        );
        assert!(
            !k.verify("default", "kiosk-01", "a1", 1, &t),
            "a session token is not the try's unbound token"
        );
        let unbound = k.token("default", "kiosk-01", "a1", 1);
        assert!(
            !k.verify_client("default", "kiosk-01", "a1", 1, "10.0.40.17", &unbound),
            "nor the other way round"
        );
    }

    #[test]
    fn the_key_file_is_created_once_and_reused() {
        let dir = std::env::temp_dir().join(format!("recast-key-{}", uuid::Uuid::new_v4()));
        let path = dir.join("imaging.key");
        let a = TokenKey::load_or_create(&path).unwrap();
        let b = TokenKey::load_or_create(&path).unwrap();
        assert_eq!(a.token("n", "e", "a", 1), b.token("n", "e", "a", 1));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(&path, b"short").unwrap();
        let err = TokenKey::load_or_create(&path).unwrap_err();
        assert!(err.to_string().contains("expected 32"), "{err}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
