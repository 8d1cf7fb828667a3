//! Inputs from a boot service that may not write: on the Kubernetes backend the boot pods
//! (host network, parsing DHCP/TFTP/HTTP from the wire) hold a read-only ServiceAccount, so
//! what they see (NetworkBooted, NetworkBootObserved, HandedOff, ImagingProgress,
//! ImagingFinished) is sent to the operator's
//! internal endpoint, and any operator replica queues it in the endpoint's inbox.
//!
//! Each message is signed with HMAC-SHA256 under a key derived from the imaging key, which the
//! boot pods and the operator already share; it carries a random id and its send time. The
//! receiver refuses a bad signature, a message older or newer than [`MAX_SKEW`], an id it has
//! already seen, and any input other than those the boot service produces. The inbox entry
//! is named after the message id, so a replay to another replica within the window rewrites the
//! same entry instead of adding one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::store::{BackendError, InputSink, Key};
use crate::token::TokenKey;
use recast_core::lifecycle::Input;

type HmacSha256 = Hmac<Sha256>;

/// Where the operator accepts forwarded inputs.
pub const PATH: &str = "/internal/v1/inputs";
/// Hex HMAC-SHA256 of the request body.
pub const SIGNATURE_HEADER: &str = "x-recast-signature";
/// How far a message's send time may be from the receiver's clock.
pub const MAX_SKEW: Duration = Duration::from_secs(60);
/// The purpose the forwarding key is derived for (see `TokenKey::derive`).
const PURPOSE: &str = "boot service inputs to the operator v1";
/// Ids remembered at most; beyond it new messages are refused until old ones expire (a flood
/// of validly signed messages can only come from a key holder).
const MAX_REMEMBERED: usize = 100_000;

/// One forwarded input.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Forwarded {
    pub namespace: String,
    pub name: String,
    /// 32 lower-case hex digits, random per message.
    pub id: String,
    /// Unix time in nanoseconds when it was sent.
    pub sent_at: i64,
    pub input: Input,
}

impl Forwarded {
    /// The inbox entry it becomes: sortable by send time, the same for a replay.
    pub fn entry_id(&self) -> String {
        format!("{:020}-{}", self.sent_at.max(0), &self.id[..16])
    }

    pub fn key(&self) -> Key {
        Key {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }
}

/// Why a forwarded input was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error(
        "bad or missing {SIGNATURE_HEADER}: the sender does not hold this operator's imaging key (do the boot pods and the operator mount the same imaging-key Secret?)"
    )]
    BadSignature,
    #[error("not a forwarded input: {0}")]
    Malformed(String),
    #[error(
        "sent {0} s away from this replica's clock (more than {max} s): a replay, or clocks out of sync (check NTP on the nodes)",
        max = MAX_SKEW.as_secs()
    )]
    Stale(i64),
    #[error("message {0} was already received (a replay)")]
    Replayed(String),
    #[error("{0} is not an input the boot service sends")]
    NotABootInput(String),
    #[error("too many messages in the last {} s; retry shortly", MAX_SKEW.as_secs() * 2)]
    Busy,
}

/// The signing key, derived from the imaging key.
#[derive(Clone)]
pub struct ForwardKey([u8; 32]);

impl ForwardKey {
    pub fn new(imaging: &TokenKey) -> ForwardKey {
        ForwardKey::derived(imaging, PURPOSE)
    }

    /// A signing key for another kind of message between the boot pods and the operator.
    pub fn derived(imaging: &TokenKey, purpose: &str) -> ForwardKey {
        ForwardKey(imaging.derive(purpose))
    }

    /// HMAC takes keys of any length, so this is always Some; an empty signature (which never
    /// verifies) stands for the impossible None.
    fn mac(&self) -> Option<HmacSha256> {
        <HmacSha256 as Mac>::new_from_slice(&self.0).ok()
    }

