//! HTTP boot: the iPXE scripts, the artifacts, and the imaging protocol the imaging environment
//! speaks (fetch the task, post progress, post the result), each call carrying the try's token.

use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use recast_crds::endpoint::ReimageStep;
use recast_crds::{Endpoint, GoldenImage};
use serde::Deserialize;

use super::intent::{self, BootChoice, NotServed, UnknownMacPolicy};
use super::provisioning::Provisioning;
use super::render::{AttemptView, ImageFile, ImagingEnvironment, Renderer, SiteSettings};
use crate::metrics::Metrics;
use crate::store::arming::{Known, normalize_mac};
use crate::store::{Backend, Key};
use crate::store::{BootIntent, BootIntents};
use crate::token::TokenKey;
use recast_core::lifecycle::{Input, Notice, NoticeType};

/// How the boot service is set up at a site.
#[derive(Clone, Debug)]
pub struct BootConfig {
    /// How machines reach this service, such as http://10.0.40.2:8081 (no trailing slash).
    pub base_url: String,
    /// Directory of served artifacts: ipxe/, winpe/, linux/, images/<sha256>.wim.
    pub root: PathBuf,
    pub imaging: ImagingEnvironment,
    pub unknown: UnknownMacPolicy,
    pub wds_server: Option<String>,
    pub site: SiteSettings,
    /// Where the reimaged endpoint's agent reports (goes into its configuration).
    pub gateway_url: Option<String>,
    /// How machines reach the HTTPS listener, such as https://boot.site.example:8443: the
    /// files that carry credentials (unattend.xml, agent.json, the offline domain join file)
    /// are fetched there. None: no HTTPS listener, and a provisioning profile that carries a
    /// secret is refused.
    pub https_base_url: Option<String>,
    /// Multicast sessions per wave batch (`--multicast-interface`); None: every machine
    /// downloads over HTTP.
    pub multicast: Option<super::multicast::MulticastConfig>,
}

/// recast_core::imaging::DRIVER_DIR as Windows names it in unattend's PnP driver paths.
const DRIVER_PATH: &str = r"%SystemDrive%\recast\drivers";

/// Marks a request that came in over the boot service's HTTPS listener.
#[derive(Clone, Copy, Debug)]
pub struct OverHttps;

/// Whether a file may go out over this connection. Files with a secret in them (passwords,
/// join credentials, an offline join blob) go only over HTTPS; once HTTPS is set up, every
/// file with a credential (agent.json's enrollment credential too) goes only there.
pub fn credential_transport(
    over_https: bool,
    https_configured: bool,
    holds_secret: bool,
) -> Result<(), String> {
    if over_https {
        return Ok(());
    }
    if holds_secret && !https_configured {
        return Err(NEEDS_HTTPS.to_string());
    }
    if https_configured {
        return Err(
            "this file carries a credential and is served only over HTTPS: fetch it from the HTTPS URL the task gives"
                .to_string(),
        );
    }
    Ok(())
}

const NEEDS_HTTPS: &str = "the machine's provisioning carries a secret (a password, join credentials or an offline join blob), which recast serves only over HTTPS: start the boot service with --boot-https ADDR:PORT, --boot-tls-cert and --boot-tls-key, and put the site's CA in the imaging environment (docs/first-boot.md)";

/// Why a machine's provisioning cannot be read: a person must fix something, or the store or
/// the Secret API is briefly unavailable.
#[derive(Debug)]
enum ProvisioningProblem {
    Fix(String),
    Unavailable(String),
}

pub struct BootHttp<B> {
    pub backend: Arc<B>,
    pub renderer: Renderer,
    pub key: TokenKey,
    pub config: BootConfig,
    pub metrics: Arc<Metrics>,
    /// `/boot/{mac}` requests per MAC (anyone can ask for any MAC).
    pub per_mac_limit: super::ratelimit::SharedLimiter<String>,
    /// One fall-back event per machine and boot for signed-chain machines DHCP declined.
    pub decline_notes: super::ratelimit::SharedLimiter<String>,
    /// Which address claimed each endpoint's armed try, as this process saw it, before the
    /// controller has written it into the attempt's status (`bootClient`). One entry per
    /// endpoint with an armed try, so nobody without an armed try can grow it.
    pub claims: Claims,
    /// Stamps the events this service records.
    pub clock: Arc<dyn crate::clock::Clock>,
    /// Where the Secrets of a policy's provisioning profile are read.
    pub secrets: Arc<dyn crate::store::TrySecrets>,
    /// The try each WDS-mode endpoint was last referred for (one hand-off input per try).
    pub handed_off: std::sync::Mutex<std::collections::HashMap<Key, (String, u32)>>,
    /// The last lines of the log each endpoint's try sent before its failure result (one per
    /// endpoint, written only with the try's token), added to that result's error.
    pub log_tails: std::sync::Mutex<std::collections::HashMap<Key, (String, u32, String)>>,
    /// The multicast sessions this service runs (when `config.multicast` is set).
    pub sessions: Option<Arc<super::multicast::Sessions>>,
}

/// The claimant of each endpoint's armed try: endpoint → (attempt, try, client address).
#[derive(Debug, Default)]
pub struct Claims(std::sync::Mutex<std::collections::HashMap<Key, (String, u32, String)>>);

/// Who may take a try, decided from what the store and this process know (pure).
#[derive(Debug, PartialEq, Eq)]
pub enum ClaimDecision {
    /// The first claim of this try: bind it to the client.
    Bind,
    /// The same client again (its imaging environment restarted): same answer, nothing new.
    Again,
    /// Another client holds the try.
    Taken { holder: String },
    /// The try is not at a step where a machine that recast restarted could ask for it.
    NotYet { step: ReimageStep },
}

/// `holder`: the claimant the attempt's status records, or else the one this process saw.
pub fn decide_claim(step: ReimageStep, holder: Option<&str>, client: &str) -> ClaimDecision {
    match holder {
        Some(h) if h == client => ClaimDecision::Again,
        Some(h) => ClaimDecision::Taken {
            holder: h.to_string(),
        },
        // Applying without a recorded claimant: a status written before claims existed.
        None => match step {
            ReimageStep::PowerCycling | ReimageStep::Booting | ReimageStep::Applying => {
                ClaimDecision::Bind
            }
            step => ClaimDecision::NotYet { step },
        },
    }
}

/// The address a request came from, as the token binds it (an IPv4 client on a dual-stack
/// socket counts as its IPv4 address).
pub fn client_address(peer: std::net::SocketAddr) -> String {
    peer.ip().to_canonical().to_string()
}

pub use recast_core::imaging::{
    AgentConfig, ClaimAnswer, FirmwareReport, ImageTaskFile, ImagingTask, ProgressReport,
    ResultReport,
};

/// Reports are short; anything bigger is refused before it is read.
const MAX_REPORT_BYTES: usize = 4096;

