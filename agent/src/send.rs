//! Sending reports to the gateway: HTTPS with rustls (ring provider), a bearer token, and a
//! clear reading of each answer.

use recast_crds::error_chain;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use recast_crds::report::{AgentReport, ReportReply};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("reading the gateway CA bundle {path}: {message}")]
    Ca { path: String, message: String },
    #[error("setting up TLS: {0}")]
    Tls(String),
    #[error("building the HTTP client: {0}")]
    Client(String),
    #[error("sending the report to {url}: {message}")]
    Transport { url: String, message: String },
}

/// How the gateway answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SendOutcome {
    /// 2xx: stored (or coalesced).
    Accepted,
    /// 401/403: the token is wrong, revoked or for another endpoint. Retrying will not help;
    /// the endpoint needs a new token.
    Unauthorized(String),
    /// 409: the sequence was not above the last accepted one.
    Replayed(String),
    /// 429: slow down; retry after this long.
    RateLimited(Duration),
    /// Any other 4xx: the report itself was refused (schema, size); the message says why.
    Rejected(u16, String),
    /// 5xx: the gateway's problem; retry next interval.
    ServerError(u16, String),
}

/// One HTTPS client for the gateway. Cheap to share: the simulator sends as many endpoints
/// through one connection pool, each with its own token.
#[derive(Clone)]
pub struct Sender {
    client: reqwest::Client,
    url: String,
    enroll_url: String,
}

/// A rustls client config with the ring provider and exactly the given roots (or the
/// platform's through rustls-platform-verifier when none are given).
fn tls_config(ca_file: Option<&Path>) -> Result<Option<rustls::ClientConfig>, SendError> {
    let Some(path) = ca_file else {
        return Ok(None);
    };
    let ca_err = |message: String| SendError::Ca {
        path: path.display().to_string(),
        message,
    };
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| ca_err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ca_err(e.to_string()))?;
    if certs.is_empty() {
        return Err(ca_err("no PEM certificate in the file".into()));
    }
    for c in certs {
        roots.add(c).map_err(|e| ca_err(e.to_string()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| SendError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(config))
}

impl Sender {
    /// `gateway` is the base URL ("https://recast.example:8443"); reports go to
    /// `/v1/reports` under it.
    pub fn new(gateway: &str, ca_file: Option<&Path>) -> Result<Self, SendError> {
        // reqwest is built without a default provider; ring is the one kube already uses.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(10));
        if let Some(config) = tls_config(ca_file)? {
            builder = builder.tls_backend_preconfigured(config);
        }
        let client = builder
            .build()
            .map_err(|e| SendError::Client(e.to_string()))?;
        Ok(Sender {
            client,
            url: format!("{}/v1/reports", gateway.trim_end_matches('/')),
            enroll_url: format!("{}/v1/enroll", gateway.trim_end_matches('/')),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub async fn send(&self, token: &str, report: &AgentReport) -> Result<SendOutcome, SendError> {
        Ok(self.send_with_reply(token, report).await?.0)
    }

    /// Sends a report and returns, when the gateway accepted it and knows about holds, its
    /// reply (the update hold to apply). A gateway that answers 204 has no reply.
    pub async fn send_with_reply(
        &self,
        token: &str,
        report: &AgentReport,
    ) -> Result<(SendOutcome, Option<ReportReply>), SendError> {
        let body = serde_json::to_vec(report).map_err(|e| SendError::Transport {
            url: self.url.clone(),
            message: e.to_string(),
        })?;
        self.send_body_with_reply(token, body).await
    }

    /// Posts arbitrary bytes with an optional token and any Content-Type, and returns the raw
    /// status and body: for tests that must send what a well-behaved agent never would.
    pub async fn post_raw(
        &self,
        token: Option<&str>,
        content_type: &str,
        body: Vec<u8>,
    ) -> Result<(u16, String), SendError> {
        let mut req = self
            .client
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.map_err(|e| SendError::Transport {
            url: self.url.clone(),
            message: error_chain(&e),
        })?;
        let status = resp.status().as_u16();
        Ok((status, resp.text().await.unwrap_or_default()))
    }

    /// Sends a serialised report.
    pub async fn send_body(&self, token: &str, body: Vec<u8>) -> Result<SendOutcome, SendError> {
        Ok(self.send_body_with_reply(token, body).await?.0)
    }

    async fn send_body_with_reply(
        &self,
        token: &str,
        body: Vec<u8>,
    ) -> Result<(SendOutcome, Option<ReportReply>), SendError> {
        let resp = self
            .client
            .post(&self.url)
            .bearer_auth(token)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| SendError::Transport {
                url: self.url.clone(),
                message: error_chain(&e),
            })?;
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let full = resp.text().await.unwrap_or_default();
        let reply = match status {
            // An unreadable reply is no instruction: the hold stays as the agent last had it.
            200..=299 => serde_json::from_str::<ReportReply>(&full).ok(),
            _ => None,
        };
        let text: String = full.chars().take(512).collect();
        let outcome = match status {
            200..=299 => SendOutcome::Accepted,
            401 | 403 => SendOutcome::Unauthorized(text),
            409 => SendOutcome::Replayed(text),
            429 => SendOutcome::RateLimited(retry_after.unwrap_or(Duration::from_secs(60))),
            400..=499 => SendOutcome::Rejected(status, text),
            _ => SendOutcome::ServerError(status, text),
        };
        Ok((outcome, reply))
    }
}

impl Sender {
    /// Trades a reimage's enrollment credential (from agent.json) for the endpoint's token.
    /// Ok(Err((status, message))) when the gateway refused; the message says why.
    pub async fn enroll(
        &self,
        config: &crate::enroll::AgentConfig,
    ) -> Result<Result<String, (u16, String)>, SendError> {
        let transport = |e: reqwest::Error| SendError::Transport {
            url: self.enroll_url.clone(),
            message: error_chain(&e),
        };
        let resp = self
            .client
            .post(&self.enroll_url)
            .json(&serde_json::json!({
                "namespace": config.namespace,
                "endpoint": config.endpoint,
                "attemptId": config.attempt_id,
                "enrollmentToken": config.enrollment_token,
            }))
            .send()
            .await
            .map_err(transport)?;
        let status = resp.status().as_u16();
        let text = resp.text().await.map_err(transport)?;
        if status != 200 {
            return Ok(Err((status, text.chars().take(512).collect())));
        }
        let token = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v.get("token")?.as_str().map(String::from))
            .ok_or_else(|| SendError::Transport {
                url: self.enroll_url.clone(),
                message: "the enrollment answer holds no token".into(),
            })?;
        Ok(Ok(token))
    }
}
