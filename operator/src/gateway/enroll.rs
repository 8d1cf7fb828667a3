//! Enrollment: a freshly reimaged endpoint's agent trades the one-attempt enrollment credential
//! from its `agent.json` (written by the imaging environment) for the endpoint's own gateway
//! token, so the loop closes without anyone issuing tokens by hand.
//!
//! `POST /v1/enroll` with `{"namespace", "endpoint", "attemptId", "enrollmentToken"}`:
//!
//! | status | meaning |
//! |---|---|
//! | 200 | `{"token": "rct_..."}`: the endpoint's new token (the old one stops working) |
//! | 400 | not the enrollment schema |
//! | 401 | the enrollment credential is not the one recast derived for this attempt |
//! | 404 | enrollment is off on this gateway, or the endpoint does not exist |
//! | 409 | the endpoint's attempt is not this one, it is not waiting for its check-in, or it already enrolled |
//! | 413 | body larger than 4 KiB |
//! | 415 | not application/json |
//! | 503 | the attempt's imaging result is not recorded yet (retry), or the store is unavailable |
//! | 429 | rate limited |
//!
//! The credential is an HMAC under the imaging key (shared with the boot service), bound to
//! the namespace, endpoint and attempt. It works once, and only while that attempt waits for
//! the new image's first report (step FirstBoot, which only the imaging result of the machine
//! that claimed the try reaches): an `agent.json` from an earlier attempt, or a copy of this
//! one, cannot take over an endpoint or lock its agent out by rotating its token.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use recast_crds::Endpoint;
use recast_crds::endpoint::ReimageStep;
use serde::{Deserialize, Serialize};

use super::{Gateway, lock};
use crate::boot::http::enrollment_token_valid;
use crate::store::{Backend, Key};

/// An enrollment request is four short strings.
pub const MAX_ENROLL_BYTES: usize = 4096;

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnrollRequest {
    pub namespace: String,
    pub endpoint: String,
    pub attempt_id: String,
    pub enrollment_token: String,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct EnrollResponse {
    pub token: String,
}

#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error("send the enrollment as Content-Type: application/json")]
    ContentType,
    #[error("the enrollment body is larger than {MAX_ENROLL_BYTES} bytes")]
    TooLarge,
    #[error(
        "not an enrollment request ({0}); send namespace, endpoint, attemptId and enrollmentToken from agent.json"
    )]
    Decode(String),
    #[error(
        "enrollment is off on this gateway: start it with the imaging key (--imaging-key-file) the boot service uses"
    )]
    Disabled,
    #[error(
        "the enrollment credential does not match this endpoint and attempt; use the agent.json of the current reimage"
    )]
    BadCredential,
    #[error("endpoint {0} does not exist")]
    UnknownEndpoint(String),
    #[error("{0}")]
    NotAwaitingCheckIn(String),
    /// The imaging result of this attempt is not decided yet: retry shortly.
    #[error("{0}")]
    Early(String),
    #[error("too many enrollments; retry in {0}s")]
    RateLimited(u64),
    #[error("the store is unavailable ({0}); retry later")]
    Store(#[from] super::StoreUnavailable),
}