pub fn router<B: Backend + BootIntents>(svc: Arc<BootHttp<B>>) -> Router {
    let imaging = Router::new()
        .route("/claim", post(claim::<B>))
        .route("/task", get(task::<B>))
        .route("/startnet.cmd", get(startnet::<B>))
        .route("/winpeshl.ini", get(winpeshl::<B>))
        .route("/unattend.xml", get(unattend::<B>))
        .route("/agent.json", get(agent_config::<B>))
        .route("/progress", post(progress::<B>))
        .route("/result", post(result::<B>))
        .layer(DefaultBodyLimit::max(MAX_REPORT_BYTES))
        // Added after the layer above, so their own limits apply.
        .route(
            "/preflight",
            post(preflight::<B>).layer(DefaultBodyLimit::max(
                recast_core::winpe_preflight::MAX_REPORT_BYTES,
            )),
        )
        // Reads its body itself, after the token (no body limit layer applies to it).
        .route("/log", post(log_upload::<B>));
    Router::new()
        .route("/boot.ipxe", get(boot_ipxe::<B>))
        .route("/boot/{mac}", get(per_mac::<B>))
        .route("/artifacts/{*path}", get(artifact::<B>).head(artifact::<B>))
        .nest(
            "/imaging/v1/{namespace}/{name}/{attempt}/{try_number}",
            imaging,
        )
        .with_state(svc)
}

fn text(status: StatusCode, body: impl Into<String>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body.into(),
    )
        .into_response()
}

fn script(body: String) -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

async fn boot_ipxe<B: Backend + BootIntents>(
    State(svc): State<Arc<BootHttp<B>>>,
) -> Result<Response, Refusal> {
    Ok(script(svc.renderer.boot_ipxe(&svc.config.base_url)?))
}

async fn per_mac<B: Backend + BootIntents>(
    State(svc): State<Arc<BootHttp<B>>>,
    Path(raw_mac): Path<String>,
) -> Result<Response, Refusal> {
    let Some(mac) = normalize_mac(&raw_mac) else {
        return Ok(text(
            StatusCode::BAD_REQUEST,
            "not a MAC address; iPXE asks for /boot/${net0/mac}\n",
        ));
    };
    let decision = match svc.script_for(&mac).await {
        ScriptFor::RateLimited { retry_after_secs } => {
            let mut resp = text(
                StatusCode::TOO_MANY_REQUESTS,
                "too many boot requests for this MAC address; retry later\n",
            );
            if let Ok(v) = header::HeaderValue::from_str(&retry_after_secs.to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
            return Ok(resp);
        }
        // Not "unknown" before the index has loaded: iPXE treats the error as a failed chain
        // and boots the local disk, and nothing is recorded about the machine.
        ScriptFor::NotReady(why) => {
            let mut resp = text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the boot service is starting ({why}); retry shortly\n"),
            );
            resp.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
            return Ok(resp);
        }
        other => other,
    };
    match decision {
        ScriptFor::RateLimited { .. } | ScriptFor::NotReady(_) => unreachable!("answered above"),
        ScriptFor::Ignore => Ok(text(
            StatusCode::NOT_FOUND,
            "recast does not manage this machine\n",
        )),
        ScriptFor::Local { who, boot_mode } => Ok(script(svc.renderer.local(&who, &boot_mode)?)),
        ScriptFor::Wds {
            namespace,
            name,
            boot_mode,
            intent,
        } => {
            let Some(server) = &svc.config.wds_server else {
                tracing::warn!(%mac, "endpoint is in WDS mode but no --wds-server is set; booting it locally");
                return Ok(script(svc.renderer.local(&name, &boot_mode)?));
            };
            let body = svc.renderer.wds(&namespace, &name, &boot_mode, server)?;
            // Recorded aside: the script never waits for the store.
            let (boot, server) = (svc.clone(), server.clone());
            tokio::spawn(async move { boot.note_handed_off(&intent, &server).await });
            Ok(script(body))
        }
        ScriptFor::Imaging(intent) => {
            let view = svc.view(&intent);
            let body =
                svc.renderer
                    .imaging_script(svc.config.imaging, &svc.config.base_url, &view)?;
            tracing::info!(
                endpoint = %intent.key(),
                attempt = %intent.attempt_id,
                try_number = intent.try_number,
                "served the imaging script"
            );
            Ok(script(body))
        }
    }
}

/// What a machine asking for its boot script gets, whichever loader asks (iPXE over HTTP,
/// GRUB over TFTP): decided once, here.
#[derive(Debug)]
pub enum ScriptFor {
    RateLimited {
        retry_after_secs: u64,
    },
    /// The store's boot lookups are still loading.
    NotReady(String),
    /// Not recast's machine.
    Ignore,
    /// Boot the local disk; `who` names the endpoint (or the MAC) in the script's message.
    Local {
        who: String,
        boot_mode: String,
    },
    Wds {
        namespace: String,
        name: String,
        boot_mode: String,
        intent: BootIntent,
    },
    /// The imaging environment of this armed try. What to boot, and nothing else: anyone can
    /// ask for any MAC. The imaging environment claims the try itself (POST .../claim), and
    /// only that binds it.
    Imaging(BootIntent),
}

impl<B: Backend + BootIntents> BootHttp<B> {
    /// Decides what `mac` (normalised) boots, records what a person should hear of (a machine
    /// that fell back to the network boot, a discovered MAC) and counts the choice.
    pub async fn script_for(&self, mac: &str) -> ScriptFor {
        if let Err(limited) = self.per_mac_limit.check(&mac.to_string()) {
            self.metrics.boot_choice("rate_limited");
            return ScriptFor::RateLimited {
                retry_after_secs: limited.retry_after.as_secs().max(1),
            };
        }
        let (known, armed) = match self.backend.boot_lookup(mac).await {
            Ok(x) => x,
            Err(crate::store::BackendError::NotReady(why)) => {
                self.metrics.boot_choice("not_ready");
                return ScriptFor::NotReady(why);
            }
            Err(e) => {
                tracing::warn!(%mac, error = %e, "boot lookup failed; telling the machine to boot locally");
                return ScriptFor::Local {
                    who: mac.to_string(),
                    boot_mode: "uefi".into(),
                };
            }
        };
        let (choice, not_served) = intent::choose(&known, armed.as_ref(), self.config.unknown);
        if let Some(why) = &not_served {
            tracing::warn!(%mac, "armed boot not served: {why}");
        }
        let boot_mode = armed
            .as_ref()
            .map(|i| i.boot_mode.clone())
            .unwrap_or_else(|| "uefi".into());
        self.metrics.boot_choice(choice_label(&choice));
        match choice {
            BootChoice::Ignore => ScriptFor::Ignore,
            BootChoice::Local { discovered } => {
                let who = match &known {
                    Known::Endpoint {
                        namespace, name, ..
                    } => {
                        self.note_fallback(namespace, name, not_served.as_ref())
                            .await;
                        format!("{namespace}/{name}")
                    }
                    Known::Unknown | Known::Ambiguous { .. } => mac.to_string(),
                };
                if discovered
                    && let Err(e) = self
                        .backend
                        .record_discovered(mac, "asked to network-boot; no Endpoint lists it")
                        .await
                {
                    tracing::warn!(%mac, error = %e, "cannot record a discovered MAC");
                }
                ScriptFor::Local { who, boot_mode }
            }
            BootChoice::Wds(intent) => {
                let (namespace, name) = match &known {
                    Known::Endpoint {
                        namespace, name, ..
                    } => (namespace.clone(), name.clone()),
                    Known::Unknown | Known::Ambiguous { .. } => (String::new(), mac.to_string()),
                };
                ScriptFor::Wds {
                    namespace,
                    name,
                    boot_mode,
                    intent,
                }
            }
            BootChoice::Imaging(intent) => ScriptFor::Imaging(intent),
        }
    }
}

