//! A fault-injecting TCP proxy for putting between a daemon and the server.
//!
//! [`Proxy::start`] listens on `127.0.0.1:0` and forwards each connection to a target.
//! Faults are switched at run time from the test thread: refuse connections (the listener is
//! really closed, so clients get `ECONNREFUSED`), kill the open connections, cut a connection
//! after N bytes in one direction, add a delay per chunk, throttle bandwidth, flip one byte at
//! an offset of the response stream. Counters report what was forwarded, so tests can assert
//! how much a resumed transfer re-fetched.
//!
//! The proxy runs on its own small tokio runtime, so the synchronous test code that drives it
//! needs no runtime; its methods block briefly and must not be called from async code. It
//! knows nothing about HTTP: offsets count raw bytes of a connection, headers included.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

/// Read buffer per direction per connection; the proxy's memory is this times connections.
const CHUNK: usize = 64 * 1024;
/// How long a control call waits for the accept loop to acknowledge.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);

/// A direction of a proxied connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Client to server (requests, upload bodies).
    Up,
    /// Server to client (responses, download bodies).
    Down,
}

impl Direction {
    fn index(self) -> usize {
        match self {
            Direction::Up => 0,
            Direction::Down => 1,
        }
    }
}

/// Cut a connection once it has forwarded `after` bytes in one direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cut {
    /// Bytes forwarded (per connection, in the rule's direction) before the cut.
    pub after: u64,
    /// How many more cuts to make; `None` = every connection.
    pub times: Option<u32>,
}

/// Flip (XOR `0x01`) the byte at `offset` of a connection's response stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flip {
    /// Offset in the server-to-client byte stream of a connection (headers included).
    pub offset: u64,
    /// How many more flips to make; `None` = every connection.
    pub times: Option<u32>,
}

/// The fault configuration; every field is read again for each chunk, so changes apply to
/// open connections too.
#[derive(Clone, Debug, Default)]
struct Faults {
    reset: bool,
    cut: [Option<Cut>; 2],
    delay: Duration,
    throttle: [Option<u64>; 2],
    flip: Option<Flip>,
}

#[derive(Default)]
struct Counters {
    bytes: [AtomicU64; 2],
    connections: AtomicU64,
    cuts: AtomicU64,
    flips: AtomicU64,
    failed_connects: AtomicU64,
}

/// Most accept times kept (oldest dropped first); tests look at a handful.
const MAX_ACCEPT_TIMES: usize = 10_000;

struct Shared {
    /// Where connections go: round-robin over these, skipping one that refuses.
    targets: Vec<SocketAddr>,
    next: AtomicU64,
    faults: Mutex<Faults>,
    counters: Counters,
    accept_times: Mutex<std::collections::VecDeque<std::time::Instant>>,
}

impl Shared {
    fn faults(&self) -> MutexGuard<'_, Faults> {
        // A short critical section with no await inside; poisoning cannot leave bad state.
        self.faults.lock().unwrap_or_else(|e| e.into_inner())
    }
}

enum Control {
    Refuse(std::sync::mpsc::Sender<io::Result<()>>),
    Accept(std::sync::mpsc::Sender<io::Result<()>>),
}

