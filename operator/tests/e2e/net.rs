//! Sockets inside the network namespaces the suite creates. A thread that enters a namespace
//! (setns) creates its sockets there and they stay there, so the test process (in the root
//! namespace) can listen in one namespace and connect from another: the suite forwards the
//! apiserver (loopback of the root namespace) into the operator's namespace, and reaches the
//! boot service (10.77.0.2 in the boot namespace) from the test.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Runs `f` on a thread that first enters network namespace `ns` (None: the root namespace).
pub fn in_netns<T: Send>(ns: Option<&str>, f: impl FnOnce() -> T + Send) -> T {
    let Some(ns) = ns else { return f() };
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = std::fs::File::open(format!("/var/run/netns/{ns}"))
                .unwrap_or_else(|e| panic!("network namespace {ns}: {e}"));
            // SAFETY: setns on this thread only, with a valid namespace file descriptor.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns({ns}): {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("netns thread panicked")
    })
}

/// Connects to `addr` from inside namespace `ns`.
pub fn connect(ns: Option<&str>, addr: SocketAddr) -> std::io::Result<TcpStream> {
    in_netns(ns, || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(5))
    })
}

/// A listener in `ns`.
pub fn listen(ns: Option<&str>, addr: SocketAddr) -> TcpListener {
    in_netns(ns, || {
        TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr} in {ns:?}: {e}"))
    })
}

/// Forwards TCP connections accepted on `listen_addr` in `listen_ns` to `target` in
/// `target_ns`, until dropped.
pub struct Forward {
    stop: Arc<AtomicBool>,
}

impl Forward {
    pub fn start(
        listen_ns: Option<&str>,
        listen_addr: SocketAddr,
        target_ns: Option<&str>,
        target: SocketAddr,
    ) -> Forward {
        let listener = listen(listen_ns, listen_addr);
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let target_ns = target_ns.map(str::to_string);
        std::thread::spawn(move || {
            while !flag.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((down, _)) => {
                        let _ = down.set_nonblocking(false);
                        let ns = target_ns.clone();
                        std::thread::spawn(move || {
                            if let Ok(up) = connect(ns.as_deref(), target) {
                                pump(down, up);
                            }
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Forward { stop }
    }
}

impl Drop for Forward {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn pump(a: TcpStream, b: TcpStream) {
    let (a2, b2) = (a.try_clone().unwrap(), b.try_clone().unwrap());
    let one = std::thread::spawn(move || copy(a, b));
    copy(b2, a2);
    let _ = one.join();
}

fn copy(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}
