//! A latency-injecting TCP relay, for tests and `pgmeridian demo`/`pgmeridian delay`: every
//! byte it forwards, in either direction, leaves `one_way` after it arrived. It owns its
//! listener and every connection it relays, and stops them all when dropped.
//!
//! It must not look at the bytes (it knows nothing about PostgreSQL), must not reorder or lose
//! them, and must not serialize throughput behind the delay: each direction is a pipeline (a
//! reader stamps each chunk with its due time and queues it; a writer sleeps until that time
//! and writes), so a long stream pays the delay once, not once per chunk. No I/O error panics:
//! an error on either side closes both sides of that connection.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Largest chunk read at once.
const CHUNK: usize = 64 * 1024;
/// Bytes in flight per direction (read, not yet written): the relay's bandwidth-delay product.
/// With a 90 ms delay this allows about 45 MB/s per direction and connection.
const IN_FLIGHT_BYTES: usize = 4 * 1024 * 1024;
/// Chunks in flight per direction, whatever their size.
const IN_FLIGHT_CHUNKS: usize = 4096;

/// A running relay. Dropping it closes the listener and every relayed connection.
pub struct DelayRelay {
    addr: SocketAddr,
    /// The one-way delay in nanoseconds, read once per chunk as it arrives.
    delay_ns: Arc<AtomicU64>,
    stop: CancellationToken,
}

/// Where relayed connections go: an address, or a `host:port` resolved per connection (so a
/// container that comes back with a new address is followed).
#[derive(Clone, Debug)]
enum Target {
    Addr(SocketAddr),
    Name(String),
}

impl DelayRelay {
    /// Listens on `listen` (port 0 picks a free one) and relays each connection to `target`,
    /// delaying every chunk by `one_way` in each direction.
    pub async fn start(
        listen: SocketAddr,
        target: SocketAddr,
        one_way: Duration,
    ) -> std::io::Result<DelayRelay> {
        Self::start_target(listen, Target::Addr(target), one_way).await
    }

    /// Like [`DelayRelay::start`], to a `host:port` that is resolved for each new connection.
    pub async fn start_to_host(
        listen: SocketAddr,
        target: String,
        one_way: Duration,
    ) -> std::io::Result<DelayRelay> {
        Self::start_target(listen, Target::Name(target), one_way).await
    }

    async fn start_target(
        listen: SocketAddr,
        target: Target,
        one_way: Duration,
    ) -> std::io::Result<DelayRelay> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let delay_ns = Arc::new(AtomicU64::new(nanos(one_way)));
        let stop = CancellationToken::new();
        tokio::spawn(accept_loop(
            listener,
            target,
            delay_ns.clone(),
            stop.clone(),
        ));
        Ok(DelayRelay {
            addr,
            delay_ns,
            stop,
        })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The current one-way delay.
    pub fn delay(&self) -> Duration {
        Duration::from_nanos(self.delay_ns.load(Ordering::Relaxed))
    }

    /// Changes the one-way delay for chunks that arrive from now on (chunks already queued keep
    /// the time they were given; order is never changed).
    pub fn set_delay(&self, one_way: Duration) {
        self.delay_ns.store(nanos(one_way), Ordering::Relaxed);
    }
}

