//! HTTP to one BMC: TLS policy, authentication (session or basic), retries with backoff,
//! same-origin redirects, a reply size cap, and task monitors.

use std::sync::Arc;
use std::time::Duration;

use reqwest::{Method, StatusCode, header};
use serde_json::Value;
use tokio::sync::Mutex;
use url::Url;

use crate::config::{AuthMode, ClientConfig, Credentials, TlsVerify};
use crate::error::{RedfishError, Result};

const MAX_REDIRECTS: usize = 5;
/// Cap on a server-suggested Retry-After, so a BMC cannot park a task poll for an hour.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

/// Whether a request may be repeated after an ambiguous failure. A reset that timed out may
/// have happened: repeating it could cycle the machine twice, so actions are repeated only
/// when the BMC certainly did not act on them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Repeat {
    Idempotent,
    OnlyIfNotProcessed,
}

#[derive(Debug)]
pub(crate) struct Reply {
    pub status: StatusCode,
    pub headers: header::HeaderMap,
    pub body: Vec<u8>,
    pub url: Url,
}

impl Reply {
    pub fn json(&self) -> Result<Value> {
        if self.body.is_empty() {
            return Err(RedfishError::Malformed {
                url: self.url.to_string(),
                detail: "empty body where a JSON object was expected".into(),
            });
        }
        let value: Value =
            serde_json::from_slice(&self.body).map_err(|e| RedfishError::Malformed {
                url: self.url.to_string(),
                detail: e.to_string(),
            })?;
        if !value.is_object() {
            return Err(RedfishError::Malformed {
                url: self.url.to_string(),
                detail: "expected a JSON object".into(),
            });
        }
        Ok(value)
    }

    pub fn etag(&self) -> Option<String> {
        self.headers
            .get(header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }

    fn location(&self) -> Option<&str> {
        self.headers
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
    }
}

enum AuthState {
    None,
    Basic(Credentials),
    Session {
        credentials: Credentials,
        token: String,
        /// The session resource, deleted on logout.
        location: Option<Url>,
    },
}

/// A connection to one BMC's Redfish service.
pub struct Transport {
    http: reqwest::Client,
    origin: Url,
    cfg: ClientConfig,
    auth: Mutex<AuthState>,
    sessions_url: Mutex<Option<Url>>,
}

pub(crate) fn build_tls(tls: &TlsVerify) -> Result<rustls::ClientConfig> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| RedfishError::TlsConfig(e.to_string()))?;
    let config = match tls {
        TlsVerify::SystemRoots | TlsVerify::CaBundle(_) => {
            let mut roots = rustls::RootCertStore::empty();
            if let TlsVerify::CaBundle(pem) = tls {
                let mut count = 0;
                for cert in CertificateDer::pem_slice_iter(pem) {
                    let cert = cert.map_err(|e| {
                        RedfishError::TlsConfig(format!(
                            "the CA bundle is not valid PEM ({e}); give the PEM certificates under the key ca.crt"
                        ))
                    })?;
                    roots.add(cert).map_err(|e| {
                        RedfishError::TlsConfig(format!("a CA bundle certificate is unusable: {e}"))
                    })?;
                    count += 1;
                }
                if count == 0 {
                    return Err(RedfishError::TlsConfig(
                        "the CA bundle holds no PEM certificate; give the PEM certificates under the key ca.crt".into(),
                    ));
                }
            } else {
                let found = rustls_native_certs::load_native_certs();
                for cert in found.certs {
                    // A single unparsable system root must not disable TLS altogether.
                    let _ = roots.add(cert);
                }
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        TlsVerify::Insecure => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
            .with_no_client_auth(),
    };
    Ok(config)
}

/// Accepts any server certificate (still checking the handshake signature, so the session is
/// at least bound to the key the server presented). Used only with an explicit insecure flag.
#[derive(Debug)]
struct AcceptAnyCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> std::result::Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The origin (scheme, host, port) of a BMC address; the Redfish root is always /redfish/v1.
pub(crate) fn parse_origin(address: &str) -> Result<Url> {
    let invalid = |reason: &str| RedfishError::InvalidAddress {
        address: address.to_string(),
        reason: reason.to_string(),
    };
    let url = Url::parse(address).map_err(|e| invalid(&e.to_string()))?;
    if url.scheme() != "https" && url.scheme() != "http" {
        return Err(invalid("the scheme must be http or https"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid("it has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid(
            "it carries credentials; put them in the credentials Secret instead",
        ));
    }
    let mut origin = url.clone();
    origin.set_path("/");
    origin.set_query(None);
    origin.set_fragment(None);
    Ok(origin)
}

fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
}

/// The human part of a Redfish error body (`error.message` and its extended info), or a
/// short excerpt of whatever else the BMC sent.
fn error_message(body: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        let mut parts = Vec::new();
        if let Some(m) = v.pointer("/error/message").and_then(Value::as_str) {
            parts.push(m.to_string());
        }
        if let Some(infos) = v
            .pointer("/error/@Message.ExtendedInfo")
            .and_then(Value::as_array)
        {
            for info in infos.iter().take(3) {
                if let Some(m) = info.get("Message").and_then(Value::as_str) {
                    parts.push(m.to_string());
                }
            }
        }
        if !parts.is_empty() {
            return parts.join("; ");
        }
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return "no detail given".into();
    }
    let mut excerpt: String = text.chars().take(200).collect();
    if excerpt.len() < text.len() {
        excerpt.push('…');
    }
    excerpt
}

