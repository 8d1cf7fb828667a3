//! DHCP replies built for fuzzed requests under fuzzed but valid configuration (boot URL,
//! boot file names, lease table, router, DNS, WDS server): answering and encoding never
//! panic, and an encoded reply decodes to a BOOTREPLY for the same transaction that carries
//! the boot file it was built with. (A boot URL longer than the 128-byte `file` field once
//! tripped an assert in dhcproto and killed the DHCP task.)
#![no_main]

use std::collections::HashMap;
use std::net::Ipv4Addr;

use dhcproto::v4::{self, DhcpOption, Message, MessageType, Opcode};
use dhcproto::{Decodable, Decoder, Encodable};
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use recast_operator::boot::dhcp::{self, BootFiles, DhcpConfig, Lease, Mode};
use recast_crds::endpoint::BootChain;
use recast_operator::boot::render::ImagingEnvironment;
use recast_operator::boot::{BootChoice, UnknownMacPolicy};
use recast_operator::store::BootIntent;

fn text(u: &mut Unstructured<'_>, max: usize) -> Result<String> {
    let len = u.int_in_range(0..=max)?;
    (0..len)
        .map(|_| Ok(char::from(u.int_in_range(0x21u8..=0x7e)?)))
        .collect()
}

fn ip(u: &mut Unstructured<'_>) -> Result<Ipv4Addr> {
    Ok(Ipv4Addr::from(u.arbitrary::<u32>()?))
}

fn request(u: &mut Unstructured<'_>, mac: [u8; 6]) -> Result<Vec<u8>> {
    let mut m = Message::default();
    m.set_opcode(Opcode::BootRequest)
        .set_xid(u.arbitrary()?)
        .set_flags(v4::Flags::new(u.arbitrary()?))
        .set_ciaddr(ip(u)?)
        .set_giaddr(if u.arbitrary()? {
            ip(u)?
        } else {
            Ipv4Addr::UNSPECIFIED
        })
        .set_chaddr(&mac);
    let kind = *u.choose(&[
        MessageType::Discover,
        MessageType::Request,
        MessageType::Inform,
        MessageType::Release,
    ])?;
    let opts = m.opts_mut();
    opts.insert(DhcpOption::MessageType(kind));
    let class = *u.choose(&[
        "PXEClient:Arch:00000:UNDI:002001",
        "PXEClient:Arch:00007:UNDI:003016",
        "HTTPClient:Arch:00016:UNDI:003001",
        "MSFT 5.0",
        "",
    ])?;
    if !class.is_empty() {
        opts.insert(DhcpOption::ClassIdentifier(class.as_bytes().to_vec()));
    }
    if u.arbitrary()? {
        let arch: u16 = *u.choose(&[0, 7, 9, 11, 16, 19, 6])?;
        opts.insert(DhcpOption::ClientSystemArchitecture(arch.into()));
    }
    if u.arbitrary()? {
        opts.insert(DhcpOption::UserClass(b"iPXE".to_vec()));
    }
    if u.arbitrary()? {
        opts.insert(DhcpOption::ServerIdentifier(ip(u)?));
    }
    Ok(m.to_vec().unwrap_or_default())
}

fn config(u: &mut Unstructured<'_>, mac: &str) -> Result<DhcpConfig> {
    let server_ip = ip(u)?;
    let mode = if u.arbitrary()? {
        Mode::Proxy
    } else {
        let hostname = if u.arbitrary()? {
            Some(text(u, 300)?)
        } else {
            None
        };
        Mode::Full {
            leases: HashMap::from([(
                mac.to_string(),
                Lease {
                    ip: ip(u)?,
                    hostname,
                },
            )]),
            subnet_mask: ip(u)?,
            router: if u.arbitrary()? { Some(ip(u)?) } else { None },
            dns: (0..u.int_in_range(0..=70)?)
                .map(|_| ip(u))
                .collect::<Result<_>>()?,
            lease_seconds: u.arbitrary()?,
        }
    };
    Ok(DhcpConfig {
        mode,
        server_ip,
        http_base: format!("http://{}", text(u, 400)?),
        files: BootFiles {
            bios: text(u, 200)?,
            uefi_x64: text(u, 200)?,
            uefi_arm64: text(u, 200)?,
            signed_linux: text(u, 200)?,
            signed_winpe: text(u, 200)?,
        },
        unknown: UnknownMacPolicy::Ignore,
        wds_server: if u.arbitrary()? { Some(ip(u)?) } else { None },
        imaging: if u.arbitrary()? { ImagingEnvironment::Linux } else { ImagingEnvironment::Winpe },
    })
}

fn run(data: &[u8]) -> Result<()> {
    let mut u = Unstructured::new(data);
    let mac: [u8; 6] = u.arbitrary()?;
    let request = request(&mut u, mac)?;
    let Ok(info) = dhcp::parse(&request) else {
        return Ok(());
    };
    let cfg = config(&mut u, &info.mac)?;
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
        BootChoice::Wds(armed),
        BootChoice::Ignore,
    ] {
        let chain = if u.arbitrary()? { BootChain::Signed } else { BootChain::Ipxe };
        let Some(reply) = dhcp::answer(&info, &choice, chain, &cfg) else {
            continue;
        };
        let Some(bytes) = dhcp::encode(&request, &reply, &cfg) else {
            // Refused (such as a boot file longer than the `file` field): no packet, no panic.
            continue;
        };
        let back = Message::decode(&mut Decoder::new(&bytes)).expect("our reply decodes");
        assert_eq!(back.opcode(), Opcode::BootReply);
        assert_eq!(back.xid(), info.xid);
        if !reply.file.is_empty() {
            // The field is NUL-padded; the name is what comes before the first NUL.
            let fname = back.fname().unwrap_or_default();
            let fname = fname.split(|&b| b == 0).next().unwrap_or_default();
            assert_eq!(fname, reply.file.as_bytes());
        }
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(data);
});