fn choice_label(c: &BootChoice) -> &'static str {
    match c {
        BootChoice::Ignore => "ignored",
        BootChoice::Local { discovered: true } => "discovered",
        BootChoice::Local { discovered: false } => "local",
        BootChoice::Imaging(_) => "imaging",
        BootChoice::Wds(_) => "wds",
    }
}

async fn artifact<B: Backend + BootIntents>(
    State(svc): State<Arc<BootHttp<B>>>,
    method: Method,
    Path(path): Path<String>,
    headers: HeaderMap,
) -> Response {
    match super::artifacts::locate(&svc.config.root, &path) {
        Ok(full) => super::artifacts::serve(&full, &headers, method == Method::HEAD).await,
        Err(message) => text(StatusCode::NOT_FOUND, message),
    }
}

/// The caller's claim: which try of which attempt it works for.
#[derive(Debug, Deserialize)]
struct TryPath {
    namespace: String,
    name: String,
    attempt: String,
    try_number: u32,
}

#[derive(Debug, Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

/// Why a boot-service request is not answered with what it asked for.
enum Refusal {
    Unauthorized,
    /// Another machine holds the try, or it cannot be claimed yet.
    Conflict(String),
    /// Not over this connection (a secret over plain HTTP).
    Forbidden(String),
    Gone(String),
    Unavailable(String),
    /// A template failed to render: a bug in recast, never the client's fault.
    Broken(String),
}

impl From<super::render::RenderError> for Refusal {
    fn from(e: super::render::RenderError) -> Self {
        Refusal::Broken(e.to_string())
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Refusal::Unauthorized => text(
                StatusCode::UNAUTHORIZED,
                "missing or wrong attempt token; use the URL the imaging script was given\n",
            ),
            Refusal::Conflict(why) => text(StatusCode::CONFLICT, format!("{why}\n")),
            Refusal::Forbidden(why) => text(StatusCode::FORBIDDEN, format!("{why}\n")),
            Refusal::Gone(why) => text(StatusCode::GONE, format!("{why}\n")),
            Refusal::Unavailable(why) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
            Refusal::Broken(why) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{why}\n")),
        }
    }
}

impl<B: Backend + BootIntents> BootHttp<B> {
    /// Checks the session token for the try against the address the request came from, and
    /// that the try is still the armed one: a token is good for one try, from the machine
    /// that claimed it, and dies when the controller disarms the try.
    async fn authorize(
        &self,
        p: &TryPath,
        client: &str,
        headers: &HeaderMap,
        query: &TokenQuery,
    ) -> Result<BootIntent, Refusal> {
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let presented = bearer.or(query.token.as_deref()).unwrap_or("");
        if !self.key.verify_client(
            &p.namespace,
            &p.name,
            &p.attempt,
            p.try_number,
            client,
            presented,
        ) {
            return Err(Refusal::Unauthorized);
        }
        self.armed(p).await
    }

    /// The armed intent of the try the path names (410 when that try is not armed).
    async fn armed(&self, p: &TryPath) -> Result<BootIntent, Refusal> {
        let key = Key {
            namespace: p.namespace.clone(),
            name: p.name.clone(),
        };
        let armed = self
            .backend
            .boot_intent_of(&key)
            .await
            .map_err(|e| Refusal::Unavailable(format!("cannot read the boot intent: {e}")))?;
        match armed {
            Some(i) if i.attempt_id == p.attempt && i.try_number == p.try_number => Ok(i),
            _ => Err(Refusal::Gone(format!(
                "attempt {} try {} of {key} is no longer armed; the machine should reboot",
                p.attempt, p.try_number
            ))),
        }
    }