fn is_tls_error(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls.to_string());
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
            && let Some(tls) = inner.downcast_ref::<rustls::Error>()
        {
            return Some(tls.to_string());
        }
        cur = e.source();
    }
    // io::Error hides its inner error from source(), and connectors wrap it differently from
    // version to version; rustls's messages are distinctive enough to recognise.
    let text = chain_text(err);
    let lower = text.to_lowercase();
    [
        "invalid peer certificate",
        "certificate",
        "handshake",
        "received fatal alert",
        "corrupt message",
    ]
    .iter()
    .any(|k| lower.contains(k))
    .then_some(text)
}

fn chain_text(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let s = e.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = e.source();
    }
    out
}

impl Transport {
    pub fn new(cfg: ClientConfig) -> Result<Self> {
        let origin = parse_origin(&cfg.address)?;
        let tls = build_tls(&cfg.tls)?;
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            // Redirects are followed by hand, only within the BMC's own origin.
            .redirect(reqwest::redirect::Policy::none())
            .timeout(cfg.request_timeout)
            .connect_timeout(cfg.connect_timeout)
            .no_proxy()
            .build()
            .map_err(|e| RedfishError::TlsConfig(chain_text(&e)))?;
        // Basic until a session is opened (login), which then replaces it.
        let auth = match &cfg.credentials {
            None => AuthState::None,
            Some(c) => AuthState::Basic(c.clone()),
        };
        Ok(Transport {
            http,
            origin,
            cfg,
            auth: Mutex::new(auth),
            sessions_url: Mutex::new(None),
        })
    }

    pub fn config(&self) -> &ClientConfig {
        &self.cfg
    }

    /// Resolves an `@odata.id` (or a Location header) against the BMC, refusing other origins.
    pub fn resolve(&self, reference: &str) -> Result<Url> {
        let url = self
            .origin
            .join(reference)
            .map_err(|e| RedfishError::Malformed {
                url: self.origin.to_string(),
                detail: format!("unusable reference {reference:?}: {e}"),
            })?;
        if !same_origin(&url, &self.origin) {
            return Err(RedfishError::RedirectRefused {
                from: self.origin.to_string(),
                to: url.to_string(),
            });
        }
        Ok(url)
    }

    /// Opens a session when asked to (or offered, in Auto mode). Called once after the service
    /// root was read, with the sessions collection it advertises.
    pub async fn login(&self, sessions: Option<&str>) -> Result<()> {
        let Some(credentials) = self.cfg.credentials.clone() else {
            return Ok(());
        };
        let sessions = match (self.cfg.auth, sessions) {
            (AuthMode::Basic, _) | (AuthMode::Auto, None) => return Ok(()),
            (AuthMode::Session, None) => {
                return Err(RedfishError::Unsupported {
                    what: "sessions (the service root has no Links.Sessions); use basic auth"
                        .into(),
                });
            }
            (_, Some(s)) => self.resolve(s)?,
        };
        *self.sessions_url.lock().await = Some(sessions.clone());
        self.open_session(&sessions, credentials).await
    }