    pub fn sign(&self, body: &[u8]) -> String {
        let Some(mut mac) = self.mac() else {
            return String::new();
        };
        mac.update(body);
        mac.finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    pub fn verify(&self, body: &[u8], signature: &str) -> bool {
        let (Some(bytes), Some(mut mac)) = (unhex(signature), self.mac()) else {
            return false;
        };
        mac.update(body);
        mac.verify_slice(&bytes).is_ok()
    }
}

pub(super) fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Message ids seen within the skew window (per receiving replica).
#[derive(Default)]
pub struct ReplayCache {
    seen: HashMap<String, i64>,
}

impl ReplayCache {
    /// Remembers a fresh message's id past both edges of the skew window, so it cannot come
    /// back while still fresh.
    pub fn remember_message(&mut self, id: &str, sent_at: i64, now: i64) -> Result<(), Refused> {
        let skew = skew_ns();
        self.remember(id, now, sent_at.saturating_add(skew).max(now) + skew)
    }

    /// Remembers `id` until `expires` (ns); false when it was already there.
    fn remember(&mut self, id: &str, now: i64, expires: i64) -> Result<(), Refused> {
        if self.seen.len() >= MAX_REMEMBERED {
            self.seen.retain(|_, until| *until > now);
        }
        if self.seen.get(id).is_some_and(|until| *until > now) {
            return Err(Refused::Replayed(id.to_string()));
        }
        if self.seen.len() >= MAX_REMEMBERED {
            return Err(Refused::Busy);
        }
        self.seen.insert(id.to_string(), expires);
        Ok(())
    }
}

/// Checks one request (pure but for the replay cache it updates): the signature over the exact
/// bytes first, then the content, the time and the id.
pub fn accept(
    key: &ForwardKey,
    body: &[u8],
    signature: Option<&str>,
    now_ns: i64,
    cache: &mut ReplayCache,
) -> Result<Forwarded, Refused> {
    if !signature.is_some_and(|s| key.verify(body, s)) {
        return Err(Refused::BadSignature);
    }
    let msg: Forwarded =
        serde_json::from_slice(body).map_err(|e| Refused::Malformed(e.to_string()))?;
    check_id(&msg.id)?;
    if msg.namespace.is_empty() || msg.name.is_empty() {
        return Err(Refused::Malformed("no endpoint".into()));
    }
    check_fresh(msg.sent_at, now_ns)?;
    match &msg.input {
        Input::NetworkBooted { .. }
        | Input::NetworkBootObserved { .. }
        | Input::HandedOff { .. }
        | Input::ImagingProgress { .. }
        | Input::ImagingFinished { .. } => {}
        other => {
            let kind = serde_json::to_value(other)
                .ok()
                .and_then(|v| v.get("type").and_then(|t| t.as_str()).map(str::to_string))
                .unwrap_or_else(|| "this input".into());
            return Err(Refused::NotABootInput(kind));
        }
    }
    cache.remember_message(&msg.id, msg.sent_at, now_ns)?;
    Ok(msg)
}

/// A message id's shape: 32 hex digits (random per message).
pub(super) fn check_id(id: &str) -> Result<(), Refused> {
    if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Refused::Malformed("id must be 32 hex digits".into()));
    }
    Ok(())
}

fn skew_ns() -> i64 {
    i64::try_from(MAX_SKEW.as_nanos()).unwrap_or(i64::MAX)
}

/// Refuses a message sent more than [`MAX_SKEW`] away from the receiver's clock.
pub(super) fn check_fresh(sent_at: i64, now_ns: i64) -> Result<(), Refused> {
    let off = now_ns.saturating_sub(sent_at);
    if off.abs() > skew_ns() {
        return Err(Refused::Stale(off / 1_000_000_000));
    }
    Ok(())
}

