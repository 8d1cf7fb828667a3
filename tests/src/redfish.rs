//! The Redfish tier's plumbing: temporary directories, free ports, certificates made with
//! openssl, and the sushy-tools Redfish emulator (installed by tests/redfish/setup.sh) started
//! on loopback with the fake systems driver.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub const REQUIRE_REDFISH: &str = "RECAST_REQUIRE_REDFISH";
pub const SUSHY_VERSION: &str = "2.2.0";

pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "recast-bmc-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA and a server certificate for 127.0.0.1 signed by it, made by openssl at test time.
pub struct Pki {
    pub ca_pem: Vec<u8>,
    pub cert: PathBuf,
    pub key: PathBuf,
}

pub fn make_pki(dir: &Path, name: &str) -> Pki {
    let p = |f: &str| dir.join(format!("{name}-{f}"));
    run(Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN=recast test CA {name}"),
        ])
        .arg("-keyout")
        .arg(p("ca.key"))
        .arg("-out")
        .arg(p("ca.crt")));
    run(Command::new("openssl")
        .args([
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
        ])
        .arg("-keyout")
        .arg(p("server.key"))
        .arg("-out")
        .arg(p("server.csr")));
    std::fs::write(
        p("ext.cnf"),
        "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(Command::new("openssl")
        .args(["x509", "-req", "-days", "2"])
        .arg("-in")
        .arg(p("server.csr"))
        .arg("-CA")
        .arg(p("ca.crt"))
        .arg("-CAkey")
        .arg(p("ca.key"))
        .arg("-CAcreateserial")
        .arg("-extfile")
        .arg(p("ext.cnf"))
        .arg("-out")
        .arg(p("server.crt")));
    Pki {
        ca_pem: std::fs::read(p("ca.crt")).unwrap(),
        cert: p("server.crt"),
        key: p("server.key"),
    }
}

/// The sushy-emulator from tests/redfish/setup.sh, or None after a loud skip.
pub fn sushy_bin() -> Option<PathBuf> {
    let path = std::env::var_os("RECAST_SUSHY_EMULATOR")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| {
                PathBuf::from(h).join(format!(
                    ".cache/recast/sushy/{SUSHY_VERSION}/bin/sushy-emulator"
                ))
            })
        });
    match path {
        Some(p) if p.is_file() => Some(p),
        other => {
            crate::skip_or_fail(
                REQUIRE_REDFISH,
                &format!(
                    "no sushy-tools Redfish emulator at {} (install it with tests/redfish/setup.sh)",
                    other.map(|p| p.display().to_string()).unwrap_or_default()
                ),
            );
            None
        }
    }
}

pub struct SushyOptions {
    pub tls: Option<(PathBuf, PathBuf)>,
    /// (username, password) accepted through an htpasswd file.
    pub user: Option<(&'static str, &'static str)>,
    /// Fake systems as (uuid, name).
    pub systems: Vec<(String, String)>,
}

impl Default for SushyOptions {
    fn default() -> Self {
        SushyOptions {
            tls: None,
            user: None,
            systems: vec![(fresh_uuid(), "fake".into())],
        }
    }
}

pub fn fresh_uuid() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "5e7f0000-0000-4000-8000-{:06x}{:06x}",
        std::process::id() & 0xffffff,
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// A running sushy-emulator with the fake systems driver; killed on drop.
pub struct Sushy {
    child: Child,
    pub url: String,
    pub dir: TempDir,
    pub systems: Vec<(String, String)>,
}

impl Sushy {
    pub fn start(bin: &Path, opts: SushyOptions) -> Sushy {
        let dir = TempDir::new("sushy");
        let port = crate::free_port();
        let systems: Vec<String> = opts
            .systems
            .iter()
            .map(|(uuid, name)| {
                format!("{{'uuid': '{uuid}', 'name': '{name}', 'power_state': 'Off', 'external_notifier': False, 'nics': [{{'mac': '00:5c:52:31:3a:9c', 'ip': '172.22.0.100'}}]}}")
            })
            .collect();
        let mut conf = format!(
            "SUSHY_EMULATOR_FAKE_DRIVER = True\nSUSHY_EMULATOR_LISTEN_IP = '127.0.0.1'\nSUSHY_EMULATOR_LISTEN_PORT = {port}\n\
             SUSHY_EMULATOR_STATE_DIR = '{}'\nSUSHY_EMULATOR_FAKE_SYSTEMS = [{}]\n",
            dir.path().join("state").display(),
            systems.join(", ")
        );
        if let Some((cert, key)) = &opts.tls {
            conf.push_str(&format!(
                "SUSHY_EMULATOR_SSL_CERT = '{}'\nSUSHY_EMULATOR_SSL_KEY = '{}'\n",
                cert.display(),
                key.display()
            ));
        }
        if let Some((user, password)) = opts.user {
            // sushy accepts bcrypt entries only; its venv has the bcrypt module.
            let python = bin.with_file_name("python");
            let out = Command::new(&python)
                .args(["-c", "import bcrypt,sys; print(bcrypt.hashpw(sys.argv[1].encode(), bcrypt.gensalt(4)).decode())", password])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "bcrypt: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let hash = String::from_utf8(out.stdout).unwrap();
            let htpasswd = dir.path().join("htpasswd");
            std::fs::write(&htpasswd, format!("{user}:{}\n", hash.trim())).unwrap();
            conf.push_str(&format!(
                "SUSHY_EMULATOR_AUTH_FILE = '{}'\n",
                htpasswd.display()
            ));
        }
        let conf_path = dir.path().join("sushy.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let log = std::fs::File::create(dir.path().join("sushy.log")).unwrap();
        let child = Command::new(bin)
            .arg("--config")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let scheme = if opts.tls.is_some() { "https" } else { "http" };
        let sushy = Sushy {
            child,
            url: format!("{scheme}://127.0.0.1:{port}"),
            dir,
            systems: opts.systems,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "sushy-emulator did not listen on {port} within 30 s; log:\n{}",
                sushy.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        sushy
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sushy.log")).unwrap_or_default()
    }
}

impl Drop for Sushy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
