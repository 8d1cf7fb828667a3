//! An armed try's provisioning Secrets for a Kubernetes boot pod, read by the operator.
//!
//! A boot pod's ServiceAccount reads no Secrets (it parses the wire), yet the machine it
//! serves may need a password or join credentials in its unattend.xml. So the boot pod asks
//! the operator's internal endpoint for the Secrets of exactly one armed try. The operator
//! checks the request's signature (HMAC under a key derived from the imaging key, as forwarded
//! inputs are), its freshness and id, that the try is the endpoint's armed one, and then reads
//! only the Secrets that endpoint's own policy names. The answer is sealed (ChaCha20-Poly1305
//! under another key derived from the imaging key, bound to the request's id), so the Secrets
//! cross the cluster network encrypted even where the internal endpoint is plain HTTP.
//!
//! What the boot pod could do with the imaging key it already holds, it still can: ask for the
//! Secrets of any armed try, which it would serve to that try's machine anyway.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use super::forward::{
    ForwardKey, Refused, ReplayCache, SIGNATURE_HEADER, check_fresh, check_id, now_ns, unhex,
};
use crate::encoding::hex;
use crate::store::{
    BootIntent, BootIntents, ContextStore, EndpointStore, Key, SecretMap, SecretsError, TrySecrets,
};
use crate::token::TokenKey;

/// Where the operator answers a boot pod's request for a try's Secrets.
pub const PATH: &str = "/internal/v1/try-secrets";
const REQUEST_PURPOSE: &str = "boot service try secrets request v1";
const SEAL_PURPOSE: &str = "try secrets sealed for the boot service v1";

/// One request: the try whose Secrets are wanted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrySecretsRequest {
    pub namespace: String,
    pub name: String,
    pub attempt_id: String,
    pub try_number: u32,
    /// 32 lower-case hex digits, random per request.
    pub id: String,
    /// Unix time in nanoseconds when it was sent.
    pub sent_at: i64,
}

/// The sealed answer: hex of the nonce and of ciphertext + tag.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SealedSecrets {
    pub nonce: String,
    pub sealed: String,
}

/// Both keys, derived from the imaging key the boot pods and the operator share.
#[derive(Clone)]
pub struct TrySecretsKeys {
    request: ForwardKey,
    seal: [u8; 32],
}

impl TrySecretsKeys {
    pub fn new(imaging: &TokenKey) -> TrySecretsKeys {
        TrySecretsKeys {
            request: ForwardKey::derived(imaging, REQUEST_PURPOSE),
            seal: imaging.derive(SEAL_PURPOSE),
        }
    }

    fn aead(&self) -> Option<LessSafeKey> {
        UnboundKey::new(&CHACHA20_POLY1305, &self.seal)
            .ok()
            .map(LessSafeKey::new)
    }
}

/// Why a sealed answer could not be opened.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error(
        "the operator's answer does not open with this boot pod's imaging key (do the boot pods and the operator mount the same imaging-key Secret?)"
    )]
    Seal,
    #[error("the operator's answer is malformed: {0}")]
    Malformed(String),
}

/// Seals `secrets` for the request `id` (the id is the AEAD's associated data: an answer
/// cannot be passed off as the answer to another request).
pub fn seal(keys: &TrySecretsKeys, id: &str, secrets: &SecretMap) -> Result<SealedSecrets, String> {
    let mut nonce = [0u8; 12];
    SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| "the system random number generator failed".to_string())?;
    let mut data = serde_json::to_vec(secrets).map_err(|e| e.to_string())?;
    let key = keys.aead().ok_or("no sealing key")?;
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(id.as_bytes()),
        &mut data,
    )
    .map_err(|_| "sealing failed".to_string())?;
    Ok(SealedSecrets {
        nonce: hex(&nonce),
        sealed: hex(&data),
    })
}

