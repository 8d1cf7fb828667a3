//! Wake-on-LAN on the wire: the real binary's `wake-on-lan` (the controller's own sender) in
//! one network namespace, bound to its provisioning interface; a raw packet socket in a
//! second namespace, on the other end of the link, captures what arrives. Checked byte for
//! byte: Ethernet broadcast, UDP port 9, 6×0xFF then 16× the MAC, sent to the limited
//! broadcast and to the interface's subnet-directed broadcast, three times each.
//!
//! Needs root (network namespaces, raw sockets), `ip` and python3. Skips loudly without them
//! unless RECAST_REQUIRE_PXE=1 (CI sets it).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

const OPERATOR: &str = env!("CARGO_BIN_EXE_recast-operator");
const MAC: &str = "52:54:00:a1:00:01";

/// Captures UDP datagrams to port 9 on IFACE for SECONDS: one JSON line each, with the
/// Ethernet destination, the IP destination and the payload.
const CAPTURE: &str = r#"
import json, socket, struct, sys, time
iface, seconds = sys.argv[1], float(sys.argv[2])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(0x0003))
s.bind((iface, 0))
s.settimeout(0.2)
print("ready", flush=True)
end = time.time() + seconds
while time.time() < end:
    try:
        frame = s.recv(65535)
    except socket.timeout:
        continue
    if len(frame) < 42 or frame[12:14] != b"\x08\x00" or frame[23] != 17:
        continue
    ihl = (frame[14] & 0x0f) * 4
    udp = 14 + ihl
    dport = struct.unpack("!H", frame[udp + 2:udp + 4])[0]
    if dport != 9:
        continue
    print(json.dumps({
        "eth_dst": frame[0:6].hex(":"),
        "ip_src": socket.inet_ntoa(frame[26:30]),
        "ip_dst": socket.inet_ntoa(frame[30:34]),
        "payload": frame[udp + 8:].hex(),
    }), flush=True)
"#;

struct Net {
    sender: String,
    receiver: String,
}

impl Net {
    fn up() -> Net {
        let id = std::process::id() % 100_000;
        let net = Net {
            sender: format!("rwol-s-{id}"),
            receiver: format!("rwol-r-{id}"),
        };
        let (a, b) = (format!("wols{id}"), format!("wolr{id}"));
        let sh = |args: &[&str]| {
            let ok = Command::new("ip").args(args).status().expect("run ip");
            assert!(ok.success(), "ip {args:?} failed");
        };
        sh(&["netns", "add", &net.sender]);
        sh(&["netns", "add", &net.receiver]);
        sh(&["link", "add", &a, "type", "veth", "peer", "name", &b]);
        sh(&["link", "set", &a, "netns", &net.sender]);
        sh(&["link", "set", &b, "netns", &net.receiver]);
        for (ns, ifname, addr) in [
            (&net.sender, &a, "10.77.0.1/24"),
            (&net.receiver, &b, "10.77.0.2/24"),
        ] {
            sh(&["-n", ns, "addr", "add", addr, "dev", ifname]);
            sh(&["-n", ns, "link", "set", ifname, "up"]);
            sh(&["-n", ns, "link", "set", "lo", "up"]);
        }
        net
    }

    fn iface(&self, side: &str) -> String {
        format!("wol{side}{}", std::process::id() % 100_000)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in [&self.sender, &self.receiver] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn missing_prerequisite() -> Option<String> {
    if !recast_tests::is_root() {
        return Some("the Wake-on-LAN capture needs root (network namespaces, raw sockets)".into());
    }
    for cmd in ["ip", "python3"] {
        if !recast_tests::have(cmd) {
            return Some(format!("{cmd} is missing"));
        }
    }
    None
}

fn capture(net: &Net) -> Child {
    let mut child = Command::new("ip")
        .args(["netns", "exec", &net.receiver, "python3", "-c", CAPTURE])
        .arg(net.iface("r"))
        .arg("6")
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the capture");
    let mut first = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert_eq!(first.trim(), "ready", "the capture did not start");
    child
}

#[test]
fn magic_packets_leave_on_the_provisioning_interface_byte_for_byte() {
    if let Some(why) = missing_prerequisite() {
        assert!(
            std::env::var("RECAST_REQUIRE_PXE").as_deref() != Ok("1"),
            "RECAST_REQUIRE_PXE=1 but {why}"
        );
        eprintln!("SKIPPED wake_on_lan: {why}");
        return;
    }
    let net = Net::up();
    let cap = capture(&net);
    let out = Command::new("ip")
        .args(["netns", "exec", &net.sender, OPERATOR, "wake-on-lan"])
        .args(["--interface", &net.iface("s"), MAC])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("255.255.255.255:9"), "{said}");
    assert!(said.contains("10.77.0.255:9"), "{said}");
    let out = cap.wait_with_output().unwrap();
    let frames: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();

    let mac_hex = MAC.replace(':', "");
    let magic = format!("{}{}", "ff".repeat(6), mac_hex.repeat(16));
    assert_eq!(magic.len(), 204);
    let mut to_limited = 0;
    let mut to_directed = 0;
    for f in &frames {
        assert_eq!(f["eth_dst"], "ff:ff:ff:ff:ff:ff", "{f}");
        assert_eq!(f["ip_src"], "10.77.0.1", "{f}");
        assert_eq!(f["payload"], magic.as_str(), "{f}");
        match f["ip_dst"].as_str() {
            Some("255.255.255.255") => to_limited += 1,
            Some("10.77.0.255") => to_directed += 1,
            other => panic!("a magic packet to {other:?}"),
        }
    }
    assert_eq!((to_limited, to_directed), (3, 3), "{frames:#?}");
}

#[test]
fn a_wrong_interface_or_mac_is_refused_with_what_to_fix() {
    // No root needed: nothing is sent.
    let out = Command::new(OPERATOR)
        .args(["wake-on-lan", "--interface", "recast-nosuch0", MAC])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("no interface named recast-nosuch0"), "{said}");
    let out = Command::new(OPERATOR)
        .args(["wake-on-lan", "52:54:00:zz:00:01"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("is not a MAC address"), "{said}");
}
