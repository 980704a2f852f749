//! Network faults on demand, on the loopback interface only.
//!
//! [`FaultProxy`] sits between a client and a server and forwards bytes both ways; at
//! any moment a test can make it stall (a black-holed path), add latency, or cut every
//! connection with a reset. [`BlackHole`] is an address where a TCP connection attempt
//! is never answered, like a firewalled host.
//!
//! Both need a tokio runtime (they are built on `tokio::net`), and both only ever bind
//! and connect to `127.0.0.1`.
//!
//! ```no_run
//! # async fn run(cluster: &pglisten_testkit::Cluster) -> std::io::Result<()> {
//! use std::time::Duration;
//! use pglisten_testkit::FaultProxy;
//!
//! let proxy = FaultProxy::start(([127, 0, 0, 1], cluster.port()).into()).await?;
//! let url = format!("postgres://postgres@127.0.0.1:{}/postgres", proxy.port());
//! // ... connect a client to `url` ...
//! proxy.latency(Duration::from_millis(200)); // every chunk is 200 ms late, each way
//! proxy.stall(); // nothing moves any more; the sockets stay open
//! proxy.pass(); // everything held back flows again
//! proxy.cut(); // every connection is reset (RST) on both sides
//! # let _ = url;
//! # Ok(()) }
//! ```

use std::collections::VecDeque;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream, UnixListener, UnixStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

/// Size of one read, in bytes.
const CHUNK: usize = 16 * 1024;
/// Chunks held back (by latency) per direction before the proxy stops reading.
const MAX_HELD_CHUNKS: usize = 256;

/// How the proxy treats traffic right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Pass,
    Stall,
    Latency(Duration),
    /// New connections are reset at once; existing ones forward as in `Pass`.
    Refuse,
}

#[derive(Debug, Clone)]
struct Control {
    mode: Mode,
    /// Incremented by every [`FaultProxy::cut`]; a connection accepted while the epoch was
    /// lower is reset.
    cut_epoch: u64,
    /// Incremented by every [`FaultProxy::inject_to_clients`]: each connection writes
    /// `injected` to its client once per increment it sees.
    inject_epoch: u64,
    injected: Arc<[u8]>,
}

#[derive(Debug)]
struct Shared {
    control: watch::Sender<Control>,
    live: AtomicUsize,
    accepted: AtomicU64,
}

/// A TCP proxy from `127.0.0.1:<its own port>` to an upstream address on `127.0.0.1`,
/// which injects faults on command: [`stall`](Self::stall), [`latency`](Self::latency),
/// [`cut`](Self::cut), and back to [`pass`](Self::pass).
///
/// Every connection accepted gets its own connection to the upstream; bytes are
/// forwarded as they come, in both directions, and a close (FIN) on one side is passed on
/// to the other. A connection that cannot reach the upstream (server down) is closed at
/// once, so the client sees the server go away.
///
/// Dropping the proxy stops accepting and closes every connection.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept_task: JoinHandle<()>,
}

