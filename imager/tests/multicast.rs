//! recast-imager's multicast path against udpcast's real `udp-sender`, in network namespaces
//! joined by a bridge: the sender runs with the arguments recast_core::multicast gives it,
//! recast-imager's own stream function applies the pipable golden WIM onto an NTFS volume (a
//! loop device) while a second machine's receiver and a third that drops out mid-session take
//! the same session. Checked from the outside: the applied volume is read back with ntfs-3g and
//! compared to the golden's source tree, the other receiver's bytes are hashed, and the bytes
//! the sender put on the wire are its veth's `tx_bytes`, not udp-sender's own count.
//!
//! Needs root, udpcast, wimlib-imagex, ntfs-3g and iproute2; skips loudly without them unless
//! RECAST_REQUIRE_IMAGER=1.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use recast_core::imaging::TaskMulticast;
use recast_core::multicast::{self, SessionFigures, SessionPlan, Settings, StreamEnd};
use recast_imager::run::{Console, download, reapply};
use recast_imager::stream::receive_and_apply;
use recast_tests::golden_ntfs::{self, REQUIRE_IMAGER};
use recast_tests::readback::{self, MountedNtfs, find_tool, run_ok, tool};
use recast_tests::wimlib::{self, JANUARY_2026};

/// Namespaces, veths and a bridge; removed when dropped.
struct Net {
    tag: String,
    namespaces: Vec<String>,
}

impl Net {
    /// A bridge in a hub namespace and one namespace per member, each on 10.79.0.0/24
    /// (members get .1, .2, ... in order) with the subnet's broadcast address (udpcast's
    /// rendezvous is a broadcast).
    fn new(members: &[&str]) -> Net {
        let tag = format!("{}", std::process::id() % 100_000);
        let hub = format!("mch{tag}");
        let mut net = Net {
            tag: tag.clone(),
            namespaces: vec![hub.clone()],
        };
        sh(&format!(
            "ip netns add {hub} && ip -n {hub} link add br0 type bridge && ip -n {hub} link set br0 up"
        ));
        for (i, m) in members.iter().enumerate() {
            let ns = net.ns(m);
            net.namespaces.push(ns.clone());
            sh(&format!(
                "ip netns add {ns} && ip link add {m}{tag} type veth peer name p{i}{tag} \
                 && ip link set {m}{tag} netns {ns} && ip link set p{i}{tag} netns {hub} \
                 && ip -n {ns} link set {m}{tag} name {m} \
                 && ip -n {ns} addr add 10.79.0.{}/24 broadcast + dev {m} \
                 && ip -n {ns} link set {m} up && ip -n {ns} link set lo up \
                 && ip -n {hub} link set p{i}{tag} master br0 && ip -n {hub} link set p{i}{tag} up",
                i + 1
            ));
        }
        net
    }

    fn ns(&self, member: &str) -> String {
        format!("mc{member}{}", self.tag)
    }