    /// Queues an input for the lifecycle; false (logged) when the store did not take it.
    async fn post(&self, intent: &BootIntent, input: Input) -> bool {
        let key = intent.key();
        match self.backend.post_input(&key, &input).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(endpoint = %key, error = %e, "cannot queue a boot-service input");
                false
            }
        }
    }

    /// The machine of `intent` was referred to the WDS server: the lifecycle ends the
    /// attempt handed off. Once per try per process (DHCP retransmits; the lifecycle ignores
    /// a repeat anyway).
    pub async fn note_handed_off(&self, intent: &BootIntent, server: &str) {
        let key = intent.key();
        {
            let mut seen = lock(&self.handed_off);
            let this = (intent.attempt_id.clone(), intent.try_number);
            if seen.get(&key) == Some(&this) {
                return;
            }
            seen.insert(key.clone(), this);
        }
        tracing::info!(endpoint = %key, attempt = %intent.attempt_id, try_number = intent.try_number, %server, "referred to the site's WDS server; the attempt ends handed off");
        let posted = self
            .post(
                intent,
                Input::HandedOff {
                    attempt_id: intent.attempt_id.clone(),
                    try_number: Some(intent.try_number),
                    server: server.to_string(),
                },
            )
            .await;
        if !posted {
            // Not taken: the machine's next request (DHCP retransmits) tries again.
            lock(&self.handed_off).remove(&key);
        }
    }

    /// A managed machine that network-boots with nothing armed has usually failed to boot
    /// from its disk: the audit trail says so (a BootCrash witness for the operator).
    /// A managed machine DHCP declined (the signed chain) network-booted: the same
    /// `NetworkBootFallback` event iPXE's `/boot/MAC` records, once per boot; `why` when it
    /// was declined for a reason (an armed try it cannot reach that way, a try not served).
    pub async fn note_declined(&self, known: &Known, mac: &str, why: Option<String>) {
        if let Known::Endpoint {
            namespace, name, ..
        } = known
            && self.decline_notes.check(&mac.to_string()).is_ok()
        {
            let key = Key {
                namespace: namespace.clone(),
                name: name.clone(),
            };
            let message = match why {
                Some(why) => format!("network-booted; declined because {why}"),
                None => "network-booted with no reimage armed (did it fail to boot from its disk?); declined, so its firmware boots the next entry".to_string(),
            };
            self.record_fallback(&key, message).await;
        }
    }

    async fn note_fallback(&self, namespace: &str, name: &str, not_served: Option<&NotServed>) {
        let key = Key {
            namespace: namespace.to_string(),
            name: name.to_string(),
        };
        let message = match not_served {
            Some(why) => format!("network-booted; told to boot locally because {why}"),
            None => "network-booted with no reimage armed (did it fail to boot from its disk?); told to boot locally".to_string(),
        };
        self.record_fallback(&key, message).await;
    }

    /// Records the fall-back boot as an event and hands it to the lifecycle as boot-loop
    /// evidence (a machine whose OS does not come up reaches here on every turn).
    async fn record_fallback(&self, key: &Key, message: String) {
        let Ok(Some(ep)) = self.backend.endpoint(key).await else {
            return;
        };
        if let Err(e) = self
            .backend
            .post_input(
                key,
                &Input::NetworkBootObserved {
                    at: recast_core::time::format(self.clock.now()),
                },
            )
            .await
        {
            tracing::warn!(endpoint = %key, error = %e, "cannot queue a network boot for the boot-loop watch");
        }
        let notice = Notice {
            type_: NoticeType::Warning,
            reason: "NetworkBootFallback".into(),
            message,
        };
        if let Err(e) = self.backend.record(&ep, &notice, self.clock.now()).await {
            tracing::debug!(endpoint = %key, error = %e, "cannot record the fall-back event");
        }
    }

    /// The Endpoint the intent arms, read afresh; the refusal a caller answers with when the
    /// store is down or the Endpoint is gone.
    async fn endpoint_of(&self, intent: &BootIntent) -> Result<Endpoint, Refusal> {
        let key = intent.key();
        self.backend
            .endpoint(&key)
            .await
            .map_err(|e| Refusal::Unavailable(format!("the store is unavailable ({e}); retry")))?
            .ok_or_else(|| Refusal::Gone(format!("endpoint {key} no longer exists")))
    }

    /// The per-try view of the templates, with the plain and the protocol URL.
    pub fn view<'a>(&self, intent: &'a BootIntent) -> AttemptView<'a> {
        AttemptView::new(
            &self.config.base_url,
            self.config.https_base_url.as_deref(),
            intent,
        )
    }

    /// The base URL of the imaging protocol: the HTTPS listener's when there is one.
    fn protocol_base(&self) -> &str {
        self.config
            .https_base_url
            .as_deref()
            .unwrap_or(&self.config.base_url)
    }

    /// What the machine's Windows is told on its first start: its policy's provisioning
    /// profile with the site's defaults and the Secrets' values. A policy named by
    /// `spec.policyRef` that does not exist is a problem to fix, not "no profile": a machine
    /// set up without its domain join is worse than one not set up.
    async fn provisioning_of(
        &self,
        intent: &BootIntent,
        ep: &Endpoint,
    ) -> Result<Provisioning, ProvisioningProblem> {
        let ns = recast_crds::namespace_of(&ep.metadata);
        let named = ep.spec.policy_ref.as_deref();
        let name = named.unwrap_or(recast_crds::policy::DEFAULT_POLICY_NAME);
        let policy = self.backend.policy(ns, name).await.map_err(|e| {
            ProvisioningProblem::Unavailable(format!("the store is unavailable ({e}); retry"))
        })?;
        let profile = match policy {
            Some(p) => p.spec.provisioning,
            None if named.is_some() => {
                return Err(ProvisioningProblem::Fix(format!(
                    "RemediationPolicy {ns}/{name} named by spec.policyRef does not exist, and recast does not set up a machine without its policy's provisioning: create it, or clear spec.policyRef"
                )));
            }
            None => None,
        };
        let computer_name =
            recast_core::naming::computer_name(&intent.endpoint, ep.spec.hostname.as_deref());
        let wanted = profile
            .as_ref()
            .map(|p| p.secret_keys(&computer_name))
            .unwrap_or_default();
        let names: Vec<String> = wanted.keys().cloned().collect();
        let secrets = if names.is_empty() {
            Default::default()
        } else {
            match self.secrets.try_secrets(intent, &names).await {
                Ok(s) => crate::store::only_keys(s, &wanted),
                Err(e) if e.permanent => return Err(ProvisioningProblem::Fix(e.message)),
                Err(e) => {
                    return Err(ProvisioningProblem::Unavailable(format!(
                        "{}; retry",
                        e.message
                    )));
                }
            }
        };
        super::provisioning::resolve(
            ns,
            &computer_name,
            profile.as_ref(),
            &self.config.site.defaults(),
            &secrets,
        )
        .map_err(|e| ProvisioningProblem::Fix(e.to_string()))
    }

    /// [`Self::provisioning_of`] for a file request: any problem is a refusal.
    async fn provisioning_for_file(
        &self,
        intent: &BootIntent,
        ep: &Endpoint,
    ) -> Result<Provisioning, Refusal> {
        self.provisioning_of(intent, ep).await.map_err(|p| match p {
            ProvisioningProblem::Fix(why) => Refusal::Conflict(why),
            ProvisioningProblem::Unavailable(why) => Refusal::Unavailable(why),
        })
    }

    /// The GoldenImage the intent's attempt applies, from the backend's view of its namespace
    /// (None when it cannot be read or is gone).
    async fn golden_image_of(&self, intent: &BootIntent) -> Option<GoldenImage> {
        self.backend
            .golden_images(&intent.namespace)
            .await
            .ok()?
            .into_iter()
            .find(|g| g.metadata.name.as_deref() == Some(intent.image.as_str()))
    }

    /// The processor architecture of the attempt's image as unattend.xml names it: what the
    /// WIM's own metadata says (the GoldenImage's verified facts), else what its spec expects,
    /// else amd64 (the only architecture recast's imaging environments run on today).
    fn image_arch(image: Option<&GoldenImage>) -> String {
        unattend_arch(
            image
                .and_then(|g| g.status.as_ref())
                .and_then(|s| s.facts.as_ref())
                .and_then(|f| f.arch.as_deref()),
            image
                .and_then(|g| g.spec.expected.as_ref())
                .and_then(|e| e.arch),
        )
    }

    /// The image's driver sets, each with its URL when this boot server holds it.
    async fn driver_sets(
        &self,
        gi: Option<&GoldenImage>,
    ) -> Vec<recast_core::imaging::TaskDriverSet> {
        let mut out = Vec::new();
        for set in gi.map(|g| g.spec.drivers.as_slice()).unwrap_or_default() {
            let rel = format!("images/{}.wim", set.sha256);
            let size = tokio::fs::metadata(self.config.root.join(&rel))
                .await
                .ok()
                .filter(|m| m.is_file())
                .map(|m| m.len());
            out.push(recast_core::imaging::TaskDriverSet {
                manufacturer: set.manufacturer.clone(),
                model: set.model.clone(),
                sha256: set.sha256.clone(),
                url: size.map(|_| format!("{}/artifacts/{rel}", self.config.base_url)),
                size: size.unwrap_or(0),
            });
        }
        out
    }

    /// The batch's multicast session for this try, when this service runs sessions, the
    /// machine boots the Linux imaging environment (startnet.cmd has no receiver) and the
    /// image's pipable form is ready; None: the machine downloads over HTTP.
    async fn multicast_join(
        &self,
        intent: &BootIntent,
        ep: &Endpoint,
        index: u32,
    ) -> Option<recast_core::imaging::TaskMulticast> {
        use super::multicast::{Batch, SessionKey};
        let sessions = self.sessions.as_ref()?;
        if self.config.imaging != super::render::ImagingEnvironment::Linux {
            return None;
        }
        let digest = intent.image_digest.as_deref()?;
        let Some(stream) = crate::golden::stream::read(&self.config.root, digest, index) else {
            tracing::info!(endpoint = %intent.key(), image = %intent.image, "no pipable form of the image yet: this machine downloads over HTTP");
            return None;
        };
        let wave_name = ep
            .status
            .as_ref()
            .and_then(|s| s.active_attempt.as_ref())
            .filter(|a| a.id == intent.attempt_id)
            .and_then(|a| a.wave.clone());
        let (batch, min_receivers, max_wait) = match wave_name {
            Some(name) => {
                let wave = self
                    .backend
                    .wave(&intent.namespace, &name)
                    .await
                    .ok()
                    .flatten()?;
                let want = wave.spec.multicast.clone();
                if want.as_ref().is_some_and(|m| !m.enabled) {
                    return None;
                }
                let status = wave.status.as_ref()?;
                let (index, batch) = status
                    .batches
                    .iter()
                    .enumerate()
                    .find(|(_, b)| b.endpoints.iter().any(|e| e == &intent.endpoint))?;
                let members = (batch.endpoints.len() as u32)
                    .saturating_sub(batch.skipped)
                    .max(1);
                // The wave's count as given (receivers beyond the batch count, such as other
                // machines of the site on the same image, are its author's call); else every
                // member of the batch.
                let min = want
                    .as_ref()
                    .and_then(|m| m.min_receivers)
                    .unwrap_or(members);
                let wait = want
                    .as_ref()
                    .and_then(|m| m.max_wait.as_deref())
                    .and_then(|w| recast_crds::duration::parse(w).ok())
                    .map(|d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX))
                    .unwrap_or(recast_core::multicast::DEFAULT_MAX_WAIT_SECONDS);
                (
                    Batch::Wave {
                        namespace: intent.namespace.clone(),
                        name,
                        index: index as u32,
                    },
                    min,
                    wait,
                )
            }
            None => {
                let wait = sessions.config().automatic_wait_seconds;
                if wait == 0 {
                    return None;
                }
                // Automatic attempts of one image (a bad Patch Tuesday morning) share one
                // session that starts `wait` after the first machine joined.
                (Batch::Automatic, u32::MAX, wait)
            }
        };
        let boot_manager = stream
            .boot_manager
            .as_ref()
            .map(|b| recast_core::imaging::TaskBlob {
                url: format!(
                    "{}/artifacts/images/{}",
                    self.config.base_url,
                    crate::golden::stream::boot_manager_name(digest, index)
                ),
                sha256: b.sha256.clone(),
                size: b.size,
            });
        let key = SessionKey {
            digest: digest.to_string(),
            batch,
        };
        match sessions.join(
            key,
            min_receivers,
            max_wait,
            crate::golden::stream::stream_path(&self.config.root, digest, index),
            recast_core::multicast::Stream {
                sha256: stream.sha256.clone(),
                size: stream.size,
                image_bytes: stream.image_bytes,
            },
            boot_manager,
        ) {
            Ok(join) => {
                tracing::info!(endpoint = %intent.key(), attempt = %intent.attempt_id, group = %join.group, port = join.port, "joining the batch's multicast session");
                Some(join)
            }
            Err(why) => {
                tracing::info!(endpoint = %intent.key(), attempt = %intent.attempt_id, "downloading over HTTP: {why}");
                None
            }
        }
    }

    /// `golden`: the attempt's GoldenImage as [`Self::golden_image_of`] read it.
    async fn image_file(
        &self,
        intent: &BootIntent,
        golden: Option<&GoldenImage>,
    ) -> Result<ImageFile, Refusal> {
        let digest = intent
            .image_digest
            .clone()
            .ok_or_else(|| Refusal::Gone("no verified image digest".into()))?;
        let rel = format!("images/{digest}.wim");
        let size = tokio::fs::metadata(self.config.root.join(&rel))
            .await
            .map(|m| m.len())
            .map_err(|_| {
                Refusal::Unavailable(format!(
                    "image {} ({digest}) is not in the artifact store yet; retry shortly",
                    intent.image
                ))
            })?;
        let index = golden.map_or(1, |g| g.spec.image_index);
        Ok(ImageFile {
            url: format!("{}/artifacts/{rel}", self.config.base_url),
            sha256: digest,
            size,
            index,
        })
    }
}