    async fn open_session(&self, sessions: &Url, credentials: Credentials) -> Result<()> {
        let body = serde_json::json!({
            "UserName": credentials.username,
            "Password": credentials.password,
        });
        let reply = self
            .send_raw(Method::POST, sessions.clone(), Some(&body), None, false)
            .await?;
        let token = reply
            .headers
            .get("x-auth-token")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .ok_or_else(|| RedfishError::MissingProperty {
                url: sessions.to_string(),
                property: "the X-Auth-Token header of the new session".into(),
            })?;
        let location = match reply.location() {
            Some(l) => Some(self.resolve(l)?),
            None => reply
                .json()
                .ok()
                .and_then(|v| {
                    v.get("@odata.id")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                })
                .map(|id| self.resolve(&id))
                .transpose()?,
        };
        *self.auth.lock().await = AuthState::Session {
            credentials,
            token,
            location,
        };
        Ok(())
    }

    /// Deletes the session, if any. Idempotent.
    pub async fn logout(&self) -> Result<()> {
        let previous = {
            let mut auth = self.auth.lock().await;
            let creds = match &*auth {
                AuthState::Session { credentials, .. } => credentials.clone(),
                _ => return Ok(()),
            };
            std::mem::replace(&mut *auth, AuthState::Basic(creds))
        };
        if let AuthState::Session {
            token,
            location: Some(location),
            ..
        } = previous
        {
            let result = self
                .http
                .delete(location.clone())
                .header("X-Auth-Token", token)
                .send()
                .await;
            match result {
                Ok(r) if r.status().is_success() || r.status() == StatusCode::NOT_FOUND => {}
                Ok(r) => {
                    tracing::warn!(session = %location, status = %r.status(), "the BMC did not delete the session; it will expire on its own");
                }
                Err(e) => {
                    tracing::warn!(session = %location, error = %chain_text(&e), "could not delete the BMC session; it will expire on its own");
                }
            }
        }
        Ok(())
    }

    /// Returns the session to delete on drop, leaving none behind.
    pub(crate) fn take_session(&self) -> Option<(reqwest::Client, Url, String)> {
        let mut auth = self.auth.try_lock().ok()?;
        if let AuthState::Session {
            token,
            location: Some(location),
            ..
        } = &*auth
        {
            let out = (self.http.clone(), location.clone(), token.clone());
            *auth = AuthState::None;
            return Some(out);
        }
        None
    }

    pub async fn has_session(&self) -> bool {
        matches!(&*self.auth.lock().await, AuthState::Session { .. })
    }

    /// One request with retries (per `repeat`), auth, redirects and the size cap. Non-2xx
    /// replies come back as typed errors, except those the caller asks to see via `accept`.
    pub async fn request(
        &self,
        method: Method,
        url: Url,
        body: Option<&Value>,
        if_match: Option<&str>,
        repeat: Repeat,
    ) -> Result<Reply> {
        let mut attempt = 0u32;
        let mut relogged = false;
        loop {
            let result = self
                .send_raw(method.clone(), url.clone(), body, if_match, true)
                .await;
            match result {
                Err(RedfishError::Unauthorized { .. }) if !relogged && self.has_session().await => {
                    // Sessions expire (often after 30 minutes idle); one fresh login is normal.
                    relogged = true;
                    let (sessions, creds) = {
                        let auth = self.auth.lock().await;
                        let creds = match &*auth {
                            AuthState::Session { credentials, .. } => Some(credentials.clone()),
                            _ => None,
                        };
                        (self.sessions_url.lock().await.clone(), creds)
                    };
                    if let (Some(sessions), Some(creds)) = (sessions, creds) {
                        self.open_session(&sessions, creds).await?;
                        continue;
                    }
                    return result;
                }
                Err(e) if attempt < self.cfg.retries && self.should_repeat(&e, repeat) => {
                    let delay = self.cfg.backoff.saturating_mul(1 << attempt.min(10));
                    tracing::debug!(%url, attempt, error = %e, ?delay, "retrying BMC request");
                    attempt += 1;
                    tokio::time::sleep(delay).await;
                }
                other => return other,
            }
        }
    }

    fn should_repeat(&self, e: &RedfishError, repeat: Repeat) -> bool {
        match repeat {
            Repeat::Idempotent => e.is_retryable(),
            Repeat::OnlyIfNotProcessed => match e {
                RedfishError::Connect { .. } => true,
                RedfishError::Server { status, .. } => *status == 503,
                _ => false,
            },
        }
    }

