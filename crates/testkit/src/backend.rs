//! Backends behind the routers under test: plain HTTP and the uwsgi
//! protocol, each answering a tiny response.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The response every test backend sends.
const HELLO: &[u8] = b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello";

/// A backend on 127.0.0.1 that reads one request per connection with
/// `read_request` and answers `HELLO`, each connection on its own thread,
/// until dropped.
pub struct Backend {
    pub port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Backend {
    /// Listens on 127.0.0.1:`port` (0: any free port).
    fn serve(port: u16, read_request: fn(&mut TcpStream) -> bool) -> Backend {
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap_or_else(|e| panic!("backend port {port}: {e}"));
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        // Blocking accepts (a benchmark's connections must not wait for a
        // polling tick); dropping the backend wakes the last one.
        let thread = std::thread::spawn(move || {
            for s in listener.incoming() {
                if flag.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(mut s) = s else { continue };
                std::thread::spawn(move || {
                    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                    if read_request(&mut s) {
                        let _ = s.write_all(HELLO);
                    }
                });
            }
        });
        Backend {
            port,
            stop,
            thread: Some(thread),
        }
    }

    /// A uwsgi-protocol backend (see [`uwsgi_backend`]) on a given port.
    pub fn uwsgi_on(port: u16) -> Backend {
        Backend::serve(port, read_uwsgi_request)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], self.port)), Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A backend on any free port, stopped after `lifetime`; its port.
fn backend(lifetime: Duration, read_request: fn(&mut TcpStream) -> bool) -> u16 {
    let backend = Backend::serve(0, read_request);
    let port = backend.port;
    std::thread::spawn(move || {
        std::thread::sleep(lifetime);
        drop(backend);
    });
    port
}

/// A plain TCP backend answering every HTTP request with a tiny response,
/// for routers that pass the decrypted stream through (sslrouter).
pub fn http_backend(lifetime: Duration) -> u16 {
    backend(lifetime, |s| {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        true
    })
}

/// A backend speaking the uwsgi protocol, which the HTTP router (`http-to`)
/// uses: every request (one uwsgi packet) gets the tiny HTTP response with
/// the body `hello`.
pub fn uwsgi_backend(lifetime: Duration) -> u16 {
    backend(lifetime, read_uwsgi_request)
}

/// Reads one uwsgi packet: modifier1, vars size (u16 little endian),
/// modifier2, the vars.
fn read_uwsgi_request(s: &mut TcpStream) -> bool {
    let mut header = [0u8; 4];
    if s.read_exact(&mut header).is_err() {
        return false;
    }
    let mut vars = vec![0u8; u16::from_le_bytes([header[1], header[2]]) as usize];
    s.read_exact(&mut vars).is_ok()
}