impl FaultProxy {
    /// Starts a proxy to `upstream` (which must be on `127.0.0.1`), listening on a free
    /// port of `127.0.0.1`. It forwards normally until told otherwise.
    ///
    /// # Errors
    ///
    /// `InvalidInput` if `upstream` is not on `127.0.0.1`; any error of binding the
    /// listening socket.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub async fn start(upstream: SocketAddr) -> io::Result<FaultProxy> {
        check_upstream(upstream)?;
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        Ok(Self::serve(addr, Listening::Tcp(listener), upstream))
    }

    /// Starts a proxy to `upstream` (which must be on `127.0.0.1`) that clients reach
    /// over a unix socket: `socket_dir/.s.PGSQL.<port>`, where PostgreSQL clients look
    /// for a server with `host=socket_dir port=<port>`. [`port`](Self::port) is then that
    /// `port`; [`cut`](Self::cut) closes the unix side (a unix socket has no reset).
    ///
    /// # Errors
    ///
    /// `InvalidInput` if `upstream` is not on `127.0.0.1`; any error of binding the
    /// socket (a file of that name already there, say).
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub async fn start_unix(
        socket_dir: &std::path::Path,
        port: u16,
        upstream: SocketAddr,
    ) -> io::Result<FaultProxy> {
        check_upstream(upstream)?;
        let listener = UnixListener::bind(socket_dir.join(format!(".s.PGSQL.{port}")))?;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        Ok(Self::serve(addr, Listening::Unix(listener), upstream))
    }

    fn serve(addr: SocketAddr, listener: Listening, upstream: SocketAddr) -> FaultProxy {
        let (control, _) = watch::channel(Control {
            mode: Mode::Pass,
            cut_epoch: 0,
            inject_epoch: 0,
            injected: Arc::from(&[][..]),
        });
        let shared = Arc::new(Shared {
            control,
            live: AtomicUsize::new(0),
            accepted: AtomicU64::new(0),
        });
        let accept_task = tokio::spawn(accept_loop(listener, upstream, shared.clone()));
        FaultProxy {
            addr,
            shared,
            accept_task,
        }
    }

    /// The address clients connect to: `127.0.0.1:<port>`. For a proxy made with
    /// [`start_unix`](Self::start_unix), clients connect to its socket file instead, and
    /// only the port of this address means anything.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The port clients connect to, on `127.0.0.1`.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Forwards normally, without added latency. Ends a [`stall`](Self::stall): whatever
    /// was held back flows again, in order.
    pub fn pass(&self) {
        self.set_mode(Mode::Pass);
    }

    /// Stops forwarding in both directions, on every connection, without closing
    /// anything: no FIN, no RST, the sockets stay open and the kernel keeps
    /// acknowledging what it can buffer, like a path whose packets are silently dropped
    /// further on. New connections are still accepted (the TCP handshake completes), and
    /// are stalled too. [`pass`](Self::pass) or [`latency`](Self::latency) ends it.
    pub fn stall(&self) {
        self.set_mode(Mode::Stall);
    }

    /// Refuses new connections: each one is reset (RST) as soon as it is accepted, as a
    /// firewall rejecting them would; the client's first read fails at once with a reset
    /// (the TCP handshake itself completes: the kernel accepts before the proxy sees the
    /// connection). Connections already open go on forwarding (combine with
    /// [`cut`](Self::cut) to end them too). [`pass`](Self::pass) ends it.
    pub fn refuse(&self) {
        self.set_mode(Mode::Refuse);
    }

    /// Forwards with `delay` added to every chunk, in each direction (so a round trip
    /// takes at least `2 * delay` longer). Ends a stall. Chunks keep their order; a
    /// chunk read before a change keeps the delay it was read with.
    pub fn latency(&self, delay: Duration) {
        self.set_mode(Mode::Latency(delay));
    }

    /// Resets every current connection on both sides (`SO_LINGER` 0, then close: each
    /// peer gets a RST, not a FIN), like a middlebox that dropped its state. Data held
    /// back is discarded. New connections are accepted as before, in the current mode.
    pub fn cut(&self) {
        self.shared
            .control
            .send_modify(|control| control.cut_epoch += 1);
    }

    /// Connections open through the proxy right now.
    pub fn connections(&self) -> usize {
        self.shared.live.load(Ordering::SeqCst)
    }

    /// Connections accepted since the proxy started.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Writes `bytes` to every client connected now, between two chunks of what the
    /// server sends, as if the server had sent them: a way to make a server say what a
    /// real one would not (a malformed message, say). Meant for an idle connection: with
    /// traffic in flight the bytes may land inside a message.
    pub fn inject_to_clients(&self, bytes: &[u8]) {
        self.shared.control.send_modify(|control| {
            control.inject_epoch += 1;
            control.injected = Arc::from(bytes);
        });
    }

    fn set_mode(&self, mode: Mode) {
        self.shared
            .control
            .send_modify(|control| control.mode = mode);
    }
}

impl Drop for FaultProxy {
    /// Stops accepting and closes every connection (the accept task owns the connection
    /// tasks, so aborting it ends them all).
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

fn check_upstream(upstream: SocketAddr) -> io::Result<()> {
    if upstream.ip() == Ipv4Addr::LOCALHOST {
        return Ok(());
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("FaultProxy only forwards to 127.0.0.1, not {upstream}"),
    ))
}