impl Drop for DelayRelay {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

async fn accept_loop(
    listener: TcpListener,
    target: Target,
    delay_ns: Arc<AtomicU64>,
    stop: CancellationToken,
) {
    loop {
        let client = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => client,
                Err(e) => {
                    tracing::warn!(error = %e, "delay relay: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => return,
        };
        let conn_stop = stop.child_token();
        tokio::spawn(relay_connection(
            client,
            target.clone(),
            delay_ns.clone(),
            conn_stop,
        ));
    }
}

async fn relay_connection(
    client: TcpStream,
    target: Target,
    delay_ns: Arc<AtomicU64>,
    stop: CancellationToken,
) {
    let connect = async {
        match &target {
            Target::Addr(a) => TcpStream::connect(a).await,
            Target::Name(n) => TcpStream::connect(n.as_str()).await,
        }
    };
    let upstream = tokio::select! {
        r = connect => match r {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(target = ?target, error = %e, "delay relay: cannot connect to the target; closing the client");
                return;
            }
        },
        _ = stop.cancelled() => return,
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (upstream_read, upstream_write) = upstream.into_split();
    pipe(client_read, upstream_write, delay_ns.clone(), stop.clone());
    pipe(upstream_read, client_write, delay_ns, stop);
}

/// One direction: a reader task stamps chunks with their due time, a writer task writes each
/// at that time. EOF is passed on (write side shut down) once everything before it is written.
fn pipe(
    from: OwnedReadHalf,
    to: OwnedWriteHalf,
    delay_ns: Arc<AtomicU64>,
    stop: CancellationToken,
) {
    let (tx, rx) = mpsc::channel(IN_FLIGHT_CHUNKS);
    let budget = Arc::new(Semaphore::new(IN_FLIGHT_BYTES));
    tokio::spawn(read_side(from, tx, budget, delay_ns, stop.clone()));
    tokio::spawn(write_side(to, rx, stop));
}

type Chunk = (Instant, Bytes, OwnedSemaphorePermit);

async fn read_side(
    mut from: OwnedReadHalf,
    tx: mpsc::Sender<Chunk>,
    budget: Arc<Semaphore>,
    delay_ns: Arc<AtomicU64>,
    stop: CancellationToken,
) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let read = tokio::select! {
            r = from.read(&mut buf) => r,
            _ = stop.cancelled() => return,
        };
        match read {
            // EOF: dropping `tx` lets the writer drain and shut its side down.
            Ok(0) => return,
            Ok(n) => {
                let due = Instant::now() + Duration::from_nanos(delay_ns.load(Ordering::Relaxed));
                let chunk = Bytes::copy_from_slice(&buf[..n]);
                // n <= CHUNK < IN_FLIGHT_BYTES, so the permits always exist.
                let permits = u32::try_from(n.min(IN_FLIGHT_BYTES)).unwrap_or(u32::MAX);
                let permit = tokio::select! {
                    p = budget.clone().acquire_many_owned(permits) => match p {
                        Ok(p) => p,
                        Err(_) => return,
                    },
                    _ = stop.cancelled() => return,
                };
                let sent = tokio::select! {
                    s = tx.send((due, chunk, permit)) => s,
                    _ = stop.cancelled() => return,
                };
                if sent.is_err() {
                    // The writer ended with an error and closed the connection.
                    return;
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "delay relay: read failed; closing the connection");
                stop.cancel();
                return;
            }
        }
    }
}

async fn write_side(
    mut to: OwnedWriteHalf,
    mut rx: mpsc::Receiver<Chunk>,
    stop: CancellationToken,
) {
    loop {
        let next = tokio::select! {
            n = rx.recv() => n,
            _ = stop.cancelled() => return,
        };
        let Some((due, chunk, permit)) = next else {
            // The reader saw EOF and everything before it is written: pass the EOF on.
            let _ = to.shutdown().await;
            return;
        };
        let written = tokio::select! {
            w = async {
                tokio::time::sleep_until(due).await;
                to.write_all(&chunk).await
            } => w,
            _ = stop.cancelled() => return,
        };
        drop(permit);
        if let Err(e) = written {
            tracing::debug!(error = %e, "delay relay: write failed; closing the connection");
            stop.cancel();
            return;
        }
    }
}

/// Parses a delay for the command line: `40ms`, `0.09s`, `1s`, `250us`, or a bare number of
/// milliseconds.
pub fn parse_delay(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (number, scale) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = t.strip_suffix("us") {
        (n, 1e-6)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else {
        (t, 1e-3)
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a delay such as 40ms, 0.09s or 40"))?;
    let ns = (value * scale * 1e9).round();
    if !(0.0..=1e15).contains(&ns) {
        return Err(format!(
            "{text:?}: a delay must be between zero and about 11 days"
        ));
    }
    // In range and rounded just above, so the cast is exact.
    Ok(Duration::from_nanos(ns as u64))
}

#[cfg(test)]
mod tests;
