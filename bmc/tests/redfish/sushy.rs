//! Against sushy-tools' emulator: the real peer.

use recast_bmc::{
    Bmc, BootMode, ClientConfig, NetworkBoot, OverrideCheck, PowerAction, PowerState, RedfishError,
    TlsVerify,
};

use crate::support::{self, Sushy, SushyConfig, SushyOptions, TempDir, fresh_uuid};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_boot_override_and_resets_end_to_end() {
    let Some(bin) = support::sushy_bin() else {
        return;
    };
    let sushy = Sushy::start(&bin, SushyOptions::default());
    let bmc = Bmc::connect(sushy.config(), None).await.unwrap();
    let uuid = &sushy.systems[0].0;
    assert_eq!(bmc.system_path(), format!("/redfish/v1/Systems/{uuid}"));

    let sys = bmc.system().await.unwrap();
    assert_eq!(sys.id, *uuid);
    assert_eq!(sys.power_state, Some(PowerState::Off));

    // Off → On: the cycle of a machine that is off is a plain On.
    let out = bmc.power(PowerAction::Cycle).await.unwrap();
    assert_eq!(
        (
            out.before.as_deref(),
            out.reset_type.as_str(),
            out.after.as_str()
        ),
        (Some("Off"), "On", "On")
    );

    // The emulator keeps every override Continuous (it ignores BootSourceOverrideEnabled);
    // recast accepts that and says so.
    let armed = bmc
        .arm_network_boot(NetworkBoot::Pxe, Some(BootMode::Uefi))
        .await
        .unwrap();
    assert_eq!(armed.check, OverrideCheck::ArmedContinuous);
    assert!(!armed.retried_on_stale_etag);
    let sys = bmc.system().await.unwrap();
    let boot = sys.boot.unwrap();
    assert_eq!(
        (boot.target.as_deref(), boot.mode.as_deref()),
        (Some("Pxe"), Some("UEFI"))
    );

    // On → cycle: the emulator offers no PowerCycle, so ForceRestart is chosen.
    let out = bmc.power(PowerAction::Cycle).await.unwrap();
    assert_eq!(
        (out.reset_type.as_str(), out.after.as_str()),
        ("ForceRestart", "On")
    );

    let out = bmc.power(PowerAction::Off).await.unwrap();
    assert_eq!(
        (out.reset_type.as_str(), out.after.as_str()),
        ("ForceOff", "Off")
    );
    let out = bmc.power(PowerAction::On).await.unwrap();
    assert_eq!((out.reset_type.as_str(), out.after.as_str()), ("On", "On"));

    // The emulator has no LogServices: a typed, permanent Unsupported error.
    let err = bmc.event_log().await.unwrap_err();
    assert!(matches!(err, RedfishError::Unsupported { .. }), "{err}");
    assert!(err.is_permanent());
    bmc.logout().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_override_the_bmc_changes_is_not_taken_as_armed() {
    let Some(bin) = support::sushy_bin() else {
        return;
    };
    let sushy = Sushy::start(&bin, SushyOptions::default());
    let bmc = Bmc::connect(sushy.config(), None).await.unwrap();
    // The emulator turns a UefiHttp request without an HttpBootUri into Pxe: the read-back
    // check must notice that the BMC did not do what was asked.
    let err = bmc
        .arm_network_boot(NetworkBoot::UefiHttp, Some(BootMode::Uefi))
        .await
        .unwrap_err();
    match &err {
        RedfishError::NotApplied { detail, .. } => assert!(detail.contains("Pxe"), "{detail}"),
        other => panic!("expected NotApplied, got {other:?}"),
    }
    assert!(!err.is_permanent());
    // Legacy mode is applied and read back as such.
    let armed = bmc
        .arm_network_boot(NetworkBoot::Pxe, Some(BootMode::Legacy))
        .await
        .unwrap();
    assert_eq!(armed.check, OverrideCheck::ArmedContinuous);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_systems_need_a_system_id() {
    let Some(bin) = support::sushy_bin() else {
        return;
    };
    let a = (fresh_uuid(), "kiosk-a".to_string());
    let b = (fresh_uuid(), "kiosk-b".to_string());
    let sushy = Sushy::start(
        &bin,
        SushyOptions {
            systems: vec![a.clone(), b.clone()],
            ..Default::default()
        },
    );
    let err = Bmc::connect(sushy.config(), None).await.err().unwrap();
    assert!(
        matches!(err, RedfishError::AmbiguousSystem { count: 2, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("systemId"));
    let bmc = Bmc::connect(sushy.config(), Some(&b.0)).await.unwrap();
    assert_eq!(bmc.system().await.unwrap().name.as_deref(), Some("kiosk-b"));
    let err = Bmc::connect(sushy.config(), Some("no-such-system"))
        .await
        .err()
        .unwrap();
    assert!(matches!(err, RedfishError::NotFound { .. }), "{err}");
    assert!(err.is_permanent());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_right_wrong_and_missing_credentials() {
    let Some(bin) = support::sushy_bin() else {
        return;
    };
    let sushy = Sushy::start(
        &bin,
        SushyOptions {
            user: Some(("admin", "s3cret-pw")),
            ..Default::default()
        },
    );

    let bmc = Bmc::connect(sushy.config().with_credentials("admin", "s3cret-pw"), None)
        .await
        .unwrap();
    assert!(bmc.power_state().await.unwrap().is_some());

    for cfg in [
        sushy.config().with_credentials("admin", "wrong"),
        sushy.config(),
    ] {
        let err = Bmc::connect(cfg, None).await.err().unwrap();
        assert!(matches!(err, RedfishError::Unauthorized { .. }), "{err}");
        assert!(err.is_permanent());
        assert!(err.to_string().contains("credentials Secret"));
    }
    // The emulator offers no SessionService: a client that insists on sessions is told so.
    let mut cfg = sushy.config().with_credentials("admin", "s3cret-pw");
    cfg.auth = recast_bmc::AuthMode::Session;
    let err = Bmc::connect(cfg, None).await.err().unwrap();
    assert!(matches!(err, RedfishError::Unsupported { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_is_verified_against_the_given_ca_only() {
    let Some(bin) = support::sushy_bin() else {
        return;
    };
    let dir = TempDir::new("pki");
    let pki = support::make_pki(dir.path(), "bmc");
    let other = support::make_pki(dir.path(), "other");
    let sushy = Sushy::start(
        &bin,
        SushyOptions {
            tls: Some((pki.cert.clone(), pki.key.clone())),
            user: Some(("admin", "pw")),
            ..Default::default()
        },
    );
    let cfg = |tls: TlsVerify| -> ClientConfig {
        let mut c = sushy.config().with_credentials("admin", "pw");
        c.tls = tls;
        c
    };

    // Verification is on by default: the system roots do not know this BMC's CA.
    let err = Bmc::connect(cfg(TlsVerify::SystemRoots), None)
        .await
        .err()
        .unwrap();
    assert!(matches!(err, RedfishError::Tls { .. }), "{err:?}");
    assert!(err.is_permanent());
    assert!(err.to_string().contains("caBundleSecretRef"), "{err}");

    let err = Bmc::connect(cfg(TlsVerify::CaBundle(other.ca_pem.clone())), None)
        .await
        .err()
        .unwrap();
    assert!(matches!(err, RedfishError::Tls { .. }), "{err:?}");

    let bmc = Bmc::connect(cfg(TlsVerify::CaBundle(pki.ca_pem.clone())), None)
        .await
        .unwrap();
    assert_eq!(bmc.power_state().await.unwrap(), Some(PowerState::Off));
    let out = bmc.power(PowerAction::On).await.unwrap();
    assert_eq!(out.after, "On");

    let bmc = Bmc::connect(cfg(TlsVerify::Insecure), None).await.unwrap();
    assert_eq!(bmc.power_state().await.unwrap(), Some(PowerState::On));

    // A bundle that is not PEM is a configuration error, before any connection.
    let err = Bmc::connect(
        cfg(TlsVerify::CaBundle(b"not a certificate".to_vec())),
        None,
    )
    .await
    .err()
    .unwrap();
    assert!(matches!(err, RedfishError::TlsConfig(_)), "{err:?}");

    // Plain HTTP to a TLS port is not a hang.
    let plain = sushy.url.replace("https://", "http://");
    let started = std::time::Instant::now();
    let err = Bmc::connect(support::fast_config(&plain), None)
        .await
        .err()
        .unwrap();
    eprintln!("plain HTTP to the TLS port: {err:?}");
    assert!(
        matches!(
            err,
            RedfishError::Http(_)
                | RedfishError::Connect { .. }
                | RedfishError::Malformed { .. }
                | RedfishError::Rejected { .. }
        ),
        "{err:?}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
}
