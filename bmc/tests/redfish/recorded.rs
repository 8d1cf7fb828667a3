//! A recorded-response BMC: payloads in the shape the vendors document (Dell iDRAC 9's SEL
//! under the manager, HPE iLO 5's IML under the system, DMTF's session, ETag and task monitor
//! behaviour), served by axum on loopback. Everything here is what sushy-tools' emulator does
//! not do; the `sushy` module covers what it does.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use recast_bmc::{
    AuthMode, Bmc, BootMode, ClientConfig, NetworkBoot, OverrideCheck, PowerAction, RedfishError,
    crash_evidence,
};
use serde_json::{Value, json};

use crate::support::fast_config;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Vendor {
    /// Dell iDRAC 9: System.Embedded.1, SEL at Managers/iDRAC.Embedded.1/LogServices/Sel.
    Idrac,
    /// HPE iLO 5: Systems/1, IML at Systems/1/LogServices/IML, reset types via ActionInfo.
    Ilo,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    None,
    /// Another writer changes the system right before our first PATCH.
    ConcurrentChange,
    /// Every PATCH meets a stale ETag.
    AlwaysStale,
    TaskFails,
    TaskNeverEnds,
    ResetServerError,
    SystemStatus(u16),
    SystemMalformed,
    SystemNotObject,
    SystemWithoutId,
    SystemMistypedPower,
    SystemHuge,
    SystemHugeChunked,
    SystemSlow,
    SystemTrickle,
    RedirectOtherHost,
    RedirectSameHost,
    MemberOnOtherHost,
    /// The first session token expires after a few requests (BMC session timeout).
    SessionExpires,
}

struct BmcState {
    vendor: Vendor,
    fault: Fault,
    port: u16,
    generation: AtomicU32,
    bumped: AtomicBool,
    power: Mutex<String>,
    boot: Mutex<(String, String, String)>,
    if_matches: Mutex<Vec<Option<String>>>,
    hits: Mutex<HashMap<String, u32>>,
    tokens: Mutex<HashMap<String, u32>>,
    sessions_created: AtomicU32,
    sessions_deleted: AtomicU32,
    task_polls: AtomicU32,
    pending_power: Mutex<Option<String>>,
}

const USER: &str = "root";
const PASSWORD: &str = "calvin-not-really";