#[derive(Debug, Deserialize)]
struct ClaimQuery {
    /// `text`: the token alone on one line (for startnet.cmd's `for /f`); JSON otherwise.
    format: Option<String>,
}

/// The imaging environment takes its try: the first address to claim it holds it, the same
/// address may claim again (its environment restarted), and any other address is refused
/// and reported, which stops the attempt for a person (someone else asked for this machine).
async fn claim<B: Backend + BootIntents>(
    State(svc): State<Arc<BootHttp<B>>>,
    Path(p): Path<TryPath>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    Query(q): Query<ClaimQuery>,
) -> Result<Response, Refusal> {
    let client = client_address(peer);
    let intent = svc.armed(&p).await?;
    let key = intent.key();
    let ep = svc.endpoint_of(&intent).await?;
    let attempt = ep
        .status
        .as_ref()
        .and_then(|s| s.active_attempt.as_ref())
        .filter(|a| a.id == intent.attempt_id && a.try_number == intent.try_number)
        .ok_or_else(|| {
            Refusal::Gone(format!(
                "attempt {} try {} of {key} is no longer running; the machine should reboot",
                p.attempt, p.try_number
            ))
        })?;
    let decision = {
        let mut claims = lock(&svc.claims.0);
        let seen = claims
            .get(&key)
            .filter(|(a, t, _)| *a == intent.attempt_id && *t == intent.try_number)
            .map(|(_, _, c)| c.clone());
        let holder = attempt.boot_client.clone().or(seen);
        let decision = decide_claim(attempt.step, holder.as_deref(), &client);
        if decision == ClaimDecision::Bind {
            claims.insert(
                key.clone(),
                (intent.attempt_id.clone(), intent.try_number, client.clone()),
            );
        }
        decision
    };
    // A new claimant, first or second, is news for the lifecycle: the first moves the attempt
    // to Applying, a second one stops it for a person (two machines asked for one endpoint).
    if matches!(decision, ClaimDecision::Bind | ClaimDecision::Taken { .. }) {
        svc.post(
            &intent,
            Input::NetworkBooted {
                attempt_id: intent.attempt_id.clone(),
                try_number: Some(intent.try_number),
                client: Some(client.clone()),
            },
        )
        .await;
    }
    match decision {
        ClaimDecision::Bind => {
            tracing::info!(endpoint = %key, attempt = %intent.attempt_id, try_number = intent.try_number, %client, "imaging try claimed");
        }
        ClaimDecision::Again => {
            tracing::info!(endpoint = %key, attempt = %intent.attempt_id, %client, "imaging try claimed again by its holder");
        }
        ClaimDecision::Taken { holder } => {
            tracing::warn!(endpoint = %key, attempt = %intent.attempt_id, %holder, %client, "a second machine claimed an imaging try");
            return Err(Refusal::Conflict(format!(
                "attempt {} try {} of {key} was claimed by another machine; recast stops the attempt for a person to check",
                p.attempt, p.try_number
            )));
        }
        ClaimDecision::NotYet { step } => {
            return Err(Refusal::Conflict(format!(
                "attempt {} of {key} is at step {step:?}: recast has not restarted the machine yet",
                p.attempt
            )));
        }
    }
    let token = svc.key.client_token(
        &intent.namespace,
        &intent.endpoint,
        &intent.attempt_id,
        intent.try_number,
        &client,
    );
    let task_url = format!(
        "{}/task",
        super::render::attempt_url(svc.protocol_base(), &intent)
    );
    let mut resp = if q.format.as_deref() == Some("text") {
        text(StatusCode::OK, format!("{token}\n"))
    } else {
        axum::Json(ClaimAnswer { token, task_url }).into_response()
    };
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    Ok(resp)
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

async fn task<B: Backend + BootIntents>(
    State(svc): State<Arc<BootHttp<B>>>,
    Path(p): Path<TryPath>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    Query(q): Query<TokenQuery>,
    headers: HeaderMap,
) -> Result<Response, Refusal> {
    let intent = svc
        .authorize(&p, &client_address(peer), &headers, &q)
        .await?;
    Ok(axum::Json(servable_task(&svc, &intent).await?).into_response())
}

/// The try's task, once the machine's provisioning is known to be servable; otherwise the try
/// ends here (the imaging environment has written nothing yet) and the refusal says why.
async fn servable_task<B: Backend + BootIntents>(
    svc: &BootHttp<B>,
    intent: &BootIntent,
) -> Result<ImagingTask, Refusal> {
    let intent = intent.clone();
    let golden = svc.golden_image_of(&intent).await;
    let image = svc.image_file(&intent, golden.as_ref()).await?;
    // Every URL of the protocol on the HTTPS listener when there is one: the token goes
    // nowhere else.
    let attempt_url = super::render::attempt_url(svc.protocol_base(), &intent);
    let ep = svc.endpoint_of(&intent).await?;
    // The machine's provisioning is checked before the imaging environment writes anything:
    // a profile that cannot be served ends the try here, with the disk untouched.
    let servable = match svc.provisioning_of(&intent, &ep).await {
        Ok(p) if p.holds_secret() && svc.config.https_base_url.is_none() => {
            Err(NEEDS_HTTPS.to_string())
        }
        Ok(_) => Ok(()),
        Err(ProvisioningProblem::Fix(why)) => Err(why),
        Err(ProvisioningProblem::Unavailable(why)) => return Err(Refusal::Unavailable(why)),
    };
    match servable {
        Ok(()) => {}
        Err(why) => {
            tracing::warn!(endpoint = %intent.key(), attempt = %intent.attempt_id, "imaging try ended before any write: {why}");
            let refusal = format!("cannot provision this machine: {why}");
            svc.post(
                &intent,
                Input::ImagingFinished {
                    attempt_id: intent.attempt_id.clone(),
                    try_number: Some(intent.try_number),
                    result: Err(format!("task: {refusal}")),
                    refusal: None,
                },
            )
            .await;
            return Err(Refusal::Conflict(refusal));
        }
    };
    Ok(ImagingTask {
        namespace: intent.namespace.clone(),
        endpoint: intent.endpoint.clone(),
        attempt_id: intent.attempt_id.clone(),
        try_number: intent.try_number,
        boot_mode: intent.boot_mode.clone(),
        hostname: recast_core::naming::computer_name(&intent.endpoint, ep.spec.hostname.as_deref()),
        image: ImageTaskFile {
            name: intent.image.clone(),
            url: image.url,
            sha256: image.sha256,
            size: image.size,
            index: image.index,
        },
        identity: recast_core::imaging::TaskIdentity::of(&ep.spec.identity),
        target_disk: recast_core::imaging::target_disk(ep.spec.target_disk.as_ref()),
        progress_url: format!("{attempt_url}/progress"),
        result_url: format!("{attempt_url}/result"),
        unattend_url: format!("{attempt_url}/unattend.xml"),
        agent_config_url: format!("{attempt_url}/agent.json"),
        drivers: svc.driver_sets(golden.as_ref()).await,
        multicast: svc.multicast_join(&intent, &ep, image.index).await,
    })
}

/// WinPE's preflight (startnet.cmd, before any write): what WinPE sees, judged by the rules
/// recast-imager runs on Linux (recast_core::winpe_preflight). The answer is the plan as
/// `KEY=value` lines; a machine that must not be written ends the try here, with the same
/// refusal kinds the Linux imager reports.
async fn preflight<B: Backend + BootIntents>(
    State(svc): State<Arc<BootHttp<B>>>,
    Path(p): Path<TryPath>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    Query(q): Query<TokenQuery>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, Refusal> {
    use recast_core::winpe_preflight::{parse, plan};
    let intent = svc
        .authorize(&p, &client_address(peer), &headers, &q)
        .await?;
    let task = servable_task(&svc, &intent).await?;
    let report = parse(&body);
    match plan(&task, &report) {
        Ok(plan) => {
            let message = format!(
                "preflight: {}; writing {}{}",
                plan.identity,
                plan.disk_summary,
                plan.drivers
                    .as_ref()
                    .map(|d| format!(", drivers of {} {}", d.manufacturer, d.model))
                    .unwrap_or_default()
            );
            tracing::info!(endpoint = %intent.key(), attempt = %intent.attempt_id, "{message}");
            svc.post(
                &intent,
                Input::ImagingProgress {
                    attempt_id: intent.attempt_id.clone(),
                    try_number: Some(intent.try_number),
                    percent: 4,
                    secure_boot: None,
                    firmware: None,
                },
            )
            .await;
            // Text for this try only, never cached: what `script` answers.
            Ok(script(plan.render()))
        }
        Err(refused) => {
            tracing::warn!(endpoint = %intent.key(), attempt = %intent.attempt_id, "WinPE preflight refused, nothing written: {}", refused.message);
            svc.post(
                &intent,
                Input::ImagingFinished {
                    attempt_id: intent.attempt_id.clone(),
                    try_number: Some(intent.try_number),
                    result: Err(format!("preflight: {}", refused.message)),
                    refusal: refused.refusal,
                },
            )
            .await;
            Err(Refusal::Conflict(format!(
                "nothing written: {}",
                refused.message
            )))
        }
    }
}

/// The last bytes of a log the imaging environment sends when a step fails (startnet.cmd:
/// DISM's log), kept in the boot service's log for the person who reads the failure: WinPE's
/// RAM disk is gone after the reboot.
pub const LOG_TAIL_BYTES: usize = 4096;
/// More than any DISM log of one WinPE session; the body is read (after the token is checked)
/// keeping only its tail, and a longer one is refused there.
const MAX_LOG_BYTES: usize = 64 << 20;

async fn log_upload<B: Backend + BootIntents>(
    State(svc): State<Arc<BootHttp<B>>>,
    Path(p): Path<TryPath>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    Query(q): Query<LogQuery>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response, Refusal> {
    use futures::StreamExt;
    let token = TokenQuery { token: q.token };
    // The token first: nobody else gets the body read.
    let intent = svc
        .authorize(&p, &client_address(peer), &headers, &token)
        .await?;
    let too_large = || {
        text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("a log is at most {MAX_LOG_BYTES} bytes\n"),
        )
    };
    // A declared length over the limit is refused before the body is read.
    if headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n > MAX_LOG_BYTES as u64)
    {
        return Ok(too_large());
    }
    let mut stream = body.into_data_stream();
    let mut kept: Vec<u8> = Vec::new();
    let mut total = 0usize;
    let mut utf16 = None::<bool>;
    while let Some(chunk) = stream.next().await {
        let Ok(chunk) = chunk else {
            return Ok(text(StatusCode::BAD_REQUEST, "the log's body broke off\n"));
        };
        total += chunk.len();
        if total > MAX_LOG_BYTES {
            return Ok(too_large());
        }
        kept.extend_from_slice(&chunk);
        // The byte-order mark, once the first two bytes are in (a chunk may hold one).
        if utf16.is_none() && kept.len() >= 2 {
            utf16 = Some(kept.starts_with(&[0xFF, 0xFE]));
        }
        // Keep an even number of bytes beyond twice the tail (UTF-16 stays aligned).
        if kept.len() > 4 * LOG_TAIL_BYTES {
            let cut = (kept.len() - 2 * LOG_TAIL_BYTES) & !1;
            kept.drain(..cut);
        }
    }
    let body = if utf16 == Some(true) && !kept.starts_with(&[0xFF, 0xFE]) {
        // The mark was cut off with the head: put it back so the tail decodes as UTF-16.
        [vec![0xFF, 0xFE], kept].concat()
    } else {
        kept
    };
    let name = q
        .name
        .filter(|n| {
            n.len() <= 64
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || ".-_".contains(c))
        })
        .unwrap_or_else(|| "log".into());
    let tail = log_tail(&body, LOG_TAIL_BYTES);
    lock(&svc.log_tails).insert(
        intent.key(),
        (
            intent.attempt_id.clone(),
            intent.try_number,
            format!("{name} ends: {}", last_lines(&tail, 3, 600)),
        ),
    );
    tracing::warn!(
        endpoint = %intent.key(),
        attempt = %intent.attempt_id,
        try_number = intent.try_number,
        log = %name,
        "the imaging environment's {name} ends with:\n{tail}"
    );
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Debug, serde::Deserialize)]
pub struct LogQuery {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    name: Option<String>,
}

