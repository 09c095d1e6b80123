//! A TCP proxy between the relay and a real broker, so a test can cut the
//! broker off mid-run (every open connection dropped, new ones refused for a
//! while) without disturbing the shared service on this machine.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A running proxy; it stops when dropped.
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

struct Shared {
    upstream: String,
    /// Bumped by [`Proxy::cut`]; each connection ends when it changes.
    generation: watch::Sender<u64>,
    down: AtomicBool,
    accepted: AtomicUsize,
}

impl Proxy {
    /// Listens on `127.0.0.1:0` and forwards each connection to `upstream` (`host:port`).
    pub async fn start(upstream: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            upstream: upstream.to_string(),
            generation: watch::channel(0).0,
            down: AtomicBool::new(false),
            accepted: AtomicUsize::new(0),
        });
        let s = shared.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                s.accepted.fetch_add(1, Ordering::SeqCst);
                if s.down.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                tokio::spawn(forward(client, s.clone()));
            }
        });
        Self { addr, shared, task }
    }

    /// `127.0.0.1:<port>`, for the target's config and `sandbox.allow_tcp`.
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// Drops every open connection, as a broker restart would.
    pub fn cut(&self) {
        self.shared.generation.send_modify(|g| *g += 1);
    }

    /// While down, new connections are accepted and closed at once.
    pub fn set_down(&self, down: bool) {
        self.shared.down.store(down, Ordering::SeqCst);
        if down {
            self.cut();
        }
    }

    /// Connections accepted so far (including those refused while down).
    pub fn accepted(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.cut();
    }
}

async fn forward(mut client: TcpStream, shared: Arc<Shared>) {
    let mut cut = shared.generation.subscribe();
    cut.mark_unchanged();
    let Ok(mut upstream) = TcpStream::connect(&shared.upstream).await else {
        return;
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
        _ = cut.changed() => {
            // An abrupt close (RST), as a crashed broker would leave.
            let _ = client.set_zero_linger();
            let _ = client.shutdown().await;
        }
    }
}
