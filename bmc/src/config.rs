//! How to reach and authenticate to one BMC.

use std::fmt;
use std::time::Duration;

/// Username and password for the BMC account. `Debug` never prints the password.
#[derive(Clone)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// How requests authenticate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AuthMode {
    /// A Redfish session (X-Auth-Token) when the service offers a SessionService, else basic
    /// auth: sessions spare the BMC a password check per request, and some BMCs rate-limit those.
    #[default]
    Auto,
    /// Always a session; a service without SessionService is an error.
    Session,
    /// HTTP basic auth on every request.
    Basic,
}

/// How the server certificate is checked.
#[derive(Clone, Debug, Default)]
pub enum TlsVerify {
    /// Verify against the system's trusted roots.
    #[default]
    SystemRoots,
    /// Verify against this PEM bundle only (a BMC's self-signed certificate or a site CA).
    CaBundle(Vec<u8>),
    /// Accept any certificate. Only by an explicit choice (`insecureSkipTLSVerify`).
    Insecure,
}

#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Base URL of the Redfish service, such as https://10.0.40.21 (no /redfish/v1 needed).
    pub address: String,
    pub credentials: Option<Credentials>,
    pub auth: AuthMode,
    pub tls: TlsVerify,
    /// Per-request deadline, body included: a BMC that trickles its reply cannot hang us.
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    /// Extra attempts after a 5xx, timeout or connection failure (never after a 4xx).
    pub retries: u32,
    /// First backoff; doubled per retry.
    pub backoff: Duration,
    /// Largest reply body read; beyond it the reply is refused.
    pub max_body_bytes: usize,
    /// How long an asynchronous operation (202 + task monitor) may take.
    pub task_deadline: Duration,
    /// How long to wait for a power change to show in PowerState.
    pub power_settle: Duration,
    /// Interval between polls of task monitors and power state.
    pub poll_interval: Duration,
}

impl ClientConfig {
    pub fn new(address: impl Into<String>) -> Self {
        ClientConfig {
            address: address.into(),
            credentials: None,
            auth: AuthMode::Auto,
            tls: TlsVerify::SystemRoots,
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            retries: 3,
            backoff: Duration::from_millis(500),
            max_body_bytes: 4 * 1024 * 1024,
            task_deadline: Duration::from_secs(300),
            power_settle: Duration::from_secs(60),
            poll_interval: Duration::from_secs(1),
        }
    }

    pub fn with_credentials(mut self, username: &str, password: &str) -> Self {
        self.credentials = Some(Credentials {
            username: username.to_string(),
            password: password.to_string(),
        });
        self
    }
}