/// A running proxy. Dropping it stops the runtime and closes every connection.
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    control: mpsc::UnboundedSender<Control>,
    kill: watch::Sender<u64>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Proxy {
    /// Starts a proxy on `127.0.0.1:0` forwarding to `target`.
    pub fn start(target: SocketAddr) -> io::Result<Proxy> {
        Self::start_many(vec![target])
    }

    /// Starts a proxy that sends each new connection to the next of `targets` in turn (a
    /// load balancer over the nodes of a scale-out deployment); a target that refuses the
    /// connection (a killed node) is skipped for the next one.
    pub fn start_many(targets: Vec<SocketAddr>) -> io::Result<Proxy> {
        assert!(!targets.is_empty(), "a proxy needs a target");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("blobsync-test-proxy")
            .enable_all()
            .build()?;
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let listener = {
            let _guard = runtime.enter();
            TcpListener::from_std(std_listener)?
        };
        let shared = Arc::new(Shared {
            targets,
            next: AtomicU64::new(0),
            faults: Mutex::new(Faults::default()),
            counters: Counters::default(),
            accept_times: Mutex::new(std::collections::VecDeque::new()),
        });
        let (control, control_rx) = mpsc::unbounded_channel();
        let (kill, kill_rx) = watch::channel(0u64);
        runtime.spawn(accept_loop(
            listener,
            addr,
            shared.clone(),
            control_rx,
            kill_rx,
        ));
        Ok(Proxy {
            addr,
            shared,
            control,
            kill,
            runtime: Some(runtime),
        })
    }

    /// The proxy's address (point the daemon here).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://` URL of the proxy.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn control(
        &self,
        make: impl FnOnce(std::sync::mpsc::Sender<io::Result<()>>) -> Control,
    ) -> io::Result<()> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.control
            .send(make(tx))
            .map_err(|_| io::Error::other("proxy runtime stopped"))?;
        rx.recv_timeout(CONTROL_TIMEOUT)
            .map_err(|_| io::Error::other("proxy did not acknowledge"))?
    }

    /// Refuse new connections (closes the listener: clients get `ECONNREFUSED`), or accept
    /// them again on the same port. Open connections are not touched; see
    /// [`Proxy::kill_connections`].
    pub fn set_refuse(&self, refuse: bool) -> io::Result<()> {
        if refuse {
            self.control(Control::Refuse)
        } else {
            self.control(Control::Accept)
        }
    }

    /// Accept connections and close them at once, without contacting the target (the server
    /// looks down, but every attempt is still counted and timed; see
    /// [`Proxy::accept_times`]).
    pub fn set_reset(&self, reset: bool) {
        self.shared.faults().reset = reset;
    }

    /// When each connection was accepted, oldest first (the last 10 000).
    pub fn accept_times(&self) -> Vec<std::time::Instant> {
        let t = self
            .shared
            .accept_times
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        t.iter().copied().collect()
    }

    /// Closes every open connection now.
    pub fn kill_connections(&self) {
        self.kill.send_modify(|g| *g += 1);
    }

    /// Cut connections after `after` bytes in `dir` (`times`: how many cuts, `None` = all).
    pub fn cut_after(&self, dir: Direction, after: u64, times: Option<u32>) {
        self.shared.faults().cut[dir.index()] = Some(Cut { after, times });
    }

    /// Stop cutting in `dir`.
    pub fn clear_cut(&self, dir: Direction) {
        self.shared.faults().cut[dir.index()] = None;
    }

    /// Wait `delay` before forwarding each chunk, both directions (`ZERO` = off).
    pub fn set_delay(&self, delay: Duration) {
        self.shared.faults().delay = delay;
    }

    /// Limit each connection to `bytes_per_sec` in `dir` (`None` = unlimited).
    pub fn throttle(&self, dir: Direction, bytes_per_sec: Option<u64>) {
        self.shared.faults().throttle[dir.index()] = bytes_per_sec.filter(|r| *r > 0);
    }

    /// Flip the byte at `offset` of each connection's response stream (`times` as for cuts).
    pub fn flip_byte_at(&self, offset: u64, times: Option<u32>) {
        self.shared.faults().flip = Some(Flip { offset, times });
    }

    /// Remove every fault except refusal (reset, cuts, delay, throttle, flips).
    pub fn clear_faults(&self) {
        *self.shared.faults() = Faults::default();
    }

    /// Bytes forwarded in `dir` since start (or the last reset).
    pub fn bytes(&self, dir: Direction) -> u64 {
        self.shared.counters.bytes[dir.index()].load(Ordering::SeqCst)
    }

    /// Connections accepted.
    pub fn connections(&self) -> u64 {
        self.shared.counters.connections.load(Ordering::SeqCst)
    }

    /// Connections cut by a [`Cut`] rule.
    pub fn cuts(&self) -> u64 {
        self.shared.counters.cuts.load(Ordering::SeqCst)
    }

    /// Bytes flipped by a [`Flip`] rule.
    pub fn flips(&self) -> u64 {
        self.shared.counters.flips.load(Ordering::SeqCst)
    }

    /// Accepted connections whose connect to the target failed.
    pub fn failed_connects(&self) -> u64 {
        self.shared.counters.failed_connects.load(Ordering::SeqCst)
    }

    /// Zero every counter.
    pub fn reset_counters(&self) {
        let c = &self.shared.counters;
        for a in c
            .bytes
            .iter()
            .chain([&c.connections, &c.cuts, &c.flips, &c.failed_connects])
        {
            a.store(0, Ordering::SeqCst);
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            // Never blocks, so dropping a proxy is fine anywhere, even in async code.
            rt.shutdown_background();
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    addr: SocketAddr,
    shared: Arc<Shared>,
    mut control: mpsc::UnboundedReceiver<Control>,
    kill: watch::Receiver<u64>,
) {
    let mut listener = Some(listener);
    loop {
        let accepted = async {
            match &listener {
                Some(l) => l.accept().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            cmd = control.recv() => match cmd {
                None => return,
                Some(Control::Refuse(ack)) => {
                    listener = None;
                    let _ = ack.send(Ok(()));
                }
                Some(Control::Accept(ack)) => {
                    if listener.is_none() {
                        match TcpListener::bind(addr).await {
                            Ok(l) => {
                                listener = Some(l);
                                let _ = ack.send(Ok(()));
                            }
                            Err(e) => { let _ = ack.send(Err(e)); }
                        }
                    } else {
                        let _ = ack.send(Ok(()));
                    }
                }
            },
            res = accepted => {
                if let Ok((client, _)) = res {
                    shared.counters.connections.fetch_add(1, Ordering::SeqCst);
                    {
                        let mut t = shared.accept_times.lock().unwrap_or_else(|e| e.into_inner());
                        if t.len() == MAX_ACCEPT_TIMES {
                            t.pop_front();
                        }
                        t.push_back(std::time::Instant::now());
                    }
                    if shared.faults().reset {
                        drop(client);
                    } else {
                        tokio::spawn(handle(client, shared.clone(), kill.clone()));
                    }
                }
            }
        }
    }
}

#[derive(Debug, PartialEq)]
enum PumpEnd {
    Eof,
    Cut,
    Error,
}

async fn handle(client: TcpStream, shared: Arc<Shared>, mut kill: watch::Receiver<u64>) {
    kill.mark_unchanged();
    let n = shared.targets.len();
    let first = shared.next.fetch_add(1, Ordering::SeqCst) as usize;
    let mut server = None;
    for k in 0..n {
        if let Ok(s) = TcpStream::connect(shared.targets[(first + k) % n]).await {
            server = Some(s);
            break;
        }
    }
    let server = match server {
        Some(s) => s,
        None => {
            shared
                .counters
                .failed_connects
                .fetch_add(1, Ordering::SeqCst);
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_r, client_w) = client.into_split();
    let (server_r, server_w) = server.into_split();
    let up = pump(client_r, server_w, Direction::Up, shared.clone());
    let down = pump(server_r, client_w, Direction::Down, shared.clone());
    tokio::pin!(up, down);
    let (mut up_done, mut down_done) = (false, false);
    while !(up_done && down_done) {
        tokio::select! {
            end = &mut up, if !up_done => {
                up_done = true;
                if end != PumpEnd::Eof { break; }
            }
            end = &mut down, if !down_done => {
                down_done = true;
                if end != PumpEnd::Eof { break; }
            }
            _ = kill.changed() => break,
        }
    }
    // Dropping the pumps closes both sockets.
}

/// Forwards one direction, applying the faults chunk by chunk.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    dir: Direction,
    shared: Arc<Shared>,
) -> PumpEnd {
    let i = dir.index();
    let mut buf = vec![0u8; CHUNK];
    let mut pos: u64 = 0;
    loop {
        let (limit, delay, rate) = {
            let f = shared.faults();
            let rate = f.throttle[i];
            // Small reads under a throttle keep the pacing smooth.
            let limit = rate.map_or(CHUNK, |r| ((r / 20) as usize).clamp(1024, CHUNK));
            (limit, f.delay, rate)
        };
        let n = match from.read(&mut buf[..limit]).await {
            Ok(0) => {
                let _ = to.shutdown().await;
                return PumpEnd::Eof;
            }
            Ok(n) => n,
            Err(_) => return PumpEnd::Error,
        };
        if !delay.is_zero() {
            // The injected latency is the fault under test: this sleep waits for nothing.
            tokio::time::sleep(delay).await;
        }
        let (forward, cut) = {
            let mut f = shared.faults();
            let mut forward = n;
            let mut cut = false;
            if let Some(rule) = f.cut[i] {
                let allowed = rule.after.saturating_sub(pos);
                if (n as u64) > allowed {
                    forward = allowed as usize;
                    cut = true;
                    f.cut[i] = match rule.times {
                        Some(t) if t <= 1 => None,
                        Some(t) => Some(Cut {
                            times: Some(t - 1),
                            ..rule
                        }),
                        None => Some(rule),
                    };
                }
            }
            if dir == Direction::Down
                && let Some(rule) = f.flip
                && rule.offset >= pos
                && rule.offset < pos + forward as u64
            {
                buf[(rule.offset - pos) as usize] ^= 0x01;
                shared.counters.flips.fetch_add(1, Ordering::SeqCst);
                f.flip = match rule.times {
                    Some(t) if t <= 1 => None,
                    Some(t) => Some(Flip {
                        times: Some(t - 1),
                        ..rule
                    }),
                    None => Some(rule),
                };
            }
            (forward, cut)
        };
        if forward > 0 {
            if to.write_all(&buf[..forward]).await.is_err() {
                return PumpEnd::Error;
            }
            pos += forward as u64;
            shared.counters.bytes[i].fetch_add(forward as u64, Ordering::SeqCst);
        }
        if cut {
            shared.counters.cuts.fetch_add(1, Ordering::SeqCst);
            let _ = to.shutdown().await;
            return PumpEnd::Cut;
        }
        if let Some(rate) = rate {
            // The throttle under test: holding the bytes back is the point, not a wait.
            tokio::time::sleep(Duration::from_secs_f64(forward as f64 / rate as f64)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener as StdListener, TcpStream as StdStream};
    use std::time::Instant;

    /// A tiny echo server on its own thread: echoes every byte back, one thread per connection.
    fn echo_server() -> SocketAddr {
        let l = StdListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(mut c) = conn else { return };
                std::thread::spawn(move || {
                    let mut buf = [0u8; 8192];
                    loop {
                        match c.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                if c.write_all(&buf[..n]).is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        addr
    }

    fn connect(p: &Proxy) -> StdStream {
        let s = StdStream::connect(p.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    }

    /// Sends `data`, half-closes, reads until EOF or error; returns what came back.
    fn roundtrip(p: &Proxy, data: &[u8]) -> Vec<u8> {
        let mut s = connect(p);
        let writer = {
            let mut w = s.try_clone().unwrap();
            let data = data.to_vec();
            std::thread::spawn(move || {
                let _ = w.write_all(&data);
                let _ = w.shutdown(std::net::Shutdown::Write);
            })
        };
        let mut out = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
        writer.join().unwrap();
        out
    }

    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i % 251) as u8).collect()
    }

    #[test]
    fn forwards_both_ways_and_counts_bytes() {
        let p = Proxy::start(echo_server()).unwrap();
        let data = pattern(300_000);
        assert_eq!(roundtrip(&p, &data), data);
        assert_eq!(p.bytes(Direction::Up), 300_000);
        assert_eq!(p.bytes(Direction::Down), 300_000);
        assert_eq!(p.connections(), 1);
        assert_eq!((p.cuts(), p.flips()), (0, 0));
    }

    #[test]
    fn cut_upstream_after_n_bytes() {
        let p = Proxy::start(echo_server()).unwrap();
        p.cut_after(Direction::Up, 1000, Some(1));
        let out = roundtrip(&p, &pattern(50_000));
        assert_eq!(p.bytes(Direction::Up), 1000);
        assert!(out.len() <= 1000, "got {} bytes back", out.len());
        assert_eq!(out[..], pattern(50_000)[..out.len()]);
        assert_eq!(p.cuts(), 1);
        // The rule was for one cut only: the next connection passes through whole.
        let data = pattern(20_000);
        assert_eq!(roundtrip(&p, &data), data);
        assert_eq!(p.cuts(), 1);
    }

    #[test]
    fn cut_downstream_after_n_bytes_on_every_connection() {
        let p = Proxy::start(echo_server()).unwrap();
        p.cut_after(Direction::Down, 4096, None);
        for round in 1..=3 {
            let out = roundtrip(&p, &pattern(100_000));
            assert_eq!(out, pattern(4096), "round {round}");
            assert_eq!(p.cuts(), round);
        }
        p.clear_cut(Direction::Down);
        let data = pattern(10_000);
        assert_eq!(roundtrip(&p, &data), data);
    }

    #[test]
    fn flips_exactly_one_byte_at_the_offset() {
        let p = Proxy::start(echo_server()).unwrap();
        p.flip_byte_at(70_000, Some(1));
        let data = pattern(200_000);
        let out = roundtrip(&p, &data);
        assert_eq!(out.len(), data.len());
        let diffs: Vec<usize> = (0..data.len()).filter(|&i| out[i] != data[i]).collect();
        assert_eq!(diffs, vec![70_000]);
        assert_eq!(out[70_000], data[70_000] ^ 0x01);
        assert_eq!(p.flips(), 1);
        assert_eq!(
            roundtrip(&p, &data),
            data,
            "second connection must be clean"
        );
    }

    #[test]
    fn refuse_closes_the_port_and_accept_reopens_it() {
        let p = Proxy::start(echo_server()).unwrap();
        p.set_refuse(true).unwrap();
        let err = StdStream::connect(p.addr()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
        p.set_refuse(false).unwrap();
        assert_eq!(roundtrip(&p, b"hello"), b"hello");
    }

    #[test]
    fn reset_mode_closes_at_once_and_records_attempts() {
        let p = Proxy::start(echo_server()).unwrap();
        p.set_reset(true);
        for _ in 0..3 {
            assert!(roundtrip(&p, b"hello").is_empty());
        }
        let times = p.accept_times();
        assert_eq!(times.len(), 3);
        assert!(times.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(p.bytes(Direction::Up), 0);
        p.set_reset(false);
        assert_eq!(roundtrip(&p, b"hello"), b"hello");
    }

    #[test]
    fn kill_connections_closes_open_ones() {
        let p = Proxy::start(echo_server()).unwrap();
        let mut s = connect(&p);
        s.write_all(b"ping").unwrap();
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).unwrap();
        p.kill_connections();
        let mut rest = Vec::new();
        // EOF or reset; either way the connection is gone, not hanging.
        let _ = s.read_to_end(&mut rest);
        assert!(rest.is_empty());
    }

    #[test]
    fn delay_and_throttle_slow_transfers_down() {
        let p = Proxy::start(echo_server()).unwrap();
        p.set_delay(Duration::from_millis(150));
        let t = Instant::now();
        assert_eq!(roundtrip(&p, b"x"), b"x");
        // One chunk each way, each delayed: a lower bound only, never an upper one.
        assert!(
            t.elapsed() >= Duration::from_millis(300),
            "{:?}",
            t.elapsed()
        );
        p.set_delay(Duration::ZERO);
        p.throttle(Direction::Down, Some(200_000));
        let t = Instant::now();
        let data = pattern(100_000);
        assert_eq!(roundtrip(&p, &data), data);
        assert!(
            t.elapsed() >= Duration::from_millis(400),
            "{:?}",
            t.elapsed()
        );
    }

    #[test]
    fn unreachable_target_is_counted_and_closes_the_client() {
        let dead = {
            let l = StdListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let p = Proxy::start(dead).unwrap();
        let out = roundtrip(&p, b"hello");
        assert!(out.is_empty());
        assert_eq!(p.failed_connects(), 1);
    }
}