/// Opens an answer to the request `id`.
pub fn open(
    keys: &TrySecretsKeys,
    id: &str,
    answer: &SealedSecrets,
) -> Result<SecretMap, OpenError> {
    let nonce: [u8; 12] = unhex(&answer.nonce)
        .and_then(|n| n.try_into().ok())
        .ok_or_else(|| OpenError::Malformed("nonce".into()))?;
    let mut data = unhex(&answer.sealed).ok_or_else(|| OpenError::Malformed("sealed".into()))?;
    let key = keys.aead().ok_or(OpenError::Seal)?;
    let plain = key
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(id.as_bytes()),
            &mut data,
        )
        .map_err(|_| OpenError::Seal)?;
    serde_json::from_slice(plain).map_err(|e| OpenError::Malformed(e.to_string()))
}

/// A signed request for `intent`'s Secrets (the body and its signature).
pub fn request(
    keys: &TrySecretsKeys,
    intent: &BootIntent,
) -> Result<(TrySecretsRequest, Vec<u8>, String), String> {
    let req = TrySecretsRequest {
        namespace: intent.namespace.clone(),
        name: intent.endpoint.clone(),
        attempt_id: intent.attempt_id.clone(),
        try_number: intent.try_number,
        id: uuid::Uuid::new_v4().simple().to_string(),
        sent_at: now_ns(),
    };
    let body = serde_json::to_vec(&req).map_err(|e| e.to_string())?;
    let sig = keys.request.sign(&body);
    Ok((req, body, sig))
}

/// Checks one request (pure but for the replay cache): signature, shape, time, id.
pub fn accept(
    keys: &TrySecretsKeys,
    body: &[u8],
    signature: Option<&str>,
    now_ns: i64,
    cache: &mut ReplayCache,
) -> Result<TrySecretsRequest, Refused> {
    if !signature.is_some_and(|s| keys.request.verify(body, s)) {
        return Err(Refused::BadSignature);
    }
    let req: TrySecretsRequest =
        serde_json::from_slice(body).map_err(|e| Refused::Malformed(e.to_string()))?;
    check_id(&req.id)?;
    if req.namespace.is_empty() || req.name.is_empty() || req.attempt_id.is_empty() {
        return Err(Refused::Malformed("no endpoint or attempt".into()));
    }
    check_fresh(req.sent_at, now_ns)?;
    cache.remember_message(&req.id, req.sent_at, now_ns)?;
    Ok(req)
}

/// The boot pod's side: asks the operator for an armed try's Secrets.
pub struct OperatorTrySecrets {
    url: String,
    keys: TrySecretsKeys,
    client: reqwest::Client,
}

impl OperatorTrySecrets {
    /// `base` is the operator's internal URL (the one inputs are forwarded to).
    pub fn new(base: &str, imaging: &TokenKey) -> Result<OperatorTrySecrets, String> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("cannot build the try-secrets client: {e}"))?;
        Ok(OperatorTrySecrets {
            url: format!("{}{PATH}", base.trim_end_matches('/')),
            keys: TrySecretsKeys::new(imaging),
            client,
        })
    }

    async fn fetch(&self, intent: &BootIntent) -> Result<SecretMap, SecretsError> {
        let transient = |message: String| SecretsError {
            message,
            permanent: false,
        };
        let (req, body, sig) = request(&self.keys, intent).map_err(transient)?;
        let r = self
            .client
            .post(&self.url)
            .header(SIGNATURE_HEADER, sig)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| transient(format!("the operator at {} did not answer: {e}", self.url)))?;
        let status = r.status();
        if !status.is_success() {
            let why = r.text().await.unwrap_or_default();
            return Err(SecretsError {
                message: format!(
                    "the operator refused this try's Secrets ({status}): {}",
                    why.trim()
                ),
                // A refusal of the request itself, or the Secrets' (RBAC): a person acts.
                permanent: status.is_client_error() && status != StatusCode::TOO_MANY_REQUESTS,
            });
        }
        let answer: SealedSecrets = r
            .json()
            .await
            .map_err(|e| transient(format!("unreadable answer from the operator: {e}")))?;
        open(&self.keys, &req.id, &answer).map_err(|e| SecretsError {
            message: e.to_string(),
            permanent: true,
        })
    }
}

