//! A fault-injecting TCP proxy on 127.0.0.1, put in front of a real service (moto, the
//! controller double, the builder's SSH port) to make it refuse, cut connections or crawl.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the proxy does to traffic; applies to new data on every connection at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Forward everything.
    None,
    /// Close every connection, old and new, before forwarding anything (a dead service).
    Refuse,
    /// Cut a connection once it has carried more than this many bytes towards the service.
    CutAfter(u64),
    /// Cut a connection when data towards the service contains this text.
    CutOn(String),
    /// Forward data towards the service at about this many bytes per second.
    Throttle(u64),
}

struct Shared {
    fault: Mutex<Fault>,
    connections: Mutex<Vec<TcpStream>>,
    stopped: AtomicBool,
    upstream_bytes: AtomicU64,
    cuts: AtomicU64,
}

/// Stops (and closes every connection) when dropped.
pub struct FaultProxy {
    pub port: u16,
    shared: Arc<Shared>,
}

impl FaultProxy {
    pub fn start(upstream: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            fault: Mutex::new(Fault::None),
            connections: Mutex::new(Vec::new()),
            stopped: AtomicBool::new(false),
            upstream_bytes: AtomicU64::new(0),
            cuts: AtomicU64::new(0),
        });
        let accepting = Arc::clone(&shared);
        std::thread::spawn(move || accept_loop(listener, upstream, accepting));
        FaultProxy { port, shared }
    }

    /// In front of `http://host:port` (no path).
    pub fn for_url(url: &str) -> FaultProxy {
        let authority = url.trim_start_matches("http://").trim_end_matches('/');
        FaultProxy::start(authority.parse().expect("http://<ip>:<port>"))
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn set(&self, fault: Fault) {
        let refuse = fault == Fault::Refuse;
        *self.shared.fault.lock().unwrap() = fault;
        if refuse {
            for connection in self.shared.connections.lock().unwrap().drain(..) {
                let _ = connection.shutdown(Shutdown::Both);
            }
        }
    }

    /// Bytes forwarded towards the service so far.
    pub fn upstream_bytes(&self) -> u64 {
        self.shared.upstream_bytes.load(Ordering::SeqCst)
    }

    /// Connections cut by a fault so far.
    pub fn cuts(&self) -> u64 {
        self.shared.cuts.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stopped.store(true, Ordering::SeqCst);
        for connection in self.shared.connections.lock().unwrap().drain(..) {
            let _ = connection.shutdown(Shutdown::Both);
        }
    }
}

fn accept_loop(listener: TcpListener, upstream: SocketAddr, shared: Arc<Shared>) {
    while !shared.stopped.load(Ordering::SeqCst) {
        let client = match listener.accept() {
            Ok((client, _)) => client,
            Err(_) => {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let _ = client.set_nonblocking(false);
        if *shared.fault.lock().unwrap() == Fault::Refuse {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        }
        let Ok(service) = TcpStream::connect(upstream) else {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        };
        {
            let mut connections = shared.connections.lock().unwrap();
            connections.retain(|c| c.peer_addr().is_ok());
            connections.push(client.try_clone().unwrap());
            connections.push(service.try_clone().unwrap());
        }
        let (client_reader, service_writer) =
            (client.try_clone().unwrap(), service.try_clone().unwrap());
        let towards_service = Arc::clone(&shared);
        std::thread::spawn(move || pump_up(client_reader, service_writer, towards_service));
        std::thread::spawn(move || pump_down(service, client));
    }
}

/// Client to service, where the faults apply.
fn pump_up(mut from: TcpStream, mut to: TcpStream, shared: Arc<Shared>) {
    let mut carried: u64 = 0;
    let mut buffer = vec![0u8; 16 * 1024];
    let cut = |from: &TcpStream, to: &TcpStream| {
        shared.cuts.fetch_add(1, Ordering::SeqCst);
        let _ = from.shutdown(Shutdown::Both);
        let _ = to.shutdown(Shutdown::Both);
    };
    loop {
        let read = match from.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        let chunk = &buffer[..read];
        let fault = shared.fault.lock().unwrap().clone();
        match fault {
            Fault::None => {}
            Fault::Refuse => return cut(&from, &to),
            Fault::CutAfter(limit) => {
                if carried + read as u64 > limit {
                    return cut(&from, &to);
                }
            }
            Fault::CutOn(marker) => {
                if chunk
                    .windows(marker.len())
                    .any(|window| window == marker.as_bytes())
                {
                    return cut(&from, &to);
                }
            }
            Fault::Throttle(bytes_per_second) => {
                let nanos = (read as u64).saturating_mul(1_000_000_000) / bytes_per_second.max(1);
                std::thread::sleep(Duration::from_nanos(nanos));
            }
        }
        if to.write_all(chunk).is_err() {
            break;
        }
        carried += read as u64;
        shared
            .upstream_bytes
            .fetch_add(read as u64, Ordering::SeqCst);
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// Service to client, untouched.
fn pump_down(mut from: TcpStream, mut to: TcpStream) {
    let _ = std::io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Write);
}