/// The last `n` non-empty lines of `text`, joined with " | ", at most `max` characters (the
/// end kept).
pub fn last_lines(text: &str, n: usize, max: usize) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let joined = lines[lines.len().saturating_sub(n)..].join(" | ");
    let chars: Vec<char> = joined.chars().collect();
    if chars.len() <= max {
        joined
    } else {
        chars[chars.len() - max..].iter().collect()
    }
}

/// The last `max` bytes of a log as text (UTF-16LE logs decoded), starting at a line.
pub fn log_tail(body: &[u8], max: usize) -> String {
    let utf16 = body.starts_with(&[0xFF, 0xFE]);
    let text = if utf16 {
        let units: Vec<u16> = body[2..]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        String::from_utf16_lossy(&units)
    } else {
        String::from_utf8_lossy(body).into_owned()
    };
    if text.len() <= max {
        return text;
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    let tail = &text[start..];
    match tail.find('\n') {
        Some(nl) if nl + 1 < tail.len() => tail[nl + 1..].to_string(),
        _ => tail.to_string(),
    }
}

/// startnet.cmd and winpeshl.ini are what to boot, like the iPXE script: served for the armed
/// try without a token and holding no secret. startnet.cmd claims the try before it touches
/// the disk.
async fn startnet<B: Backend + BootIntents>(
    State(svc): State<Arc<BootHttp<B>>>,
    Path(p): Path<TryPath>,
) -> Result<Response, Refusal> {
    let intent = svc.armed(&p).await?;
    let golden = svc.golden_image_of(&intent).await;
    let image = svc.image_file(&intent, golden.as_ref()).await?;
    let view = svc.view(&intent);
    Ok(script(svc.renderer.startnet(
        &view,
        &image,
        &svc.config.site,
    )?))
}

async fn winpeshl<B: Backend + BootIntents>(
    State(svc): State<Arc<BootHttp<B>>>,
    Path(p): Path<TryPath>,
) -> Result<Response, Refusal> {
    svc.armed(&p).await?;
    Ok(script(svc.renderer.winpeshl()?))
}

async fn unattend<B: Backend + BootIntents>(
    State(svc): State<Arc<BootHttp<B>>>,
    Path(p): Path<TryPath>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    Query(q): Query<TokenQuery>,
    over_https: Option<axum::Extension<OverHttps>>,
    headers: HeaderMap,
) -> Result<Response, Refusal> {
    let intent = svc
        .authorize(&p, &client_address(peer), &headers, &q)
        .await?;
    let ep = svc.endpoint_of(&intent).await?;
    let provisioning = svc.provisioning_for_file(&intent, &ep).await?;
    credential_transport(
        over_https.is_some(),
        svc.config.https_base_url.is_some(),
        provisioning.holds_secret(),
    )
    .map_err(Refusal::Forbidden)?;
    let view = svc.view(&intent);
    let computer_name =
        recast_core::naming::computer_name(&intent.endpoint, ep.spec.hostname.as_deref());
    let golden = svc.golden_image_of(&intent).await;
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/xml"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        svc.renderer.unattend(
            &view,
            &computer_name,
            &BootHttp::<B>::image_arch(golden.as_ref()),
            &provisioning,
            golden
                .as_ref()
                .is_some_and(|g| !g.spec.drivers.is_empty())
                .then_some(DRIVER_PATH),
        )?,
    )
        .into_response())
}