impl Refused {
    /// The HTTP status a refused message gets.
    pub fn status(&self) -> StatusCode {
        match self {
            Refused::BadSignature => StatusCode::UNAUTHORIZED,
            Refused::Replayed(_) => StatusCode::CONFLICT,
            Refused::Busy => StatusCode::TOO_MANY_REQUESTS,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

pub(super) fn now_ns() -> i64 {
    i64::try_from(jiff::Timestamp::now().as_nanosecond()).unwrap_or(i64::MAX)
}

/// Builds a signed message for `input` (the body and its signature).
pub fn seal(key: &ForwardKey, target: &Key, input: &Input) -> Result<(Vec<u8>, String), String> {
    let msg = Forwarded {
        namespace: target.namespace.clone(),
        name: target.name.clone(),
        id: uuid::Uuid::new_v4().simple().to_string(),
        sent_at: now_ns(),
        input: input.clone(),
    };
    let body = serde_json::to_vec(&msg).map_err(|e| e.to_string())?;
    let sig = key.sign(&body);
    Ok((body, sig))
}

/// The boot pod's side: posts inputs to the operator Service.
pub struct Forwarder {
    url: String,
    key: ForwardKey,
    client: reqwest::Client,
}

impl Forwarder {
    /// `base` is the operator's internal URL, such as http://recast-operator.recast-system:8090.
    pub fn new(base: &str, imaging: &TokenKey) -> Result<Forwarder, String> {
        // reqwest is built without a default TLS provider; installing ring (as the image
        // fetcher does) is idempotent.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("cannot build the forwarding client: {e}"))?;
        Ok(Forwarder {
            url: format!("{}{PATH}", base.trim_end_matches('/')),
            key: ForwardKey::new(imaging),
            client,
        })
    }

    /// Sends one input, trying three times (another replica may answer the retry).
    pub async fn post(&self, target: &Key, input: &Input) -> Result<(), BackendError> {
        let mut last = String::new();
        for wait in [0u64, 300, 1500] {
            tokio::time::sleep(Duration::from_millis(wait)).await;
            // Sealed afresh each time: a retry is a new message, never a replay.
            let (body, sig) = seal(&self.key, target, input).map_err(BackendError::Invalid)?;
            match self
                .client
                .post(&self.url)
                .header(SIGNATURE_HEADER, sig)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
            {
                Ok(r) if r.status().is_success() => return Ok(()),
                Ok(r) => {
                    let status = r.status();
                    last = format!("{status}: {}", r.text().await.unwrap_or_default().trim());
                    // The operator refused the message itself: a retry gets the same answer.
                    if status.is_client_error() && status != StatusCode::TOO_MANY_REQUESTS {
                        break;
                    }
                }
                Err(e) => last = e.to_string(),
            }
        }
        Err(BackendError::Unavailable(format!(
            "the operator at {} did not take the input: {last}",
            self.url
        )))
    }
}

struct Receiver<S> {
    key: ForwardKey,
    cache: Mutex<ReplayCache>,
    sink: Arc<S>,
}

/// The operator's side: `POST /internal/v1/inputs`.
pub fn router<S: InputSink>(imaging: &TokenKey, sink: Arc<S>) -> Router {
    let state = Arc::new(Receiver {
        key: ForwardKey::new(imaging),
        cache: Mutex::new(ReplayCache::default()),
        sink,
    });
    Router::new()
        .route(PATH, post(receive::<S>))
        // Inputs are small; a bigger body is not one.
        .layer(axum::extract::DefaultBodyLimit::max(64 * 1024))
        .with_state(state)
}

async fn receive<S: InputSink>(
    State(r): State<Arc<Receiver<S>>>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    let sig = headers.get(SIGNATURE_HEADER).and_then(|v| v.to_str().ok());
    let accepted = {
        let mut cache = r.cache.lock().unwrap_or_else(|p| p.into_inner());
        accept(&r.key, &body, sig, now_ns(), &mut cache)
    };
    let msg = match accepted {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(error = %e, "refused a forwarded input");
            return (e.status(), format!("{e}\n"));
        }
    };
    match r.sink.queue(&msg.key(), &msg.entry_id(), &msg.input).await {
        Ok(()) => (StatusCode::ACCEPTED, "queued\n".into()),
        Err(e) => {
            tracing::warn!(endpoint = %msg.key(), error = %e, "cannot queue a forwarded input");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("cannot queue it: {e}\n"),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> ForwardKey {
        ForwardKey::new(&TokenKey::from_bytes([7; 32]))
    }

    fn booted() -> Input {
        Input::NetworkBooted {
            attempt_id: "a1".into(),
            try_number: Some(1),
            client: Some("10.0.40.17".into()),
        }
    }

    fn target() -> Key {
        Key {
            namespace: "tenant-a".into(),
            name: "kiosk-01".into(),
        }
    }

    #[test]
    fn a_sealed_message_is_accepted_once() {
        let (body, sig) = seal(&key(), &target(), &booted()).unwrap();
        let mut cache = ReplayCache::default();
        let msg = accept(&key(), &body, Some(&sig), now_ns(), &mut cache).unwrap();
        assert_eq!(msg.key(), target());
        assert_eq!(msg.input, booted());
        assert_eq!(
            accept(&key(), &body, Some(&sig), now_ns(), &mut cache),
            Err(Refused::Replayed(msg.id.clone()))
        );
    }

    #[test]
    fn another_key_or_a_changed_body_is_refused() {
        let (body, sig) = seal(&key(), &target(), &booted()).unwrap();
        let other = ForwardKey::new(&TokenKey::from_bytes([8; 32]));
        let mut cache = ReplayCache::default();
        assert_eq!(
            accept(&other, &body, Some(&sig), now_ns(), &mut cache),
            Err(Refused::BadSignature)
        );
        let mut changed = body.clone();
        let at = changed.iter().position(|b| *b == b'a').unwrap();
        changed[at] = b'b';
        assert_eq!(
            accept(&key(), &changed, Some(&sig), now_ns(), &mut cache),
            Err(Refused::BadSignature)
        );
        assert_eq!(
            accept(&key(), &body, None, now_ns(), &mut cache),
            Err(Refused::BadSignature)
        );
        assert_eq!(
            accept(&key(), &body, Some("zz"), now_ns(), &mut cache),
            Err(Refused::BadSignature)
        );
        // The imaging token of the same key is no forwarding signature.
        let token = TokenKey::from_bytes([7; 32]).token("tenant-a", "kiosk-01", "a1", 1);
        assert_eq!(
            accept(&key(), &body, Some(&token), now_ns(), &mut cache),
            Err(Refused::BadSignature)
        );
    }

    #[test]
    fn old_or_future_messages_are_refused() {
        let k = key();
        let (body, sig) = seal(&k, &target(), &booted()).unwrap();
        let mut cache = ReplayCache::default();
        let later = now_ns() + 2 * 60 * 1_000_000_000;
        assert!(matches!(
            accept(&k, &body, Some(&sig), later, &mut cache),
            Err(Refused::Stale(_))
        ));
        let earlier = now_ns() - 2 * 60 * 1_000_000_000;
        assert!(matches!(
            accept(&k, &body, Some(&sig), earlier, &mut cache),
            Err(Refused::Stale(_))
        ));
    }

    #[test]
    fn only_boot_service_inputs_pass() {
        let k = key();
        for input in [
            Input::Reconcile,
            Input::BmcCrash {
                message: "x".into(),
            },
        ] {
            let (body, sig) = seal(&k, &target(), &input).unwrap();
            let mut cache = ReplayCache::default();
            assert!(matches!(
                accept(&k, &body, Some(&sig), now_ns(), &mut cache),
                Err(Refused::NotABootInput(_))
            ));
        }
    }

    #[test]
    fn a_replay_becomes_the_same_inbox_entry() {
        // Each accept with its own replay cache: as two replicas, or one after a restart.
        let accept_fresh = |body: &[u8], sig: &str| {
            accept(
                &key(),
                body,
                Some(sig),
                now_ns(),
                &mut ReplayCache::default(),
            )
            .unwrap()
        };
        let (body, sig) = seal(&key(), &target(), &booted()).unwrap();
        let a = accept_fresh(&body, &sig);
        let b = accept_fresh(&body, &sig);
        assert_eq!(a.entry_id(), b.entry_id());
        let (body2, sig2) = seal(&key(), &target(), &booted()).unwrap();
        let c = accept_fresh(&body2, &sig2);
        assert_ne!(a.entry_id(), c.entry_id());
    }
}