    async fn send_raw(
        &self,
        method: Method,
        url: Url,
        body: Option<&Value>,
        if_match: Option<&str>,
        authenticate: bool,
    ) -> Result<Reply> {
        let mut current = url;
        for _ in 0..=MAX_REDIRECTS {
            let mut req = self
                .http
                .request(method.clone(), current.clone())
                .header(header::ACCEPT, "application/json")
                .header("OData-Version", "4.0");
            if authenticate {
                match &*self.auth.lock().await {
                    AuthState::None => {}
                    AuthState::Basic(c) => req = req.basic_auth(&c.username, Some(&c.password)),
                    AuthState::Session { token, .. } => req = req.header("X-Auth-Token", token),
                }
            }
            if let Some(tag) = if_match {
                req = req.header(header::IF_MATCH, tag);
            }
            if let Some(body) = body {
                req = req.json(body);
            }
            // reqwest's own timeout covers the body too; this outer one also bounds the
            // time spent in our read loop should a BMC drip-feed a reply.
            let deadline = self.cfg.request_timeout + Duration::from_secs(1);
            let reply = tokio::time::timeout(deadline, self.exchange(req, &current))
                .await
                .map_err(|_| RedfishError::Timeout {
                    url: current.to_string(),
                    timeout: self.cfg.request_timeout,
                })??;
            if reply.status.is_redirection() {
                let Some(loc) = reply.location() else {
                    return Err(RedfishError::Malformed {
                        url: current.to_string(),
                        detail: format!("HTTP {} without a Location header", reply.status),
                    });
                };
                let next = current.join(loc).map_err(|e| RedfishError::Malformed {
                    url: current.to_string(),
                    detail: format!("unusable redirect Location {loc:?}: {e}"),
                })?;
                if !same_origin(&next, &self.origin) {
                    return Err(RedfishError::RedirectRefused {
                        from: current.to_string(),
                        to: next.to_string(),
                    });
                }
                current = next;
                continue;
            }
            return check_status(reply);
        }
        Err(RedfishError::TooManyRedirects {
            url: current.to_string(),
            limit: MAX_REDIRECTS,
        })
    }

