//! Everything that can go wrong talking to a BMC, split by whether retrying can help.

use std::time::Duration;

/// An error from the Redfish client. `is_permanent` tells callers whether retrying later can
/// help (a BMC that is rebooting) or a person must act (wrong password, no such system).
#[derive(Debug, thiserror::Error)]
pub enum RedfishError {
    #[error(
        "BMC address {address:?} is not usable: {reason}; set spec.bmc.address to a URL such as https://10.0.40.21"
    )]
    InvalidAddress { address: String, reason: String },

    #[error("TLS setup failed: {0}")]
    TlsConfig(String),

    #[error(
        "TLS handshake with {url} failed: {detail}; if the BMC has a self-signed certificate, give its CA bundle (caBundleSecretRef) instead of disabling verification"
    )]
    Tls { url: String, detail: String },

    #[error(
        "could not connect to the BMC at {url}: {detail}; check the address and that the BMC is reachable"
    )]
    Connect { url: String, detail: String },

    #[error("the BMC at {url} did not answer within {timeout:?}; it may be busy or rebooting")]
    Timeout { url: String, timeout: Duration },

    #[error(
        "the BMC refused the credentials (HTTP 401) for {url}: check the username and password in the credentials Secret"
    )]
    Unauthorized { url: String },

    #[error(
        "the BMC account is not allowed to do this (HTTP 403) at {url}: {message}; give the account the Operator or Administrator role"
    )]
    Forbidden { url: String, message: String },

    #[error("the BMC has no resource at {url} (HTTP 404): {message}")]
    NotFound { url: String, message: String },

    #[error(
        "the BMC refused the change to {url} on its ETag precondition (HTTP {status}: 412 means someone changed it meanwhile, 428 that it wants If-Match) even after re-reading it once; try again"
    )]
    PreconditionFailed { url: String, status: u16 },

    #[error("the BMC rejected the request to {url} (HTTP {status}): {message}")]
    Rejected {
        url: String,
        status: u16,
        message: String,
    },

    #[error("the BMC failed on {url} (HTTP {status}): {message}")]
    Server {
        url: String,
        status: u16,
        message: String,
    },

    #[error("the BMC's reply from {url} is not valid Redfish JSON: {detail}")]
    Malformed { url: String, detail: String },

    #[error("the BMC's reply from {url} lacks {property} or has the wrong type for it")]
    MissingProperty { url: String, property: String },

    #[error("the BMC's reply from {url} is larger than the {limit}-byte cap; refusing to read it")]
    TooLarge { url: String, limit: usize },

    #[error(
        "the BMC at {from} redirected to {to}, another origin; refusing to follow (credentials would leak)"
    )]
    RedirectRefused { from: String, to: String },

    #[error("the BMC at {url} redirected more than {limit} times")]
    TooManyRedirects { url: String, limit: usize },

    #[error("the BMC does not support {what}")]
    Unsupported { what: String },

    #[error(
        "the BMC exposes {count} systems ({ids}); set spec.bmc.systemId to the one this endpoint is"
    )]
    AmbiguousSystem { count: usize, ids: String },

    #[error("the BMC task at {url} ended as {state}: {message}")]
    TaskFailed {
        url: String,
        state: String,
        message: String,
    },

    #[error("the BMC task at {url} did not finish within {deadline:?}")]
    TaskDeadline { url: String, deadline: Duration },

    #[error("the BMC accepted {what} but did not apply it: {detail}")]
    NotApplied { what: String, detail: String },

    #[error("request to the BMC failed: {0}")]
    Http(String),
}

impl RedfishError {
    /// True when retrying cannot help and a person must act: bad credentials, missing
    /// resources, unsupported features, a request the BMC rejects as wrong. Server errors,
    /// timeouts, connection failures and conflicting concurrent changes are transient.
    pub fn is_permanent(&self) -> bool {
        match self {
            RedfishError::InvalidAddress { .. }
            | RedfishError::TlsConfig(_)
            | RedfishError::Tls { .. }
            | RedfishError::Unauthorized { .. }
            | RedfishError::Forbidden { .. }
            | RedfishError::NotFound { .. }
            | RedfishError::Rejected { .. }
            | RedfishError::Malformed { .. }
            | RedfishError::MissingProperty { .. }
            | RedfishError::TooLarge { .. }
            | RedfishError::RedirectRefused { .. }
            | RedfishError::TooManyRedirects { .. }
            | RedfishError::Unsupported { .. }
            | RedfishError::AmbiguousSystem { .. } => true,
            RedfishError::Connect { .. }
            | RedfishError::Timeout { .. }
            | RedfishError::PreconditionFailed { .. }
            | RedfishError::Server { .. }
            | RedfishError::TaskFailed { .. }
            | RedfishError::TaskDeadline { .. }
            | RedfishError::NotApplied { .. }
            | RedfishError::Http(_) => false,
        }
    }

    /// True for failures where the same request may succeed when repeated right away:
    /// server errors and timeouts (never 4xx).
    pub(crate) fn is_retryable(&self) -> bool {
        matches!(
            self,
            RedfishError::Server { .. }
                | RedfishError::Timeout { .. }
                | RedfishError::Connect { .. }
        )
    }
}

pub type Result<T, E = RedfishError> = std::result::Result<T, E>;
