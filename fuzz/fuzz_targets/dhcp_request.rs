//! Any datagram on the DHCP ports: parsing gives client information or a typed error, never a
//! panic, and deciding and encoding an answer for whatever parses never panics either.
#![no_main]

use std::collections::HashMap;
use std::net::Ipv4Addr;

use libfuzzer_sys::fuzz_target;
use recast_operator::boot::dhcp::{self, BootFiles, DhcpConfig, Mode};
use recast_crds::endpoint::BootChain;
use recast_operator::boot::render::ImagingEnvironment;
use recast_operator::boot::{BootChoice, UnknownMacPolicy};
use recast_operator::store::BootIntent;

fuzz_target!(|data: &[u8]| {
    let Ok(info) = dhcp::parse(data) else { return };
    for mode in [
        Mode::Proxy,
        Mode::Full {
            leases: HashMap::from([(
                info.mac.clone(),
                dhcp::Lease { ip: Ipv4Addr::new(10, 0, 0, 9), hostname: Some("h".into()) },
            )]),
            subnet_mask: Ipv4Addr::new(255, 255, 255, 0),
            router: None,
            dns: vec![],
            lease_seconds: 60,
        },
    ] {
        let cfg = DhcpConfig {
            mode,
            server_ip: Ipv4Addr::new(10, 0, 0, 2),
            http_base: "http://10.0.0.2:8081".into(),
            files: BootFiles::default(),
            unknown: UnknownMacPolicy::Ignore,
            wds_server: Some(Ipv4Addr::new(10, 0, 0, 3)),
            imaging: ImagingEnvironment::Linux,
        };
        let armed = BootIntent {
            namespace: "default".into(),
            endpoint: "kiosk-01".into(),
            mac_addresses: vec![info.mac.clone()],
            attempt_id: "a1".into(),
            try_number: 1,
            image: "golden".into(),
            image_digest: Some("ab".into()),
            boot_mode: "uefi".into(),
            armed_at: String::new(),
        };
        for choice in [
            BootChoice::Local { discovered: false },
            BootChoice::Wds(armed.clone()),
            BootChoice::Imaging(armed),
            BootChoice::Ignore,
        ] {
            for chain in [BootChain::Signed, BootChain::Ipxe] {
                if let Some(reply) = dhcp::answer(&info, &choice, chain, &cfg) {
                    let _ = dhcp::encode(data, &reply, &cfg);
                }
            }
        }
    }
});