pub struct Recorded {
    url: String,
    state: Arc<BmcState>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Recorded {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Recorded {
    async fn start(vendor: Vendor, fault: Fault) -> Recorded {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(BmcState {
            vendor,
            fault,
            port,
            generation: AtomicU32::new(1),
            bumped: AtomicBool::new(false),
            power: Mutex::new("On".into()),
            boot: Mutex::new(("None".into(), "Disabled".into(), "UEFI".into())),
            if_matches: Mutex::new(Vec::new()),
            hits: Mutex::new(HashMap::new()),
            tokens: Mutex::new(HashMap::new()),
            sessions_created: AtomicU32::new(0),
            sessions_deleted: AtomicU32::new(0),
            task_polls: AtomicU32::new(0),
            pending_power: Mutex::new(None),
        });
        let shared = state.clone();
        let app = axum::Router::new().fallback(
            move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                let state = shared.clone();
                async move { handle(&state, method, uri, headers, body).await }
            },
        );
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Recorded {
            url: format!("http://127.0.0.1:{port}"),
            state,
            server,
        }
    }

    fn config(&self) -> ClientConfig {
        fast_config(&self.url).with_credentials(USER, PASSWORD)
    }

    fn hits(&self, path: &str) -> u32 {
        self.state
            .hits
            .lock()
            .unwrap()
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    fn system_path(&self) -> &'static str {
        match self.state.vendor {
            Vendor::Idrac => "/redfish/v1/Systems/System.Embedded.1",
            Vendor::Ilo => "/redfish/v1/Systems/1",
        }
    }
}

fn json_reply(status: StatusCode, v: Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

fn redfish_error(status: StatusCode, message: &str) -> Response {
    json_reply(
        status,
        json!({"error": {"code": "Base.1.0.GeneralError", "message": message,
                "@Message.ExtendedInfo": [{"MessageId": "Base.1.0.GeneralError", "Message": message}]}}),
    )
}

async fn handle(
    st: &BmcState,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().trim_end_matches('/').to_string();
    *st.hits.lock().unwrap().entry(path.clone()).or_default() += 1;
    let sys = match st.vendor {
        Vendor::Idrac => "/redfish/v1/Systems/System.Embedded.1",
        Vendor::Ilo => "/redfish/v1/Systems/1",
    };

    // The service root and session login are open; everything else needs a live token.
    if path == "/redfish/v1" {
        return json_reply(
            StatusCode::OK,
            json!({
                "@odata.id": "/redfish/v1/", "Id": "RootService", "RedfishVersion": "1.11.0",
                "Systems": {"@odata.id": "/redfish/v1/Systems"},
                "Managers": {"@odata.id": "/redfish/v1/Managers"},
                "SessionService": {"@odata.id": "/redfish/v1/SessionService"},
                "Links": {"Sessions": {"@odata.id": "/redfish/v1/SessionService/Sessions"}}
            }),
        );
    }
    if path == "/redfish/v1/SessionService/Sessions" && method == Method::POST {
        let creds: Value = serde_json::from_slice(&body).unwrap_or_default();
        if creds["UserName"] != USER || creds["Password"] != PASSWORD {
            return redfish_error(StatusCode::UNAUTHORIZED, "Invalid username or password.");
        }
        let n = st.sessions_created.fetch_add(1, Ordering::SeqCst) + 1;
        let token = format!("token-{n}");
        st.tokens.lock().unwrap().insert(token.clone(), 0);
        let location = format!("/redfish/v1/SessionService/Sessions/{n}");
        let mut resp = json_reply(
            StatusCode::CREATED,
            json!({"@odata.id": location, "Id": n.to_string(), "UserName": USER}),
        );
        resp.headers_mut()
            .insert("X-Auth-Token", token.parse().unwrap());
        resp.headers_mut()
            .insert(header::LOCATION, location.parse().unwrap());
        return resp;
    }
    let token = headers
        .get("X-Auth-Token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    {
        let mut tokens = st.tokens.lock().unwrap();
        let Some(uses) = tokens.get_mut(&token) else {
            return redfish_error(StatusCode::UNAUTHORIZED, "No valid session found.");
        };
        *uses += 1;
        if st.fault == Fault::SessionExpires && token == "token-1" && *uses > 3 {
            tokens.remove(&token);
            return redfish_error(StatusCode::UNAUTHORIZED, "Session expired.");
        }
    }
    if path.starts_with("/redfish/v1/SessionService/Sessions/") && method == Method::DELETE {
        st.tokens.lock().unwrap().remove(&token);
        st.sessions_deleted.fetch_add(1, Ordering::SeqCst);
        return StatusCode::NO_CONTENT.into_response();
    }

    if path == "/redfish/v1/Systems" {
        match st.fault {
            Fault::RedirectOtherHost => {
                // Same port, other host name: another origin as far as credentials go.
                let to = format!("http://localhost:{}/redfish/v1/Systems", st.port);
                return (StatusCode::FOUND, [(header::LOCATION, to)]).into_response();
            }
            Fault::RedirectSameHost if uri.query().is_none() => {
                return (
                    StatusCode::TEMPORARY_REDIRECT,
                    [(header::LOCATION, "/redfish/v1/Systems?moved=1")],
                )
                    .into_response();
            }
            Fault::MemberOnOtherHost => {
                return json_reply(
                    StatusCode::OK,
                    json!({"Members": [{"@odata.id": format!("http://localhost:{}{sys}", st.port)}]}),
                );
            }
            _ => {}
        }
        return json_reply(
            StatusCode::OK,
            json!({"@odata.id": "/redfish/v1/Systems", "Members@odata.count": 1, "Members": [{"@odata.id": sys}]}),
        );
    }

    if path == sys {
        return system(st, sys, method, &headers, &body).await;
    }
    if path == format!("{sys}/Actions/ComputerSystem.Reset") && method == Method::POST {
        if st.fault == Fault::ResetServerError {
            return redfish_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Internal error while resetting.",
            );
        }
        let req: Value = serde_json::from_slice(&body).unwrap_or_default();
        let reset = req["ResetType"].as_str().unwrap_or("").to_string();
        let allowed = [
            "On",
            "ForceOff",
            "ForceRestart",
            "GracefulShutdown",
            "PushPowerButton",
            "Nmi",
        ];
        if !allowed.contains(&reset.as_str()) {
            return redfish_error(
                StatusCode::BAD_REQUEST,
                &format!("The value {reset} for ResetType is not allowed."),
            );
        }
        *st.pending_power.lock().unwrap() = Some(reset);
        let mut resp = json_reply(
            StatusCode::ACCEPTED,
            json!({"@odata.id": "/redfish/v1/TaskService/Tasks/7", "TaskState": "Running"}),
        );
        resp.headers_mut().insert(
            header::LOCATION,
            "/redfish/v1/TaskService/TaskMonitors/7".parse().unwrap(),
        );
        return resp;
    }
    if path == "/redfish/v1/TaskService/TaskMonitors/7" {
        let n = st.task_polls.fetch_add(1, Ordering::SeqCst);
        if st.fault == Fault::TaskNeverEnds || n < 2 {
            return json_reply(
                StatusCode::ACCEPTED,
                json!({"TaskState": "Running", "PercentComplete": n * 40}),
            );
        }
        if st.fault == Fault::TaskFails {
            return json_reply(
                StatusCode::OK,
                json!({"TaskState": "Exception", "TaskStatus": "Critical",
                "Messages": [{"MessageId": "Base.1.8.InternalError", "Message": "The power controller did not respond."}]}),
            );
        }
        if let Some(reset) = st.pending_power.lock().unwrap().take() {
            *st.power.lock().unwrap() = if reset.contains("Off") || reset == "GracefulShutdown" {
                "Off"
            } else {
                "On"
            }
            .into();
        }
        return json_reply(
            StatusCode::OK,
            json!({"TaskState": "Completed", "TaskStatus": "OK", "Messages": []}),
        );
    }
    if path == format!("{sys}/ResetActionInfo") {
        return json_reply(
            StatusCode::OK,
            json!({"@odata.id": format!("{sys}/ResetActionInfo"), "Id": "ResetActionInfo",
            "Parameters": [{"Name": "ResetType", "Required": true, "DataType": "String",
                "AllowableValues": ["On", "ForceOff", "GracefulShutdown", "ForceRestart", "Nmi", "PushPowerButton"]}]}),
        );
    }
    match (st.vendor, path.as_str()) {
        (Vendor::Idrac, "/redfish/v1/Managers/iDRAC.Embedded.1") => json_reply(
            StatusCode::OK,
            json!({
            "@odata.id": "/redfish/v1/Managers/iDRAC.Embedded.1", "Id": "iDRAC.Embedded.1",
            "LogServices": {"@odata.id": "/redfish/v1/Managers/iDRAC.Embedded.1/LogServices"}}),
        ),
        (Vendor::Idrac, "/redfish/v1/Managers/iDRAC.Embedded.1/LogServices") => json_reply(
            StatusCode::OK,
            json!({
            "Members": [{"@odata.id": "/redfish/v1/Managers/iDRAC.Embedded.1/LogServices/Lclog"},
                        {"@odata.id": "/redfish/v1/Managers/iDRAC.Embedded.1/LogServices/Sel"}]}),
        ),
        (Vendor::Idrac, "/redfish/v1/Managers/iDRAC.Embedded.1/LogServices/Sel") => json_reply(
            StatusCode::OK,
            json!({
            "@odata.id": "/redfish/v1/Managers/iDRAC.Embedded.1/LogServices/Sel", "Id": "Sel", "LogEntryType": "SEL",
            "Entries": {"@odata.id": "/redfish/v1/Managers/iDRAC.Embedded.1/LogServices/Sel/Entries"}}),
        ),
        (Vendor::Idrac, "/redfish/v1/Managers/iDRAC.Embedded.1/LogServices/Sel/Entries") => {
            json_reply(StatusCode::OK, idrac_sel())
        }
        (Vendor::Ilo, "/redfish/v1/Systems/1/LogServices") => json_reply(
            StatusCode::OK,
            json!({
            "Members": [{"@odata.id": "/redfish/v1/Systems/1/LogServices/IML"}]}),
        ),
        (Vendor::Ilo, "/redfish/v1/Systems/1/LogServices/IML") => json_reply(
            StatusCode::OK,
            json!({
            "@odata.id": "/redfish/v1/Systems/1/LogServices/IML", "Id": "IML",
            "Entries": {"@odata.id": "/redfish/v1/Systems/1/LogServices/IML/Entries"}}),
        ),
        (Vendor::Ilo, "/redfish/v1/Systems/1/LogServices/IML/Entries") => {
            // iLO pages its collections; the second page is reached through nextLink.
            if uri.query() == Some("$skip=2") {
                json_reply(StatusCode::OK, json!({"Members": ilo_iml()[2..].to_vec()}))
            } else {
                json_reply(
                    StatusCode::OK,
                    json!({"Members": ilo_iml()[..2].to_vec(),
                    "Members@odata.nextLink": "/redfish/v1/Systems/1/LogServices/IML/Entries?$skip=2"}),
                )
            }
        }
        (Vendor::Ilo, "/redfish/v1/Systems/1/LogServices/IML/Entries/4") => json_reply(
            StatusCode::OK,
            json!({
            "@odata.id": "/redfish/v1/Systems/1/LogServices/IML/Entries/4", "Id": "4", "Created": "2026-01-14T07:02:11Z",
            "EntryType": "Oem", "Severity": "Critical", "Message": "Blue Screen Trap (BugCheck, STOP: 0x0000007B (0xFFFFF880009A97E8, 0xFFFFFFFFC0000034, 0x0, 0x0))"}),
        ),
        _ => redfish_error(
            StatusCode::NOT_FOUND,
            &format!("The resource at the URI {path} was not found."),
        ),
    }
}

/// iDRAC 9 SEL entries as its Redfish service lists them (EntryType SEL, SensorType, the
/// decoded message and its MessageId from Dell's registry).
fn idrac_sel() -> Value {
    json!({
        "@odata.id": "/redfish/v1/Managers/iDRAC.Embedded.1/LogServices/Sel/Entries",
        "Members@odata.count": 5,
        "Members": [
            {"@odata.id": "/redfish/v1/Managers/iDRAC.Embedded.1/LogServices/Sel/Entries/1", "Id": "1",
             "Created": "2026-01-13T22:14:09-06:00", "EntryType": "SEL", "EntryCode": "Assert", "SensorType": "System Event",
             "Severity": "OK", "MessageId": "SEL9901", "Message": "OEM software event."},
            {"@odata.id": "/redfish/v1/Managers/iDRAC.Embedded.1/LogServices/Sel/Entries/2", "Id": "2",
             "Created": "2026-01-14T03:01:55-06:00", "EntryType": "SEL", "EntryCode": "Assert", "SensorType": "OS Stop/Shutdown",
             "Severity": "OK", "MessageId": "OSE0003", "Message": "An OS graceful shut-down occurred."},
            {"@odata.id": "/redfish/v1/Managers/iDRAC.Embedded.1/LogServices/Sel/Entries/3", "Id": "3",
             "Created": "2026-01-14T03:04:40-06:00", "EntryType": "SEL", "EntryCode": "Assert", "SensorType": "OS Stop/Shutdown",
             "Severity": "Critical", "MessageId": "OSE0000", "Message": "A critical stop occurred during OS load."},
            {"@odata.id": "/redfish/v1/Managers/iDRAC.Embedded.1/LogServices/Sel/Entries/4", "Id": "4",
             "Created": "2026-01-14T03:09:12-06:00", "EntryType": "SEL", "EntryCode": "Assert", "SensorType": "Temperature",
             "Severity": "Critical", "MessageId": "TMP0120", "Message": "The system board Inlet temperature is greater than the upper critical threshold."},
            {"@odata.id": "/redfish/v1/Managers/iDRAC.Embedded.1/LogServices/Sel/Entries/5", "Id": "5",
             "Created": "2026-01-14T03:20:02-06:00", "EntryType": "SEL", "EntryCode": "Assert", "SensorType": "OS Stop/Shutdown",
             "Severity": "Critical", "MessageId": "OSE0001", "Message": "A runtime critical stop occurred."},
            "a broken entry that is not an object"
        ]
    })
}

/// iLO 5 IML entries (EntryType Oem with an Hpe class), the last one listed by link only.
fn ilo_iml() -> Vec<Value> {
    vec![
        json!({"@odata.id": "/redfish/v1/Systems/1/LogServices/IML/Entries/1", "Id": "1", "Created": "2026-01-13T21:00:00Z",
               "EntryType": "Oem", "Severity": "OK", "Message": "Firmware flashed (System ROM U30 v2.90 (01/2026))",
               "Oem": {"Hpe": {"Class": 32, "Code": 1}}}),
        json!({"@odata.id": "/redfish/v1/Systems/1/LogServices/IML/Entries/2", "Id": "2", "Created": "2026-01-14T06:58:41Z",
               "EntryType": "Oem", "Severity": "Critical", "Message": "Blue Screen Trap (BugCheck, STOP: 0x000000ED (0xFFFFC58A1C2B9050, 0xFFFFFFFFC0000006, 0x0, 0x0))",
               "Oem": {"Hpe": {"Class": 2, "Code": 23}}}),
        json!({"@odata.id": "/redfish/v1/Systems/1/LogServices/IML/Entries/3", "Id": "3", "Created": "2026-01-14T07:00:02Z",
               "EntryType": "Oem", "Severity": "Caution", "Message": "ASR Detected by System ROM", "Oem": {"Hpe": {"Class": 2, "Code": 1}}}),
        json!({"@odata.id": "/redfish/v1/Systems/1/LogServices/IML/Entries/4"}),
    ]
}

async fn system(
    st: &BmcState,
    sys: &str,
    method: Method,
    headers: &HeaderMap,
    body: &Bytes,
) -> Response {
    match st.fault {
        Fault::SystemStatus(code) => {
            return redfish_error(
                StatusCode::from_u16(code).unwrap(),
                &format!("status {code} as recorded"),
            );
        }
        Fault::SystemMalformed => {
            return (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                "{\"Id\": \"1\", \"PowerState\": ",
            )
                .into_response();
        }
        Fault::SystemNotObject => return json_reply(StatusCode::OK, json!(["Id", "1"])),
        Fault::SystemWithoutId => return json_reply(StatusCode::OK, json!({"PowerState": "On"})),
        Fault::SystemMistypedPower => {
            return json_reply(StatusCode::OK, json!({"Id": "1", "PowerState": 1}));
        }
        Fault::SystemHuge => {
            return json_reply(
                StatusCode::OK,
                json!({"Id": "1", "Pad": "x".repeat(8 << 20)}),
            );
        }
        Fault::SystemHugeChunked => {
            // No Content-Length: the cap must hold while streaming.
            let chunks = futures::stream::iter(
                (0..10_000).map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![b' '; 4096]))),
            );
            return Response::builder()
                .status(200)
                .body(Body::from_stream(chunks))
                .unwrap();
        }
        Fault::SystemSlow => {
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
        Fault::SystemTrickle => {
            let chunks = futures::stream::unfold(0u32, |n| async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                (n < 1000).then(|| (Ok::<_, std::io::Error>(Bytes::from_static(b" ")), n + 1))
            });
            return Response::builder()
                .status(200)
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from_stream(chunks))
                .unwrap();
        }
        _ => {}
    }
    if method == Method::PATCH {
        let sent = headers
            .get(header::IF_MATCH)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        st.if_matches.lock().unwrap().push(sent.clone());
        if st.fault == Fault::ConcurrentChange && !st.bumped.swap(true, Ordering::SeqCst) {
            st.generation.fetch_add(1, Ordering::SeqCst);
        }
        if st.fault == Fault::AlwaysStale {
            st.generation.fetch_add(1, Ordering::SeqCst);
        }
        let current = format!("W/\"{}\"", st.generation.load(Ordering::SeqCst));
        match sent {
            None => {
                return redfish_error(StatusCode::PRECONDITION_REQUIRED, "If-Match is required.");
            }
            Some(tag) if tag != current => {
                return redfish_error(
                    StatusCode::PRECONDITION_FAILED,
                    "The ETag supplied did not match the current ETag.",
                );
            }
            Some(_) => {}
        }
        let req: Value = serde_json::from_slice(body).unwrap_or_default();
        let mut boot = st.boot.lock().unwrap();
        if let Some(t) = req
            .pointer("/Boot/BootSourceOverrideTarget")
            .and_then(Value::as_str)
        {
            boot.0 = t.into();
        }
        if let Some(e) = req
            .pointer("/Boot/BootSourceOverrideEnabled")
            .and_then(Value::as_str)
        {
            boot.1 = e.into();
        }
        if let Some(m) = req
            .pointer("/Boot/BootSourceOverrideMode")
            .and_then(Value::as_str)
        {
            boot.2 = m.into();
        }
        st.generation.fetch_add(1, Ordering::SeqCst);
        return StatusCode::NO_CONTENT.into_response();
    }
    let (target, enabled, mode) = st.boot.lock().unwrap().clone();
    let etag = format!("W/\"{}\"", st.generation.load(Ordering::SeqCst));
    let mut reset = json!({"target": format!("{sys}/Actions/ComputerSystem.Reset")});
    let mut v = json!({
        "@odata.id": sys, "Id": sys.rsplit('/').next().unwrap(), "Name": "System",
        "Manufacturer": if st.vendor == Vendor::Idrac { "Dell Inc." } else { "HPE" },
        "PowerState": *st.power.lock().unwrap(), "Status": {"Health": "OK", "State": "Enabled"},
        "Boot": {"BootSourceOverrideTarget": target, "BootSourceOverrideEnabled": enabled, "BootSourceOverrideMode": mode,
                 "BootSourceOverrideTarget@Redfish.AllowableValues": ["None", "Pxe", "Hdd", "Cd", "BiosSetup", "UefiHttp"]},
    });
    match st.vendor {
        Vendor::Idrac => {
            reset["ResetType@Redfish.AllowableValues"] = json!([
                "On",
                "ForceOff",
                "ForceRestart",
                "GracefulShutdown",
                "PushPowerButton",
                "Nmi"
            ]);
            v["Links"] =
                json!({"ManagedBy": [{"@odata.id": "/redfish/v1/Managers/iDRAC.Embedded.1"}]});
        }
        Vendor::Ilo => {
            reset["@Redfish.ActionInfo"] = json!(format!("{sys}/ResetActionInfo"));
            v["LogServices"] = json!({"@odata.id": "/redfish/v1/Systems/1/LogServices"});
            // iLO also puts the ETag in the body.
            v["@odata.etag"] = json!(etag);
        }
    }
    v["Actions"] = json!({"#ComputerSystem.Reset": reset});
    let mut resp = json_reply(StatusCode::OK, v);
    if st.vendor == Vendor::Idrac {
        resp.headers_mut()
            .insert(header::ETAG, etag.parse().unwrap());
    }
    resp
}

// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn idrac_session_etag_task_monitor_and_sel() {
    let bmc_peer = Recorded::start(Vendor::Idrac, Fault::None).await;
    let bmc = Bmc::connect(bmc_peer.config(), None).await.unwrap();
    assert_eq!(bmc.system_path(), bmc_peer.system_path());
    assert_eq!(bmc_peer.state.sessions_created.load(Ordering::SeqCst), 1);

    let armed = bmc
        .arm_network_boot(NetworkBoot::Pxe, Some(BootMode::Uefi))
        .await
        .unwrap();
    assert_eq!(armed.check, OverrideCheck::Armed);
    assert_eq!(
        *bmc_peer.state.if_matches.lock().unwrap(),
        vec![Some("W/\"1\"".to_string())]
    );

    // The reset is accepted as a task and followed to its end through the monitor.
    let out = bmc.power(PowerAction::Off).await.unwrap();
    assert_eq!(
        (out.reset_type.as_str(), out.after.as_str()),
        ("ForceOff", "Off")
    );
    assert!(bmc_peer.state.task_polls.load(Ordering::SeqCst) >= 3);

    let log = bmc.event_log().await.unwrap();
    assert_eq!(
        log.services,
        vec!["/redfish/v1/Managers/iDRAC.Embedded.1/LogServices/Sel".to_string()]
    );
    assert_eq!(log.entries.len(), 5);
    assert_eq!(log.skipped, 1);
    assert_eq!(
        bmc_peer.hits("/redfish/v1/Managers/iDRAC.Embedded.1/LogServices/Lclog"),
        0,
        "the Lifecycle log is not read"
    );
    let crashes = crash_evidence(&log.entries);
    let ids: Vec<&str> = crashes.iter().map(|c| c.entry_id.as_str()).collect();
    assert_eq!(
        ids,
        ["3", "5"],
        "graceful shut-down and temperature records are not crashes"
    );

    bmc.logout().await.unwrap();
    assert_eq!(bmc_peer.state.sessions_deleted.load(Ordering::SeqCst), 1);
    bmc.logout().await.unwrap();
    assert_eq!(
        bmc_peer.state.sessions_deleted.load(Ordering::SeqCst),
        1,
        "logout is idempotent"
    );
}