/// unattend.xml's processorArchitecture for an image: its verified facts' arch when that is one
/// unattend knows, else the spec's expected arch, else amd64.
pub fn unattend_arch(
    facts_arch: Option<&str>,
    expected: Option<recast_crds::golden_image::Arch>,
) -> String {
    use recast_crds::golden_image::Arch;
    match facts_arch.map(str::to_ascii_lowercase).as_deref() {
        Some(a @ ("amd64" | "arm64" | "x86")) => a.to_string(),
        _ => match expected {
            Some(Arch::Arm64) => "arm64".into(),
            _ => "amd64".into(),
        },
    }
}

/// The enrollment credential of an attempt (a different HMAC domain from the try token).
pub fn enrollment_token(key: &TokenKey, namespace: &str, endpoint: &str, attempt: &str) -> String {
    key.token(namespace, endpoint, &enrollment_domain(attempt), 0)
}

/// Whether `presented` is the enrollment credential of this attempt (constant time).
pub fn enrollment_token_valid(
    key: &TokenKey,
    namespace: &str,
    endpoint: &str,
    attempt: &str,
    presented: &str,
) -> bool {
    key.verify(
        namespace,
        endpoint,
        &enrollment_domain(attempt),
        0,
        presented,
    )
}

fn enrollment_domain(attempt: &str) -> String {
    format!("enroll/{attempt}")
}