    async fn exchange(&self, req: reqwest::RequestBuilder, url: &Url) -> Result<Reply> {
        let mut resp = req.send().await.map_err(|e| self.map_reqwest(e, url))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let limit = self.cfg.max_body_bytes;
        if resp.content_length().is_some_and(|n| n > limit as u64) {
            return Err(RedfishError::TooLarge {
                url: url.to_string(),
                limit,
            });
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| self.map_reqwest(e, url))? {
            if body.len() + chunk.len() > limit {
                return Err(RedfishError::TooLarge {
                    url: url.to_string(),
                    limit,
                });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Reply {
            status,
            headers,
            body,
            url: url.clone(),
        })
    }

    fn map_reqwest(&self, e: reqwest::Error, url: &Url) -> RedfishError {
        if e.is_timeout() {
            return RedfishError::Timeout {
                url: url.to_string(),
                timeout: self.cfg.request_timeout,
            };
        }
        if let Some(detail) = is_tls_error(&e) {
            return RedfishError::Tls {
                url: url.to_string(),
                detail,
            };
        }
        if e.is_connect() {
            return RedfishError::Connect {
                url: url.to_string(),
                detail: chain_text(&e),
            };
        }
        RedfishError::Http(format!("{url}: {}", chain_text(&e)))
    }

    /// Follows a task monitor (the Location of a 202 reply) until the operation ends, within
    /// the configured deadline. Returns the final reply's JSON when it has one.
    pub async fn wait_task(&self, accepted: &Reply) -> Result<Option<Value>> {
        let Some(location) = accepted.location() else {
            // A 202 without a monitor: the BMC took the request and offers no way to follow it.
            return Ok(None);
        };
        let monitor = self.resolve(location)?;
        let deadline = tokio::time::Instant::now() + self.cfg.task_deadline;
        let mut wait = retry_after(accepted).unwrap_or(self.cfg.poll_interval);
        loop {
            if tokio::time::Instant::now() + wait > deadline {
                return Err(RedfishError::TaskDeadline {
                    url: monitor.to_string(),
                    deadline: self.cfg.task_deadline,
                });
            }
            tokio::time::sleep(wait).await;
            let reply = self
                .request(Method::GET, monitor.clone(), None, None, Repeat::Idempotent)
                .await?;
            wait = retry_after(&reply).unwrap_or(self.cfg.poll_interval);
            if reply.status == StatusCode::ACCEPTED {
                continue;
            }
            if reply.body.is_empty() {
                return Ok(None);
            }
            let value = reply.json()?;
            match task_outcome(&value) {
                TaskOutcome::Running => continue,
                TaskOutcome::Done => return Ok(Some(value)),
                TaskOutcome::Failed { state, message } => {
                    return Err(RedfishError::TaskFailed {
                        url: monitor.to_string(),
                        state,
                        message,
                    });
                }
            }
        }
    }
}

fn retry_after(reply: &Reply) -> Option<Duration> {
    let secs: u64 = reply
        .headers
        .get(header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER))
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum TaskOutcome {
    Running,
    Done,
    Failed { state: String, message: String },
}

/// Reads a Task resource (or the final result a monitor hands back, which has no TaskState).
pub(crate) fn task_outcome(v: &Value) -> TaskOutcome {
    let Some(state) = v.get("TaskState").and_then(Value::as_str) else {
        return TaskOutcome::Done;
    };
    let message = v
        .get("Messages")
        .and_then(Value::as_array)
        .map(|ms| {
            ms.iter()
                .filter_map(|m| m.get("Message").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join("; ")
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "no message".into());
    match state {
        "New" | "Starting" | "Running" | "Pending" | "Stopping" | "Suspended" | "Service"
        | "Interrupted" => TaskOutcome::Running,
        "Completed" => match v.get("TaskStatus").and_then(Value::as_str) {
            Some("Critical") => TaskOutcome::Failed {
                state: "Completed with TaskStatus Critical".into(),
                message,
            },
            _ => TaskOutcome::Done,
        },
        other => TaskOutcome::Failed {
            state: other.to_string(),
            message,
        },
    }
}

fn check_status(reply: Reply) -> Result<Reply> {
    let status = reply.status;
    if status.is_success() {
        return Ok(reply);
    }
    let url = reply.url.to_string();
    let message = error_message(&reply.body);
    Err(match status.as_u16() {
        401 => RedfishError::Unauthorized { url },
        403 => RedfishError::Forbidden { url, message },
        404 => RedfishError::NotFound { url, message },
        412 | 428 => RedfishError::PreconditionFailed {
            url,
            status: status.as_u16(),
        },
        s if status.is_server_error() => RedfishError::Server {
            url,
            status: s,
            message,
        },
        s => RedfishError::Rejected {
            url,
            status: s,
            message,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn origins() {
        assert_eq!(
            parse_origin("https://10.0.40.21/redfish/v1")
                .unwrap()
                .as_str(),
            "https://10.0.40.21/"
        );
        assert!(parse_origin("ftp://x").is_err());
        assert!(parse_origin("not a url").is_err());
        assert!(parse_origin("https://root:calvin@10.0.0.1").is_err());
        let a = Url::parse("https://h:443/a").unwrap();
        assert!(same_origin(&a, &Url::parse("https://h/b").unwrap()));
        assert!(!same_origin(&a, &Url::parse("http://h/b").unwrap()));
        assert!(!same_origin(&a, &Url::parse("https://h:8443/b").unwrap()));
        assert!(!same_origin(&a, &Url::parse("https://evil/b").unwrap()));
    }

    #[test]
    fn task_states() {
        assert_eq!(
            task_outcome(&json!({"TaskState": "Running"})),
            TaskOutcome::Running
        );
        assert_eq!(
            task_outcome(&json!({"TaskState": "Completed", "TaskStatus": "OK"})),
            TaskOutcome::Done
        );
        assert_eq!(task_outcome(&json!({"Id": "1"})), TaskOutcome::Done);
        assert!(matches!(
            task_outcome(&json!({"TaskState": "Exception", "Messages": [{"Message": "boom"}]})),
            TaskOutcome::Failed { message, .. } if message == "boom"
        ));
        assert!(matches!(
            task_outcome(&json!({"TaskState": "Completed", "TaskStatus": "Critical"})),
            TaskOutcome::Failed { .. }
        ));
        assert!(matches!(
            task_outcome(&json!({"TaskState": "Killed"})),
            TaskOutcome::Failed { .. }
        ));
    }

    #[test]
    fn error_messages() {
        let body = br#"{"error":{"code":"Base.1.0.GeneralError","message":"A general error has occurred.","@Message.ExtendedInfo":[{"Message":"The property X is read only."}]}}"#;
        assert_eq!(
            error_message(body),
            "A general error has occurred.; The property X is read only."
        );
        assert_eq!(error_message(b""), "no detail given");
        let long = "x".repeat(1000);
        assert!(error_message(long.as_bytes()).chars().count() <= 201);
    }
}