#[tokio::test]
async fn ilo_action_info_paged_iml_and_body_etag() {
    let peer = Recorded::start(Vendor::Ilo, Fault::None).await;
    let bmc = Bmc::connect(peer.config(), None).await.unwrap();
    // The reset types come from the ActionInfo resource: no PowerCycle, so ForceRestart.
    let out = bmc.power(PowerAction::Cycle).await.unwrap();
    assert_eq!(out.reset_type, "ForceRestart");
    assert_eq!(peer.hits("/redfish/v1/Systems/1/ResetActionInfo"), 1);

    let armed = bmc
        .arm_network_boot(NetworkBoot::UefiHttp, Some(BootMode::Uefi))
        .await
        .unwrap();
    assert_eq!(armed.check, OverrideCheck::Armed);
    assert_eq!(
        peer.state.if_matches.lock().unwrap()[0].as_deref(),
        Some("W/\"1\"")
    );

    let log = bmc.event_log().await.unwrap();
    assert_eq!(
        log.entries.len(),
        4,
        "both pages and the link-only entry are read"
    );
    let crashes = crash_evidence(&log.entries);
    let codes: Vec<Option<u32>> = crashes.iter().map(|c| c.bugcheck).collect();
    assert_eq!(
        codes,
        [Some(0xED), Some(0x7B)],
        "ASR and firmware records are not crashes"
    );
    assert_eq!(crashes[0].service, "IML");
}