    fn tx_bytes(&self, member: &str) -> u64 {
        let out = run_ok(Command::new("ip").args([
            "netns",
            "exec",
            &self.ns(member),
            "cat",
            &format!("/sys/class/net/{member}/statistics/tx_bytes"),
        ]));
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn sh(script: &str) {
    run_ok(Command::new("sh").args(["-c", script]));
}

/// A loop device over a fresh sparse file, detached when dropped.
struct Loop(String);

impl Loop {
    fn new(file: &Path, bytes: u64) -> Loop {
        let f = std::fs::File::create(file).unwrap();
        f.set_len(bytes).unwrap();
        drop(f);
        let out = run_ok(Command::new("losetup").args(["-f", "--show"]).arg(file));
        Loop(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
    fn path(&self) -> PathBuf {
        PathBuf::from(&self.0)
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

/// The sender, run as the boot service runs it, its output kept for the figures.
fn sender(net: &Net, s: &Settings, plan: &SessionPlan, log: &Path) -> Child {
    Command::new("ip")
        .args(["netns", "exec", &net.ns("srv"), "udp-sender"])
        .args(multicast::sender_args(s, plan))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(log.with_extension("out")).unwrap())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("udp-sender")
}

fn figures(log: &Path) -> SessionFigures {
    let mut text = std::fs::read_to_string(log).unwrap_or_default();
    text.push_str(&std::fs::read_to_string(log.with_extension("out")).unwrap_or_default());
    text.split(['\r', '\n'])
        .map(multicast::parse_sender_line)
        .fold(SessionFigures::default(), |f, l| f.after(&l))
}

/// `udp-receiver` as recast-imager runs it, inside the namespace whose interface it is given
/// (a wrapper first on PATH); the member `drop` gives up after 1 MiB, as a machine that lost
/// power mid-session would.
fn receiver_wrapper(dir: &Path, net: &Net) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let real = find_tool("udp-receiver").unwrap();
    let script = format!(
        "#!/bin/sh\n\
         for a in \"$@\"; do prev=$last; last=$a; [ \"$prev\" = --interface ] && ifc=$a; done\n\
         if [ \"$ifc\" = drop ]; then\n\
           ip netns exec {p}drop{t} {r} \"$@\" | head -c 1048576\n\
           exit 1\n\
         fi\n\
         exec ip netns exec {p}${{ifc}}{t} {r} \"$@\"\n",
        p = "mc",
        t = net.tag,
        r = real.display()
    );
    let path = bin.join("udp-receiver");
    std::fs::write(&path, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn one_session_images_every_receiver_and_a_drop_out_falls_back_to_http() {
    let missing: Vec<&str> = [
        "udp-sender",
        "udp-receiver",
        "wimlib-imagex",
        "mkntfs",
        "ntfs-3g",
        "losetup",
        "ip",
        "python3",
    ]
    .into_iter()
    .filter(|t| find_tool(t).is_none())
    .collect();
    if !missing.is_empty() || !golden_ntfs::prerequisites() {
        recast_tests::skip_or_fail(
            REQUIRE_IMAGER,
            &format!(
                "the multicast tier needs root, udpcast, wimlib, ntfs-3g: missing {missing:?}"
            ),
        );
        return;
    }
    let scratch = tempfile::Builder::new()
        .prefix("multicast-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let dir = scratch.path();
    let golden_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("golden-ntfs");
    let mut template = b"regf".to_vec();
    template.extend(wimlib::noise(4242, 8188));
    let g = golden_ntfs::build_golden(&golden_dir, JANUARY_2026, &template);
    let stream_size = std::fs::metadata(&g.pipable).unwrap().len();

    let net = Net::new(&["srv", "m1", "m2", "drop"]);
    // The fallback's HTTP server (the boot service's artifacts), on loopback: the test
    // process downloads as the dropped-out machine would.
    let served = dir.join("served");
    std::fs::create_dir_all(&served).unwrap();
    std::fs::copy(&g.wim, served.join("golden.wim")).unwrap();
    let http_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut http = Command::new("python3")
        .args([
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            &http_port.to_string(),
        ])
        .arg("--directory")
        .arg(&served)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    let settings = Settings {
        interface: "srv".into(),
        group_base: multicast::DEFAULT_GROUP_BASE,
        port_base: multicast::DEFAULT_PORT_BASE,
        max_sessions: 1,
        ttl: 1,
        // Slow enough that the drop-out happens mid-session.
        max_mbps: 40,
        retries_until_drop: 10,
    };
    settings.check().unwrap();
    let (group, port) = settings.slot(0).unwrap();
    let plan = SessionPlan {
        group,
        port,
        min_receivers: 3,
        max_wait_seconds: 60,
        file: g.pipable.to_string_lossy().into_owned(),
    };
    let join = multicast::join(
        &plan,
        &multicast::Stream {
            sha256: g.pipable_sha256.clone(),
            size: stream_size,
            image_bytes: 64 << 20,
        },
        None,
    );
    assert_eq!(multicast::join_problem(&join), None);

    // recast-imager's receivers run the wrapper: udp-receiver in their machine's namespace.
    let bin = receiver_wrapper(dir, &net);
    let wrapper = bin.join("udp-receiver").to_string_lossy().into_owned();

    let log = dir.join("sender.log");
    let tx_before = net.tx_bytes("srv");
    let mut send = sender(&net, &settings, &plan, &log);

    let m1 = Loop::new(&dir.join("m1.img"), 96 << 20);
    let drop_disk = Loop::new(&dir.join("drop.img"), 96 << 20);
    for l in [&m1, &drop_disk] {
        run_ok(tool("mkntfs").args(["-Q", "-q"]).arg(l.path()));
    }
    // The second machine: a plain receiver whose bytes are hashed.
    let m2 = Command::new("sh")
        .args([
            "-c",
            &format!(
                "ip netns exec {} {} --nokbd --portbase {port} --interface m2 --start-timeout 90 --receive-timeout 30 | sha256sum",
                net.ns("m2"),
                find_tool("udp-receiver").unwrap().display()
            ),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    let started = Instant::now();
    let rt = runtime();
    let (m1_dev, drop_dev) = (m1.path(), drop_disk.path());
    let (m1_end, drop_end) = rt.block_on(async {
        tokio::join!(
            receive_and_apply(&Console, &join, &wrapper, &m1_dev, Some("m1"), (0, 100)),
            receive_and_apply(&Console, &join, &wrapper, &drop_dev, Some("drop"), (0, 100)),
        )
    });
    let session_time = started.elapsed();
    let m2_out = m2.wait_with_output().unwrap();
    let _ = send.wait();
    let tx = net.tx_bytes("srv") - tx_before;
    let f = figures(&log);
    eprintln!(
        "udp-sender said:\n{}",
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .replace('\r', "\n")
    );
    eprintln!(
        "session: {session_time:?}, {tx} bytes on the sender's wire for a {stream_size}-byte stream; {f:?}"
    );

    // The imaged machine: the stream applied, read back with ntfs-3g, equal to the source.
    assert_eq!(m1_end, StreamEnd::Complete);
    let source = MountedNtfs::image(&g.source);
    let applied = MountedNtfs::image(&m1.path());
    readback::compare_trees(source.path(), applied.path())
        .unwrap_or_else(|e| panic!("the streamed apply differs:\n{}", e.join("\n")));
    drop(applied);
    // The second machine got every byte.
    assert_eq!(
        String::from_utf8_lossy(&m2_out.stdout)
            .split_whitespace()
            .next(),
        Some(g.pipable_sha256.as_str())
    );
    // The drop-out stopped at its 1 MiB, and the session went on without it.
    assert!(
        matches!(drop_end, StreamEnd::BrokeOff { received } if received == 1 << 20),
        "{drop_end:?}"
    );
    assert_eq!(f.joined, 3, "{f:?}");
    assert_eq!(f.dropped, 1, "{f:?}");
    assert_eq!(f.phase, multicast::SessionPhase::Complete, "{f:?}");
    assert_eq!(f.bytes, stream_size, "{f:?}");
    // Each byte about once on the wire for three receivers (headers and retransmits: < 25 %).
    assert!(
        tx >= stream_size && tx < stream_size + stream_size / 4,
        "{tx} bytes sent for {stream_size} × 3 receivers"
    );

    // The drop-out falls back: its own HTTP download, onto a fresh Windows volume.
    let image = recast_core::imaging::ImageTaskFile {
        name: "golden".into(),
        url: format!("http://127.0.0.1:{http_port}/golden.wim"),
        sha256: g.wim_sha256.clone(),
        size: std::fs::metadata(&g.wim).unwrap().len(),
        index: 1,
    };
    let work = dir.join("work");
    let fallback = rt.block_on(async {
        let http = recast_imager::run::http_client().expect("the imager's HTTP client");
        let staged = download(&Console, &http, &image, &work).await?;
        reapply(&Console, &staged, 1, &drop_disk.path()).await
    });
    let _ = http.kill();
    let _ = http.wait();
    fallback.unwrap();
    let fell_back = MountedNtfs::image(&drop_disk.path());
    readback::compare_trees(source.path(), fell_back.path())
        .unwrap_or_else(|e| panic!("the fallback's apply differs:\n{}", e.join("\n")));
}

#[test]
fn a_session_that_never_starts_ends_the_stream_with_nothing_in_its_start_timeout() {
    // The real udp-receiver, on loopback, where nobody sends on this port: it gives up after
    // its --start-timeout (2 s), well before recast's own grace (30 s more) would stop it.
    if find_tool("udp-receiver").is_none() || find_tool("wimlib-imagex").is_none() {
        recast_tests::skip_or_fail(REQUIRE_IMAGER, "udpcast or wimlib-imagex not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let join = TaskMulticast {
        group: Ipv4Addr::new(239, 255, 77, 9).to_string(),
        port: 9990,
        start_timeout_seconds: 2,
        receive_timeout_seconds: 2,
        sha256: "0".repeat(64),
        size: 1000,
        image_bytes: 1000,
        boot_manager: None,
    };
    let real = find_tool("udp-receiver").unwrap();
    let started = Instant::now();
    let end = runtime().block_on(receive_and_apply(
        &Console,
        &join,
        &real.to_string_lossy(),
        dir.path(),
        Some("lo"),
        (0, 100),
    ));
    assert_eq!(end, StreamEnd::NoSession);
    assert!(
        started.elapsed() < Duration::from_secs(12),
        "udp-receiver's own start timeout ended it: {:?}",
        started.elapsed()
    );
    // A receiver that cannot run ends the same way (and the imager falls back to HTTP).
    let end = runtime().block_on(receive_and_apply(
        &Console,
        &join,
        "/nonexistent/udp-receiver",
        dir.path(),
        None,
        (0, 100),
    ));
    assert_eq!(end, StreamEnd::NoSession);
}