impl EnrollError {
    pub fn status(&self) -> StatusCode {
        match self {
            EnrollError::ContentType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            EnrollError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            EnrollError::Decode(_) => StatusCode::BAD_REQUEST,
            EnrollError::Disabled | EnrollError::UnknownEndpoint(_) => StatusCode::NOT_FOUND,
            EnrollError::BadCredential => StatusCode::UNAUTHORIZED,
            EnrollError::NotAwaitingCheckIn(_) => StatusCode::CONFLICT,
            EnrollError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            EnrollError::Store(_) | EnrollError::Early(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// Whether `ep` is waiting for the check-in of attempt `attempt_id` (pure).
pub fn awaiting_check_in(ep: &Endpoint, attempt_id: &str) -> Result<(), EnrollError> {
    let name = ep.metadata.name.clone().unwrap_or_default();
    let active = ep.status.as_ref().and_then(|s| s.active_attempt.as_ref());
    match active {
        Some(a) if a.id == attempt_id => match a.step {
            // Only after the imaging result: that came with the session token of the machine
            // that claimed the try, from its address. (The agent retries enrollment while the
            // result is still being decided.)
            ReimageStep::FirstBoot => Ok(()),
            ReimageStep::Applying => Err(EnrollError::Early(format!(
                "attempt {attempt_id} of {name} has not recorded its imaging result yet; retry in a few seconds"
            ))),
            step => Err(EnrollError::NotAwaitingCheckIn(format!(
                "attempt {attempt_id} of {name} is at step {step:?}, not waiting for the new image's first report"
            ))),
        },
        Some(a) => Err(EnrollError::NotAwaitingCheckIn(format!(
            "{name}'s running attempt is {}, not {attempt_id}; this agent.json belongs to another reimage",
            a.id
        ))),
        None => Err(EnrollError::NotAwaitingCheckIn(format!(
            "{name} has no reimage running; issue a token with `recastctl token issue` instead"
        ))),
    }
}

impl<B: Backend> Gateway<B> {
    /// Checks an enrollment and, when it holds, issues (rotates) the endpoint's token.
    pub async fn enroll(&self, headers: &HeaderMap, body: &[u8]) -> Result<String, EnrollError> {
        let now_s = self.seconds();
        lock(&self.global)
            .take(self.config.global_rate, now_s)
            .map_err(|d| EnrollError::RateLimited(d.as_secs().max(1)))?;
        let json = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().starts_with("application/json"));
        if !json {
            return Err(EnrollError::ContentType);
        }
        if body.len() > MAX_ENROLL_BYTES {
            return Err(EnrollError::TooLarge);
        }
        let req: EnrollRequest =
            serde_json::from_slice(body).map_err(|e| EnrollError::Decode(e.to_string()))?;
        let key = self.enrollment_key.as_ref().ok_or(EnrollError::Disabled)?;
        if !enrollment_token_valid(
            key,
            &req.namespace,
            &req.endpoint,
            &req.attempt_id,
            &req.enrollment_token,
        ) {
            return Err(EnrollError::BadCredential);
        }
        let who = Key {
            namespace: req.namespace.clone(),
            name: req.endpoint.clone(),
        };
        let ep = self
            .backend
            .endpoint(&who)
            .await
            .map_err(|e| EnrollError::Store(e.into()))?
            .ok_or_else(|| EnrollError::UnknownEndpoint(who.to_string()))?;
        awaiting_check_in(&ep, &req.attempt_id)?;
        let token = self
            .credentials
            .enroll_once(
                &who,
                &req.attempt_id,
                &recast_core::time::format(self.clock.now()),
            )
            .await
            .map_err(|e| EnrollError::Store(e.into()))?
            .ok_or_else(|| {
                EnrollError::NotAwaitingCheckIn(format!(
                    "attempt {} of {who} already enrolled; its credential works once (reimage again, or issue a token with `recastctl token issue`)",
                    req.attempt_id
                ))
            })?;
        tracing::info!(endpoint = %who, attempt = %req.attempt_id, "agent enrolled; the endpoint's previous token no longer works");
        Ok(token)
    }
}

pub(super) async fn post_enroll<B: Backend>(
    State(gw): State<Arc<Gateway<B>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match gw.enroll(&headers, &body).await {
        Ok(token) => (
            StatusCode::OK,
            [(header::CACHE_CONTROL, "no-store")],
            axum::Json(EnrollResponse { token }),
        )
            .into_response(),
        Err(e) => {
            let status = e.status();
            let mut resp = (status, e.to_string()).into_response();
            if let EnrollError::RateLimited(s) = e
                && let Ok(v) = header::HeaderValue::from_str(&s.to_string())
            {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
            resp
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use recast_crds::endpoint::{Attempt, EndpointStatus};

    fn endpoint(attempt: Option<(&str, ReimageStep)>) -> Endpoint {
        let mut ep: Endpoint = serde_json::from_value(serde_json::json!({
            "apiVersion": "recast.dev/v1alpha1", "kind": "Endpoint",
            "metadata": {"name": "kiosk-01", "namespace": "default"},
            "spec": {"identity": {"macAddresses": ["52:54:00:a1:00:01"]}, "bootMode": "uefi",
                     "image": {"channel": "stable"}}
        }))
        .unwrap();
        let active_attempt = attempt.map(|(id, step)| {
            let mut a: Attempt = serde_json::from_value(serde_json::json!({
                "id": id, "trigger": "FailedRollback", "image": "win11", "step": "Booting",
                "tryNumber": 1, "startedAt": "2026-01-14T08:00:00Z",
                "tryStartedAt": "2026-01-14T08:00:00Z", "stepStartedAt": "2026-01-14T08:00:00Z"
            }))
            .unwrap();
            a.step = step;
            a
        });
        ep.status = Some(EndpointStatus {
            active_attempt,
            ..Default::default()
        });
        ep
    }

    #[test]
    fn only_the_running_attempt_waiting_for_its_check_in_may_enroll() {
        assert!(awaiting_check_in(&endpoint(Some(("a-2", ReimageStep::FirstBoot))), "a-2").is_ok());
        let early =
            awaiting_check_in(&endpoint(Some(("a-2", ReimageStep::Applying))), "a-2").unwrap_err();
        assert_eq!(early.status(), StatusCode::SERVICE_UNAVAILABLE, "{early}");
        for step in [
            ReimageStep::ArmingBoot,
            ReimageStep::PowerCycling,
            ReimageStep::Booting,
        ] {
            let e = awaiting_check_in(&endpoint(Some(("a-2", step))), "a-2").unwrap_err();
            assert_eq!(e.status(), StatusCode::CONFLICT, "{e}");
        }
        let old =
            awaiting_check_in(&endpoint(Some(("a-2", ReimageStep::FirstBoot))), "a-1").unwrap_err();
        assert!(
            old.to_string().contains("belongs to another reimage"),
            "{old}"
        );
        let idle = awaiting_check_in(&endpoint(None), "a-1").unwrap_err();
        assert!(idle.to_string().contains("recastctl token issue"), "{idle}");
    }
}