async fn agent_config<B: Backend + BootIntents>(
    State(svc): State<Arc<BootHttp<B>>>,
    Path(p): Path<TryPath>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    Query(q): Query<TokenQuery>,
    over_https: Option<axum::Extension<OverHttps>>,
    headers: HeaderMap,
) -> Result<Response, Refusal> {
    let intent = svc
        .authorize(&p, &client_address(peer), &headers, &q)
        .await?;
    credential_transport(
        over_https.is_some(),
        svc.config.https_base_url.is_some(),
        false,
    )
    .map_err(Refusal::Forbidden)?;
    let unavailable = |e: crate::store::BackendError| {
        Refusal::Unavailable(format!("the store is unavailable ({e}); retry"))
    };
    let ep = svc.endpoint_of(&intent).await?;
    let policy = crate::store::policy_view_for(svc.backend.as_ref(), &ep)
        .await
        .map_err(unavailable)?;
    let update_mode = recast_core::hold::effective_mode(&ep.spec, &policy);
    let mut resp = axum::Json(AgentConfig {
        update_mode,
        enrollment_token: enrollment_token(
            &svc.key,
            &intent.namespace,
            &intent.endpoint,
            &intent.attempt_id,
        ),
        namespace: intent.namespace,
        endpoint: intent.endpoint,
        attempt_id: intent.attempt_id,
        gateway_url: svc.config.gateway_url.clone(),
    })
    .into_response();
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    Ok(resp)
}

async fn progress<B: Backend + BootIntents>(
    State(svc): State<Arc<BootHttp<B>>>,
    Path(p): Path<TryPath>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    Query(q): Query<TokenQuery>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, Refusal> {
    let intent = svc
        .authorize(&p, &client_address(peer), &headers, &q)
        .await?;
    let report: ProgressReport = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return Ok(text(
                StatusCode::BAD_REQUEST,
                format!(
                    "progress must be JSON {{\"percent\": 0-100, \"step\": \"...\", \"message\": \"...\"}}: {e}\n"
                ),
            ));
        }
    };
    if report.percent > 100 {
        return Ok(text(
            StatusCode::UNPROCESSABLE_ENTITY,
            "percent must be 0 to 100\n",
        ));
    }
    if let Some(Err(e)) = report.firmware.as_ref().map(FirmwareReport::check) {
        return Ok(text(StatusCode::UNPROCESSABLE_ENTITY, format!("{e}\n")));
    }
    tracing::info!(
        endpoint = %intent.key(),
        attempt = %intent.attempt_id,
        percent = report.percent,
        secure_boot = ?report.secure_boot,
        step = report.step.as_deref().unwrap_or(""),
        message = report.message.as_deref().unwrap_or(""),
        "imaging progress"
    );
    svc.post(
        &intent,
        Input::ImagingProgress {
            attempt_id: intent.attempt_id.clone(),
            try_number: Some(intent.try_number),
            percent: report.percent,
            secure_boot: report.secure_boot,
            firmware: report.firmware,
        },
    )
    .await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn result<B: Backend + BootIntents>(
    State(svc): State<Arc<BootHttp<B>>>,
    Path(p): Path<TryPath>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    Query(q): Query<TokenQuery>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, Refusal> {
    let intent = svc
        .authorize(&p, &client_address(peer), &headers, &q)
        .await?;
    let report: ResultReport = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return Ok(text(
                StatusCode::BAD_REQUEST,
                format!(
                    "result must be JSON {{\"ok\": true}} or {{\"ok\": false, \"step\": \"...\", \"error\": \"...\", \"refusal\": \"wrongMachine\" | \"noTargetDisk\" | \"willNotBoot\" (optional)}}: {e}\n"
                ),
            ));
        }
    };
    // The log the try sent before this failure, if any, says what went wrong in its words.
    let log = lock(&svc.log_tails)
        .remove(&intent.key())
        .filter(|(a, t, _)| *a == intent.attempt_id && *t == intent.try_number)
        .map(|(_, _, lines)| lines);
    let (result, refusal) = match report.outcome() {
        Ok(()) => (Ok(()), None),
        Err((why, refusal)) => (
            Err(match log {
                Some(lines) => format!("{why}; {lines}"),
                None => why,
            }),
            refusal,
        ),
    };
    tracing::info!(
        endpoint = %intent.key(),
        attempt = %intent.attempt_id,
        ok = report.ok,
        refusal = ?refusal,
        error = report.error.as_deref().unwrap_or(""),
        "imaging finished"
    );
    svc.post(
        &intent,
        Input::ImagingFinished {
            attempt_id: intent.attempt_id.clone(),
            try_number: Some(intent.try_number),
            result,
            refusal,
        },
    )
    .await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_logs_tail_starts_at_a_line_in_either_encoding() {
        let mut log = "2026-01-14 08:01:00, Info DISM starting\r\n".repeat(1000);
        log.push_str("2026-01-14 08:09:00, Error DISM Image apply failed 0x80070070\r\n");
        let tail = log_tail(log.as_bytes(), 200);
        assert!(
            tail.len() <= 200 && tail.starts_with("2026-01-14"),
            "{tail:?}"
        );
        assert!(tail.ends_with("0x80070070\r\n"));
        let utf16: Vec<u8> = [0xFF, 0xFE]
            .into_iter()
            .chain(log.encode_utf16().flat_map(u16::to_le_bytes))
            .collect();
        assert_eq!(log_tail(&utf16, 200), tail);
        assert_eq!(
            last_lines(&tail, 1, 600),
            "2026-01-14 08:09:00, Error DISM Image apply failed 0x80070070"
        );
        assert_eq!(
            last_lines("a\n\nb\nccc\n", 2, 5),
            "b | ccc".chars().skip(2).collect::<String>()
        );
        assert_eq!(log_tail(b"short", 200), "short");
    }

    #[test]
    fn a_try_is_claimed_once_by_one_address() {
        use ClaimDecision::*;
        use ReimageStep::*;
        // Nobody holds it: recast must have restarted the machine first.
        for step in [PowerCycling, Booting, Applying] {
            assert_eq!(decide_claim(step, None, "10.0.0.5"), Bind, "{step:?}");
        }
        for step in [ArmingBoot, FirstBoot] {
            assert_eq!(
                decide_claim(step, None, "10.0.0.5"),
                NotYet { step },
                "{step:?}"
            );
        }
        // Held: the holder again, or anyone else refused, at every step.
        for step in [ArmingBoot, PowerCycling, Booting, Applying, FirstBoot] {
            assert_eq!(decide_claim(step, Some("10.0.0.5"), "10.0.0.5"), Again);
            assert_eq!(
                decide_claim(step, Some("10.0.0.5"), "10.0.0.6"),
                Taken {
                    holder: "10.0.0.5".into()
                }
            );
        }
    }

    #[test]
    fn an_ipv4_client_on_a_dual_stack_socket_is_its_ipv4_address() {
        let mapped: std::net::SocketAddr = "[::ffff:10.0.40.17]:5000".parse().unwrap();
        assert_eq!(client_address(mapped), "10.0.40.17");
        let v6: std::net::SocketAddr = "[fd00::17]:5000".parse().unwrap();
        assert_eq!(client_address(v6), "fd00::17");
    }
}