#[tokio::test]
async fn a_session_is_deleted_when_the_client_is_dropped() {
    let peer = Recorded::start(Vendor::Idrac, Fault::None).await;
    {
        let bmc = Bmc::connect(peer.config(), None).await.unwrap();
        bmc.power_state().await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while peer.state.sessions_deleted.load(Ordering::SeqCst) == 0 {
        assert!(
            Instant::now() < deadline,
            "the dropped client's session was never deleted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn an_expired_session_is_renewed_once() {
    let peer = Recorded::start(Vendor::Idrac, Fault::SessionExpires).await;
    let bmc = Bmc::connect(peer.config(), None).await.unwrap();
    for _ in 0..5 {
        bmc.power_state().await.unwrap();
    }
    assert_eq!(peer.state.sessions_created.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn wrong_password_on_a_session_service() {
    let peer = Recorded::start(Vendor::Idrac, Fault::None).await;
    let err = Bmc::connect(fast_config(&peer.url).with_credentials(USER, "nope"), None)
        .await
        .err()
        .unwrap();
    assert!(matches!(err, RedfishError::Unauthorized { .. }), "{err}");
    assert!(err.is_permanent());
    // Basic auth where the BMC wants sessions: the recorded BMC refuses it.
    let mut cfg = peer.config();
    cfg.auth = AuthMode::Basic;
    let err = Bmc::connect(cfg, None).await.err().unwrap();
    assert!(matches!(err, RedfishError::Unauthorized { .. }), "{err}");
}

#[tokio::test]
async fn a_stale_etag_is_reread_and_retried_once() {
    let peer = Recorded::start(Vendor::Idrac, Fault::ConcurrentChange).await;
    let bmc = Bmc::connect(peer.config(), None).await.unwrap();
    let armed = bmc.arm_network_boot(NetworkBoot::Pxe, None).await.unwrap();
    assert!(armed.retried_on_stale_etag);
    assert_eq!(armed.check, OverrideCheck::Armed);
    assert_eq!(
        *peer.state.if_matches.lock().unwrap(),
        vec![Some("W/\"1\"".to_string()), Some("W/\"2\"".to_string())]
    );

    let peer = Recorded::start(Vendor::Idrac, Fault::AlwaysStale).await;
    let bmc = Bmc::connect(peer.config(), None).await.unwrap();
    let err = bmc
        .arm_network_boot(NetworkBoot::Pxe, None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, RedfishError::PreconditionFailed { status: 412, .. }),
        "{err}"
    );
    assert!(!err.is_permanent());
    assert_eq!(
        peer.state.if_matches.lock().unwrap().len(),
        2,
        "retried exactly once"
    );
}

#[tokio::test]
async fn failing_and_endless_tasks() {
    let peer = Recorded::start(Vendor::Idrac, Fault::TaskFails).await;
    let bmc = Bmc::connect(peer.config(), None).await.unwrap();
    let err = bmc.power(PowerAction::Cycle).await.unwrap_err();
    match &err {
        RedfishError::TaskFailed { message, .. } => {
            assert!(message.contains("power controller"), "{message}")
        }
        other => panic!("expected TaskFailed, got {other:?}"),
    }

    let peer = Recorded::start(Vendor::Idrac, Fault::TaskNeverEnds).await;
    let mut cfg = peer.config();
    cfg.task_deadline = Duration::from_secs(2);
    let bmc = Bmc::connect(cfg, None).await.unwrap();
    let started = Instant::now();
    let err = bmc.power(PowerAction::Cycle).await.unwrap_err();
    assert!(matches!(err, RedfishError::TaskDeadline { .. }), "{err}");
    assert!(!err.is_permanent());
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the task deadline bounds the wait"
    );
}

#[tokio::test]
async fn a_reset_that_failed_ambiguously_is_not_repeated() {
    let peer = Recorded::start(Vendor::Idrac, Fault::ResetServerError).await;
    let bmc = Bmc::connect(peer.config(), None).await.unwrap();
    let err = bmc.power(PowerAction::Cycle).await.unwrap_err();
    assert!(
        matches!(err, RedfishError::Server { status: 500, .. }),
        "{err}"
    );
    assert!(!err.is_permanent());
    assert_eq!(
        peer.hits("/redfish/v1/Systems/System.Embedded.1/Actions/ComputerSystem.Reset"),
        1,
        "a 500 may have reset the machine; a second reset could interrupt the boot"
    );
}

#[tokio::test]
async fn http_errors_are_typed_and_4xx_never_retried() {
    type IsExpected = fn(&RedfishError) -> bool;
    let cases: [(u16, IsExpected, bool); 5] = [
        (
            401,
            |e| matches!(e, RedfishError::Unauthorized { .. }),
            true,
        ),
        (403, |e| matches!(e, RedfishError::Forbidden { .. }), true),
        (404, |e| matches!(e, RedfishError::NotFound { .. }), true),
        (
            400,
            |e| matches!(e, RedfishError::Rejected { status: 400, .. }),
            true,
        ),
        (
            500,
            |e| matches!(e, RedfishError::Server { status: 500, .. }),
            false,
        ),
    ];
    for (status, is_expected, permanent) in cases {
        let peer = Recorded::start(Vendor::Idrac, Fault::SystemStatus(status)).await;
        let bmc = Bmc::connect(peer.config(), None).await.unwrap();
        let err = bmc.system().await.unwrap_err();
        assert!(is_expected(&err), "{status}: {err:?}");
        assert_eq!(err.is_permanent(), permanent, "{status}");
        assert!(
            err.to_string()
                .contains(&format!("status {status} as recorded"))
                || status == 401,
            "{err}"
        );
        let hits = peer.hits("/redfish/v1/Systems/System.Embedded.1");
        let expected = match status {
            500 => 1 + peer.config().retries,
            // A 401 on a session is met with one fresh login, then given up.
            401 => 2,
            _ => 1,
        };
        assert_eq!(hits, expected, "{status}");
    }
}

#[tokio::test]
async fn malformed_missing_and_mistyped_replies() {
    for (fault, what) in [
        (Fault::SystemMalformed, "Malformed"),
        (Fault::SystemNotObject, "Malformed"),
        (Fault::SystemWithoutId, "MissingProperty"),
        (Fault::SystemMistypedPower, "MissingProperty"),
    ] {
        let peer = Recorded::start(Vendor::Idrac, fault).await;
        let bmc = Bmc::connect(peer.config(), None).await.unwrap();
        let err = bmc.system().await.unwrap_err();
        let ok = match what {
            "Malformed" => matches!(err, RedfishError::Malformed { .. }),
            _ => matches!(err, RedfishError::MissingProperty { .. }),
        };
        assert!(ok, "{fault:?}: {err:?}");
        assert!(
            err.to_string().contains("System.Embedded.1"),
            "the message names the resource: {err}"
        );
    }
}

#[tokio::test]
async fn huge_and_slow_replies_are_bounded() {
    for fault in [Fault::SystemHuge, Fault::SystemHugeChunked] {
        let peer = Recorded::start(Vendor::Idrac, fault).await;
        let bmc = Bmc::connect(peer.config(), None).await.unwrap();
        let err = bmc.system().await.unwrap_err();
        assert!(
            matches!(err, RedfishError::TooLarge { .. }),
            "{fault:?}: {err:?}"
        );
    }
    for fault in [Fault::SystemSlow, Fault::SystemTrickle] {
        let peer = Recorded::start(Vendor::Idrac, fault).await;
        let mut cfg = peer.config();
        cfg.request_timeout = Duration::from_millis(700);
        cfg.retries = 1;
        let bmc = Bmc::connect(cfg, None).await.unwrap();
        let started = Instant::now();
        let err = bmc.system().await.unwrap_err();
        assert!(
            matches!(err, RedfishError::Timeout { .. }),
            "{fault:?}: {err:?}"
        );
        assert!(!err.is_permanent());
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{fault:?} took {:?}",
            started.elapsed()
        );
        assert_eq!(
            peer.hits("/redfish/v1/Systems/System.Embedded.1"),
            2,
            "a timeout is retried"
        );
    }
}

#[tokio::test]
async fn redirects_stay_on_the_bmc() {
    let peer = Recorded::start(Vendor::Idrac, Fault::RedirectOtherHost).await;
    let err = Bmc::connect(peer.config(), None).await.err().unwrap();
    assert!(
        matches!(err, RedfishError::RedirectRefused { .. }),
        "{err:?}"
    );
    assert!(err.is_permanent());
    assert_eq!(peer.hits("/redfish/v1/Systems"), 1);

    let peer = Recorded::start(Vendor::Idrac, Fault::MemberOnOtherHost).await;
    let bmc = Bmc::connect(peer.config(), None).await.unwrap();
    let err = bmc.system().await.unwrap_err();
    assert!(
        matches!(err, RedfishError::RedirectRefused { .. }),
        "{err:?}"
    );

    let peer = Recorded::start(Vendor::Idrac, Fault::RedirectSameHost).await;
    let bmc = Bmc::connect(peer.config(), None).await.unwrap();
    assert_eq!(bmc.system_path(), "/redfish/v1/Systems/System.Embedded.1");
}

#[tokio::test]
async fn https_to_a_plain_http_bmc_is_a_tls_error() {
    let peer = Recorded::start(Vendor::Idrac, Fault::None).await;
    let url = peer.url.replace("http://", "https://");
    let err = Bmc::connect(fast_config(&url).with_credentials(USER, PASSWORD), None)
        .await
        .err()
        .unwrap();
    assert!(matches!(err, RedfishError::Tls { .. }), "{err:?}");
    assert!(err.is_permanent());
}

#[tokio::test]
async fn unreachable_bmc_is_a_transient_connect_error() {
    let port = recast_tests::free_port();
    let mut cfg = fast_config(&format!("http://127.0.0.1:{port}"));
    cfg.retries = 1;
    let err = Bmc::connect(cfg, None).await.err().unwrap();
    assert!(matches!(err, RedfishError::Connect { .. }), "{err:?}");
    assert!(!err.is_permanent());
    for bad in [
        "ftp://10.0.0.1",
        "https://",
        "10.0.0.1",
        "https://u:p@10.0.0.1",
    ] {
        let err = Bmc::connect(fast_config(bad), None).await.err().unwrap();
        assert!(
            matches!(err, RedfishError::InvalidAddress { .. }),
            "{bad}: {err:?}"
        );
    }
}