/// Where a proxy's clients connect.
enum Listening {
    Tcp(TcpListener),
    /// The socket file is removed when the proxy stops.
    Unix(UnixListener),
}

impl Listening {
    async fn accept(&self) -> io::Result<Client> {
        match self {
            Listening::Tcp(listener) => listener.accept().await.map(|(c, _)| Client::Tcp(c)),
            Listening::Unix(listener) => listener.accept().await.map(|(c, _)| Client::Unix(c)),
        }
    }
}

impl Drop for Listening {
    fn drop(&mut self) {
        if let Listening::Unix(listener) = self
            && let Ok(addr) = listener.local_addr()
            && let Some(path) = addr.as_pathname()
        {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// A client's connection to the proxy.
enum Client {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Client {
    /// See [`ClientStream::reset_on_close`].
    fn reset_on_close(&self) {
        match self {
            Client::Tcp(stream) => stream.reset_on_close(),
            Client::Unix(stream) => stream.reset_on_close(),
        }
    }
}

async fn accept_loop(listener: Listening, upstream: SocketAddr, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(client) => {
                    if shared.control.borrow().mode == Mode::Refuse {
                        // A reset, not a close: the client's connect fails at once.
                        client.reset_on_close();
                        drop(client);
                        continue;
                    }
                    // Cuts from here on apply to this connection.
                    let epoch = shared.control.borrow().cut_epoch;
                    shared.accepted.fetch_add(1, Ordering::SeqCst);
                    let shared = shared.clone();
                    connections.spawn(async move {
                        match client {
                            Client::Tcp(stream) => connection(stream, upstream, epoch, shared).await,
                            Client::Unix(stream) => connection(stream, upstream, epoch, shared).await,
                        }
                    });
                }
                // Out of descriptors and the like: try again shortly.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            // Reap finished connections so the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Counts a live connection for as long as it exists.
struct LiveGuard(Arc<Shared>);

impl LiveGuard {
    fn new(shared: Arc<Shared>) -> Self {
        shared.live.fetch_add(1, Ordering::SeqCst);
        LiveGuard(shared)
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What a proxy needs of a client connection besides reading and writing.
trait ClientStream: AsyncRead + AsyncWrite + Unpin + Send {
    /// Socket options for forwarding (no Nagle delay on TCP).
    fn prepare(&self);
    /// Makes the coming close a reset (RST) where the transport has one, and discards
    /// unsent data.
    fn reset_on_close(&self);
}

impl ClientStream for TcpStream {
    fn prepare(&self) {
        let _ = self.set_nodelay(true);
    }

    fn reset_on_close(&self) {
        let _ = self.set_zero_linger();
    }
}

impl ClientStream for UnixStream {
    fn prepare(&self) {}

    fn reset_on_close(&self) {}
}

async fn connection<C: ClientStream>(
    mut client: C,
    upstream: SocketAddr,
    epoch: u64,
    shared: Arc<Shared>,
) {
    let _live = LiveGuard::new(shared.clone());
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        // The server is down: the client sees the connection closed.
        return;
    };
    client.prepare();
    let _ = server.set_nodelay(true);
    let mut cut = shared.control.subscribe();
    let was_cut = {
        let (mut client_read, mut client_write) = tokio::io::split(&mut client);
        let (mut server_read, mut server_write) = server.split();
        let up = pump(
            &mut client_read,
            &mut server_write,
            shared.control.subscribe(),
            false,
        );
        let down = pump(
            &mut server_read,
            &mut client_write,
            shared.control.subscribe(),
            true,
        );
        let cut_requested = cut.wait_for(|control| control.cut_epoch > epoch);
        tokio::select! {
            _ = cut_requested => true,
            _ = async { tokio::join!(up, down) } => false,
        }
    };
    if was_cut {
        // Closing with a zero linger time sends RST instead of FIN, and discards unsent
        // data. (The borrowed halves above never shut anything down on drop.)
        client.reset_on_close();
        let _ = server.set_zero_linger();
    }
}

/// Forwards `from` to `to` under the current [`Mode`] until `from` ends (then passes the
/// FIN on) or `to` fails. `to_client`: this is the server-to-client direction, which
/// writes what [`FaultProxy::inject_to_clients`] gives.
async fn pump<R, W>(
    from: &mut R,
    to: &mut W,
    mut control: watch::Receiver<Control>,
    to_client: bool,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut injected_epoch = control.borrow().inject_epoch;
    // Chunks read, with the time each may be written.
    let mut held: VecDeque<(Instant, Vec<u8>)> = VecDeque::new();
    let mut buf = vec![0u8; CHUNK];
    let mut ended = false;
    loop {
        let (mode, injection) = {
            let now = control.borrow_and_update();
            let injection = (to_client && now.inject_epoch > injected_epoch)
                .then(|| (now.inject_epoch, now.injected.clone()));
            (now.mode, injection)
        };
        if let Some((epoch, bytes)) = injection {
            injected_epoch = epoch;
            if to.write_all(&bytes).await.is_err() {
                return;
            }
        }
        if ended && held.is_empty() {
            let _ = to.shutdown().await;
            return;
        }
        let stalled = mode == Mode::Stall;
        let delay = match mode {
            Mode::Latency(delay) => delay,
            Mode::Pass | Mode::Stall | Mode::Refuse => Duration::ZERO,
        };
        let due = held.front().map(|(due, _)| *due);
        tokio::select! {
            read = from.read(&mut buf), if !stalled && !ended && held.len() < MAX_HELD_CHUNKS => {
                match read {
                    Ok(0) | Err(_) => ended = true,
                    Ok(n) => held.push_back((Instant::now() + delay, buf[..n].to_vec())),
                }
            }
            () = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if !stalled && due.is_some() => {
                let (_, chunk) = held.pop_front().expect("a chunk is due");
                if to.write_all(&chunk).await.is_err() {
                    return;
                }
            }
            changed = control.changed() => {
                if changed.is_err() {
                    return; // the proxy is gone
                }
            }
        }
    }
}

/// An address on `127.0.0.1` where TCP connection attempts are never answered: the SYN
/// is dropped, so `connect` hangs until the client's own timeout (or the kernel's, after
/// minutes). Like a firewalled or powered-off host.
///
/// It works by filling the accept queue of a listening socket that never accepts: Linux
/// then drops further SYNs. Dropping the `BlackHole` closes everything.
#[derive(Debug)]
pub struct BlackHole {
    addr: SocketAddr,
    _listener: TcpListener,
    _fillers: Vec<TcpStream>,
}

impl BlackHole {
    /// Creates the black hole, and checks that a connection attempt to it really hangs.
    ///
    /// # Errors
    ///
    /// Any socket error, or `Other` if connection attempts still complete after the
    /// accept queue should be full (a kernel that does not drop SYNs then).
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub async fn start() -> io::Result<BlackHole> {
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0).into())?;
        // Backlog 0: the kernel queues at most one connection nobody accepts.
        let listener = socket.listen(0)?;
        let addr = listener.local_addr()?;
        let mut fillers = Vec::new();
        for _ in 0..16 {
            match tokio::time::timeout(Duration::from_millis(500), TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => fillers.push(stream),
                Ok(Err(e)) => return Err(e),
                // This attempt hung: the queue is full and SYNs are dropped.
                Err(_) => {
                    return Ok(BlackHole {
                        addr,
                        _listener: listener,
                        _fillers: fillers,
                    });
                }
            }
        }
        Err(io::Error::other(
            "connections to a full accept queue still complete; cannot black-hole on this kernel",
        ))
    }

    /// The address whose connection attempts hang.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The port whose connection attempts hang, on `127.0.0.1`.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny upstream: echoes everything back.
    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let (mut r, mut w) = stream.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    const WAIT: Duration = Duration::from_secs(30);

    async fn round_trip(stream: &mut TcpStream, text: &[u8]) -> Vec<u8> {
        stream.write_all(text).await.unwrap();
        let mut back = vec![0u8; text.len()];
        tokio::time::timeout(WAIT, stream.read_exact(&mut back))
            .await
            .expect("echo within WAIT")
            .unwrap();
        back
    }

    #[tokio::test]
    async fn a_unix_socket_proxy_forwards_injects_and_removes_its_socket() {
        let dir = std::env::temp_dir().join(format!("pglisten-proxy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join(".s.PGSQL.7");
        let proxy = FaultProxy::start_unix(&dir, 7, echo_server().await)
            .await
            .unwrap();
        assert_eq!(proxy.port(), 7);
        let mut stream = UnixStream::connect(&socket).await.unwrap();
        stream.write_all(b"hello").await.unwrap();
        let mut back = [0u8; 5];
        tokio::time::timeout(WAIT, stream.read_exact(&mut back))
            .await
            .expect("echo within WAIT")
            .unwrap();
        assert_eq!(&back, b"hello");
        proxy.inject_to_clients(b"extra");
        tokio::time::timeout(WAIT, stream.read_exact(&mut back))
            .await
            .expect("injected bytes within WAIT")
            .unwrap();
        assert_eq!(&back, b"extra");
        drop(proxy);
        // The accept task is aborted, then its listener dropped: wait for the file to go.
        let deadline = Instant::now() + WAIT;
        while socket.exists() {
            assert!(Instant::now() < deadline, "the socket file stayed");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = std::fs::remove_dir(&dir);
    }

    #[tokio::test]
    async fn refuses_upstreams_off_loopback() {
        let err = FaultProxy::start("10.0.0.1:5432".parse().unwrap())
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[tokio::test]
    async fn passes_stalls_resumes_and_adds_latency() {
        let proxy = FaultProxy::start(echo_server().await).await.unwrap();
        let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut stream, b"hello").await, b"hello");
        assert_eq!(proxy.connections(), 1);
        assert_eq!(proxy.accepted(), 1);

        proxy.stall();
        stream.write_all(b"held").await.unwrap();
        let mut buf = [0u8; 4];
        // Nothing comes back while stalled (a short look suffices to see "not yet").
        assert!(
            tokio::time::timeout(Duration::from_millis(300), stream.read_exact(&mut buf))
                .await
                .is_err()
        );
        proxy.pass();
        tokio::time::timeout(WAIT, stream.read_exact(&mut buf))
            .await
            .expect("held bytes flow after pass")
            .unwrap();
        assert_eq!(&buf, b"held");

        proxy.latency(Duration::from_millis(100));
        let started = std::time::Instant::now();
        assert_eq!(round_trip(&mut stream, b"slow").await, b"slow");
        assert!(
            started.elapsed() >= Duration::from_millis(200),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn cut_resets_both_sides_and_new_connections_work() {
        let proxy = FaultProxy::start(echo_server().await).await.unwrap();
        let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut stream, b"x").await, b"x");
        proxy.cut();
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(WAIT, stream.read(&mut buf))
            .await
            .expect("the cut is seen");
        let err = read.expect_err("a reset, not an orderly close");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
        tokio::time::timeout(WAIT, async {
            while proxy.connections() > 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the cut connection is gone");
        let mut again = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut again, b"y").await, b"y");
        assert_eq!(proxy.accepted(), 2);
    }

    #[tokio::test]
    async fn refuse_resets_new_connections_until_pass() {
        let proxy = FaultProxy::start(echo_server().await).await.unwrap();
        let mut open = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut open, b"a").await, b"a");
        proxy.refuse();
        let mut refused = TcpStream::connect(proxy.addr()).await.unwrap();
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(WAIT, refused.read(&mut buf))
            .await
            .expect("the refusal is seen at once");
        let err = read.expect_err("a reset, not data or an orderly close");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
        // The connection opened before goes on.
        assert_eq!(round_trip(&mut open, b"b").await, b"b");
        proxy.pass();
        let mut again = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut again, b"c").await, b"c");
    }

    #[tokio::test]
    async fn upstream_down_closes_the_client() {
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap().port()
        };
        let proxy = FaultProxy::start(([127, 0, 0, 1], port).into())
            .await
            .unwrap();
        let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(WAIT, stream.read(&mut buf))
            .await
            .expect("closed promptly");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }

    #[tokio::test]
    async fn black_hole_connects_hang() {
        let hole = BlackHole::start().await.unwrap();
        let attempt =
            tokio::time::timeout(Duration::from_millis(500), TcpStream::connect(hole.addr()));
        assert!(attempt.await.is_err(), "connect should hang");
    }
}