impl TrySecrets for OperatorTrySecrets {
    fn try_secrets<'a>(
        &'a self,
        intent: &'a BootIntent,
        _names: &'a [String],
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<SecretMap, SecretsError>> + Send + 'a>> {
        Box::pin(self.fetch(intent))
    }
}

struct Server<B> {
    keys: TrySecretsKeys,
    cache: Mutex<ReplayCache>,
    backend: Arc<B>,
    secrets: Arc<dyn TrySecrets>,
}

/// The operator's side: `POST /internal/v1/try-secrets`.
pub fn router<B: BootIntents + EndpointStore + ContextStore>(
    imaging: &TokenKey,
    backend: Arc<B>,
    secrets: Arc<dyn TrySecrets>,
) -> Router {
    let state = Arc::new(Server {
        keys: TrySecretsKeys::new(imaging),
        cache: Mutex::new(ReplayCache::default()),
        backend,
        secrets,
    });
    Router::new()
        .route(PATH, post(answer::<B>))
        .layer(axum::extract::DefaultBodyLimit::max(4 * 1024))
        .with_state(state)
}

async fn answer<B: BootIntents + EndpointStore + ContextStore>(
    State(s): State<Arc<Server<B>>>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    let sig = headers.get(SIGNATURE_HEADER).and_then(|v| v.to_str().ok());
    let accepted = {
        let mut cache = s.cache.lock().unwrap_or_else(|p| p.into_inner());
        accept(&s.keys, &body, sig, now_ns(), &mut cache)
    };
    let req = match accepted {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "refused a request for a try's Secrets");
            return (e.status(), format!("{e}\n"));
        }
    };
    let key = Key {
        namespace: req.namespace.clone(),
        name: req.name.clone(),
    };
    let unavailable = |e: &dyn std::fmt::Display| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the store is unavailable ({e}); retry\n"),
        )
    };
    // Only the armed try, only its endpoint's policy's Secrets.
    let intent = match s.backend.boot_intent_of(&key).await {
        Ok(Some(i)) if i.attempt_id == req.attempt_id && i.try_number == req.try_number => i,
        Ok(_) => {
            return (
                StatusCode::GONE,
                format!(
                    "attempt {} try {} of {key} is not armed\n",
                    req.attempt_id, req.try_number
                ),
            );
        }
        Err(e) => return unavailable(&e),
    };
    let ep = match s.backend.endpoint(&key).await {
        Ok(Some(ep)) => ep,
        Ok(None) => {
            return (
                StatusCode::GONE,
                format!("endpoint {key} no longer exists\n"),
            );
        }
        Err(e) => return unavailable(&e),
    };
    let policy_name = ep
        .spec
        .policy_ref
        .as_deref()
        .unwrap_or(recast_crds::policy::DEFAULT_POLICY_NAME);
    // Exactly the keys this machine's profile needs: an offline join's Secret holds every
    // machine's blob, and this machine gets its own.
    let computer_name =
        recast_core::naming::computer_name(&intent.endpoint, ep.spec.hostname.as_deref());
    let wanted = match s.backend.policy(&key.namespace, policy_name).await {
        Ok(Some(p)) => p
            .spec
            .provisioning
            .map(|p| p.secret_keys(&computer_name))
            .unwrap_or_default(),
        Ok(None) => Default::default(),
        Err(e) => return unavailable(&e),
    };
    let names: Vec<String> = wanted.keys().cloned().collect();
    let secrets = if names.is_empty() {
        SecretMap::new()
    } else {
        match s.secrets.try_secrets(&intent, &names).await {
            Ok(m) => crate::store::only_keys(m, &wanted),
            Err(e) if e.permanent => return (StatusCode::FORBIDDEN, format!("{}\n", e.message)),
            Err(e) => return (StatusCode::SERVICE_UNAVAILABLE, format!("{}\n", e.message)),
        }
    };
    tracing::info!(endpoint = %key, attempt = %req.attempt_id, try_number = req.try_number, secrets = secrets.len(), "handed a boot pod its try's Secrets (sealed)");
    match seal(&s.keys, &req.id, &secrets) {
        Ok(sealed) => match serde_json::to_string(&sealed) {
            Ok(json) => (StatusCode::OK, json),
            Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
        },
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(b: u8) -> TrySecretsKeys {
        TrySecretsKeys::new(&TokenKey::from_bytes([b; 32]))
    }

    fn intent() -> BootIntent {
        BootIntent {
            namespace: "tenant-a".into(),
            endpoint: "kiosk-01".into(),
            mac_addresses: vec![],
            attempt_id: "a1".into(),
            try_number: 2,
            image: "golden".into(),
            image_digest: Some("ab".into()),
            boot_mode: "uefi".into(),
            armed_at: String::new(),
        }
    }

    fn secrets() -> SecretMap {
        SecretMap::from([(
            "accounts".to_string(),
            crate::store::SecretData::from([("kiosk".to_string(), b"Kiosk-Pass1".to_vec())]),
        )])
    }

    #[test]
    fn a_signed_request_is_accepted_once() {
        let k = keys(7);
        let (req, body, sig) = request(&k, &intent()).unwrap();
        let mut cache = ReplayCache::default();
        assert_eq!(
            accept(&k, &body, Some(&sig), now_ns(), &mut cache),
            Ok(req.clone())
        );
        assert_eq!(
            accept(&k, &body, Some(&sig), now_ns(), &mut cache),
            Err(Refused::Replayed(req.id))
        );
    }

    #[test]
    fn a_request_under_another_key_or_purpose_is_refused() {
        let (_, body, sig) = request(&keys(7), &intent()).unwrap();
        let mut cache = ReplayCache::default();
        assert_eq!(
            accept(&keys(8), &body, Some(&sig), now_ns(), &mut cache),
            Err(Refused::BadSignature)
        );
        assert_eq!(
            accept(&keys(7), &body, None, now_ns(), &mut cache),
            Err(Refused::BadSignature)
        );
        // A forwarded input's signature (same imaging key, other purpose) is no request.
        let forward = ForwardKey::new(&TokenKey::from_bytes([7; 32]));
        assert_eq!(
            accept(
                &keys(7),
                &body,
                Some(&forward.sign(&body)),
                now_ns(),
                &mut cache
            ),
            Err(Refused::BadSignature)
        );
        let later = now_ns() + 2 * 60 * 1_000_000_000;
        assert!(matches!(
            accept(&keys(7), &body, Some(&sig), later, &mut cache),
            Err(Refused::Stale(_))
        ));
    }

    /// The operator's handler, over an embedded store: the armed try of pc-01, whose policy
    /// joins offline from a Secret holding two machines' blobs and reads one password from a
    /// Secret with another key in it.
    #[tokio::test]
    async fn the_operator_hands_only_the_armed_tries_own_keys() {
        use crate::store::embedded::{EmbeddedBackend, EmbeddedStore};
        use axum::body::Body;
        use axum::http::Request;
        use serde_json::json;
        use tower::ServiceExt as _;
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        for doc in [
            json!({"apiVersion": "recast.dev/v1alpha1", "kind": "Endpoint", "metadata": {"name": "pc-01"},
                   "spec": {"identity": {"macAddresses": ["52:54:00:88:00:01"]}, "bootMode": "uefi", "image": {"goldenImage": "golden"}}}),
            json!({"apiVersion": "recast.dev/v1alpha1", "kind": "RemediationPolicy", "metadata": {"name": "default"},
                   "spec": {"provisioning": {
                       "administratorPasswordSecretRef": {"name": "accounts", "key": "admin"},
                       "join": {"offlineDomainJoin": {"blobsSecretRef": {"name": "odj"}}}}}}),
        ] {
            store.apply(&doc, "default").unwrap();
        }
        for (name, data) in [
            (
                "accounts",
                json!({"admin": "S3cret!", "bmc": "not for the boot pod"}),
            ),
            ("odj", json!({"PC-01": "QUFBQQ==", "PC-02": "QkJCQg=="})),
        ] {
            store
                .apply_secret(
                    &json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": data}),
                    "default",
                )
                .unwrap();
        }
        let mut armed = intent();
        armed.namespace = "default".into();
        armed.endpoint = "pc-01".into();
        armed.mac_addresses = vec!["52:54:00:88:00:01".into()];
        store.arm_boot(&armed).unwrap();
        let imaging = TokenKey::from_bytes([7; 32]);
        let app = router(
            &imaging,
            Arc::new(EmbeddedBackend {
                store: store.clone(),
            }),
            Arc::new(crate::bmc::redfish::LocalTrySecrets(
                crate::bmc::redfish::EmbeddedSecrets(store.clone()),
            )),
        );
        let ours = TrySecretsKeys::new(&imaging);
        let ask = |i: BootIntent, sign_with: TrySecretsKeys| {
            let app = app.clone();
            async move {
                let (req, body, _) = request(&sign_with, &i).unwrap();
                let sig = sign_with.request.sign(&body);
                let resp = app
                    .oneshot(
                        Request::post(PATH)
                            .header(SIGNATURE_HEADER, sig)
                            .body(Body::from(body))
                            .unwrap(),
                    )
                    .await
                    .unwrap();
                let status = resp.status();
                let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
                    .await
                    .unwrap();
                (status, req, bytes)
            }
        };
        let (status, req, bytes) = ask(armed.clone(), ours.clone()).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "{}",
            String::from_utf8_lossy(&bytes)
        );
        let sealed: SealedSecrets = serde_json::from_slice(&bytes).unwrap();
        let got = open(&ours, &req.id, &sealed).unwrap();
        assert_eq!(
            got,
            SecretMap::from([
                (
                    "accounts".to_string(),
                    crate::store::SecretData::from([("admin".to_string(), b"S3cret!".to_vec())])
                ),
                (
                    "odj".to_string(),
                    crate::store::SecretData::from([("PC-01".to_string(), b"QUFBQQ==".to_vec())])
                ),
            ]),
            "this machine's blob and password only: not PC-02's blob, not the other key"
        );
        // Another try, another attempt, another endpoint: not armed, nothing handed.
        for (what, i) in [
            (
                "another try",
                BootIntent {
                    try_number: 3,
                    ..armed.clone()
                },
            ),
            (
                "another attempt",
                BootIntent {
                    attempt_id: "older".into(),
                    ..armed.clone()
                },
            ),
            (
                "another endpoint",
                BootIntent {
                    endpoint: "pc-02".into(),
                    ..armed.clone()
                },
            ),
        ] {
            let (status, _, bytes) = ask(i, ours.clone()).await;
            assert_eq!(
                status,
                StatusCode::GONE,
                "{what}: {}",
                String::from_utf8_lossy(&bytes)
            );
        }
        // Signed under another imaging key: refused before anything is read.
        let (status, _, _) = ask(armed.clone(), keys(8)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }

    #[test]
    fn a_sealed_answer_opens_only_for_its_request_and_key() {
        let k = keys(7);
        let sealed = seal(&k, "id-1", &secrets()).unwrap();
        assert!(
            !sealed.sealed.contains(&hex(b"Kiosk-Pass1")),
            "the password is not in the answer in the clear"
        );
        assert_eq!(open(&k, "id-1", &sealed), Ok(secrets()));
        assert_eq!(
            open(&k, "id-2", &sealed),
            Err(OpenError::Seal),
            "another request"
        );
        assert_eq!(
            open(&keys(8), "id-1", &sealed),
            Err(OpenError::Seal),
            "another key"
        );
        let mut tampered = sealed.clone();
        tampered.sealed.replace_range(
            0..2,
            if &sealed.sealed[0..2] == "00" {
                "01"
            } else {
                "00"
            },
        );
        assert_eq!(open(&k, "id-1", &tampered), Err(OpenError::Seal));
        let bad = SealedSecrets {
            nonce: "zz".into(),
            sealed: sealed.sealed.clone(),
        };
        assert!(matches!(
            open(&k, "id-1", &bad),
            Err(OpenError::Malformed(_))
        ));
        // Two seals of the same Secrets never repeat a nonce or a ciphertext.
        let again = seal(&k, "id-1", &secrets()).unwrap();
        assert_ne!(again.nonce, sealed.nonce);
        assert_ne!(again.sealed, sealed.sealed);
    }
}
