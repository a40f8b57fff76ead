//! The I/O loop of one session: moves bytes between the client socket, the leased server
//! sockets and the engine's buffers, performs the engine's actions (lease a connection from
//! its pool, give it back), and runs the idle timer, shutdown and the operator's pause (see
//! `gate.rs`). The only place a session awaits; it makes no routing or protocol decision.

use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use super::engine::{Action, Buffers, End, Engine, Env, Slot};
use super::gate::Gate;
use super::Handles;
use crate::clients::{ClientEntry, ClientState, Stop};
use crate::error::{sqlstate, ClientError};
use crate::pool::conn::ServerState;
use crate::pool::{AcquireError, Lease, Pool};
use crate::stream::Stream;

/// Stop reading a side while this much is queued for the other (backpressure).
const HIGH_WATER: usize = 256 * 1024;
/// Bytes reserved before each socket read.
const READ_CHUNK: usize = 16 * 1024;
/// A session quiet this long (nothing in flight, every buffer empty) gives its buffers back;
/// until its peer sends again it holds none (the read waits for readiness first). This is
/// what keeps an idle client at a few KiB (tests/scale.rs).
const SHRINK_AFTER: Duration = Duration::from_secs(1);
/// How long a closing session may spend flushing its last bytes.
const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

type Acquiring = (
    Slot,
    Arc<crate::topology::NodeSpec>,
    Pin<Box<dyn Future<Output = Result<Lease, AcquireError>> + Send>>,
);

/// What one turn of a socket produced.
enum IoEvent {
    Read,
    Wrote,
    Closed(String),
}

/// A socket with its write-side flush state.
struct Sock {
    stream: Stream,
    flush: bool,
}

/// One poll of a socket: write all that is queued (until the socket would block), flush, then
/// read if allowed. A write is reported (`IoEvent::Wrote`) only when `report_writes` says the
/// session's guards depend on it (backpressure, quiescence); otherwise the same poll goes on
/// to read, which saves the session loop a turn per message sent.
fn poll_sock(
    sock: &mut Sock,
    inbuf: &mut BytesMut,
    out: &mut BytesMut,
    io: SockIo,
    cx: &mut Context<'_>,
) -> Poll<IoEvent> {
    let mut wrote = false;
    while !out.is_empty() {
        match Pin::new(&mut sock.stream).poll_write(cx, out) {
            Poll::Ready(Ok(0)) => {
                return Poll::Ready(IoEvent::Closed("peer stopped accepting data".into()))
            }
            Poll::Ready(Ok(n)) => {
                out.advance(n);
                sock.flush = true;
                wrote = true;
            }
            Poll::Ready(Err(e)) => return Poll::Ready(IoEvent::Closed(e.to_string())),
            Poll::Pending => break,
        }
    }
    if out.is_empty() && sock.flush {
        match Pin::new(&mut sock.stream).poll_flush(cx) {
            Poll::Ready(Ok(())) => sock.flush = false,
            Poll::Ready(Err(e)) => return Poll::Ready(IoEvent::Closed(e.to_string())),
            Poll::Pending => {}
        }
    }
    if wrote && io.report_writes {
        return Poll::Ready(IoEvent::Wrote);
    }
    if io.can_read {
        if inbuf.capacity() == 0 {
            // Buffers were given back while idle: allocate only once there is something to read.
            match sock.stream.poll_read_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(IoEvent::Closed(e.to_string())),
                Poll::Pending => return Poll::Pending,
            }
        }
        if inbuf.capacity() - inbuf.len() < READ_CHUNK / 4 {
            inbuf.reserve(READ_CHUNK);
        }
        match tokio_util::io::poll_read_buf(Pin::new(&mut sock.stream), cx, inbuf) {
            Poll::Ready(Ok(0)) => return Poll::Ready(IoEvent::Closed("connection closed".into())),
            Poll::Ready(Ok(_)) => return Poll::Ready(IoEvent::Read),
            Poll::Ready(Err(e)) => return Poll::Ready(IoEvent::Closed(e.to_string())),
            Poll::Pending => {}
        }
    }
    Poll::Pending
}

/// What one poll of a socket may do.
#[derive(Clone, Copy)]
struct SockIo {
    /// Read from it (backpressure says no while the other side is backed up).
    can_read: bool,
    /// End the poll when something was written: a loop guard depends on its output buffer.
    report_writes: bool,
}

/// A leased server connection and its socket, while the engine holds its state.
struct Held {
    lease: Lease,
    sock: Sock,
}

async fn server_io(
    held: &mut Option<Held>,
    inbuf: &mut BytesMut,
    out: &mut BytesMut,
    io: SockIo,
) -> IoEvent {
    match held {
        None => std::future::pending().await,
        Some(h) => std::future::poll_fn(|cx| poll_sock(&mut h.sock, inbuf, out, io, cx)).await,
    }
}

async fn acquired(
    acquiring: &mut Option<Acquiring>,
) -> (
    Slot,
    Arc<crate::topology::NodeSpec>,
    Result<Lease, AcquireError>,
) {
    match acquiring {
        None => std::future::pending().await,
        Some((slot, node, fut)) => {
            let r = fut.await;
            (*slot, node.clone(), r)
        }
    }
}

/// What the session is doing, for the clients registry.
fn state_of(engine: &Engine, quiescent: bool) -> ClientState {
    if quiescent {
        ClientState::Idle
    } else if engine.acquiring.is_some() {
        ClientState::Waiting
    } else if engine.active.is_none()
        && engine.route.txn != crate::protocol::backend::TxnStatus::Idle
    {
        ClientState::IdleInTransaction
    } else {
        ClientState::Active
    }
}

/// Runs the session until it ends; gives every lease back. `entry`: its place in the clients
/// registry, where its state is published.
pub async fn run(
    client: crate::wire::MessageIo<Stream>,
    mut engine: Engine,
    h: &Handles<'_>,
    entry: &ClientEntry,
) -> End {
    // The handshake's write buffer is spent: only the read buffer (with any early bytes) stays.
    let crate::wire::MessageIo { io, rbuf, wbuf } = client;
    drop(wbuf);
    let mut b = Buffers {
        client_in: rbuf,
        ..Buffers::default()
    };
    let mut client = Sock {
        stream: io,
        flush: false,
    };
    let mut servers: [Option<Held>; 2] = [None, None];
    let mut acquiring: Option<Acquiring> = None;
    let mut pools = PoolCache::default();
    let mut views = Views::new(h);
    let idle_timeout = h.topology.load().limits.client_idle_timeout;
    let idle_enabled = !idle_timeout.is_zero();
    // Both timers count from the client's last read, which only records the time: a timer that
    // fires early (the client sent something since it was set) is set again for the rest.
    let mut last_read = Instant::now();
    // The time of the event the loop handled last: what leasing and releasing in the next
    // `perform` go by (one clock read per event, not one per use). Every branch that calls
    // the engine sets it.
    let mut clock = last_read.into_std();
    let mut idle = pin!(tokio::time::sleep_until(last_read + idle_timeout));
    let mut shrink = pin!(tokio::time::sleep_until(last_read + SHRINK_AFTER));
    let mut shrink_due = true;
    let mut stop_seen = Stop::No;
    let mut draining = false;
    let mut gate = Gate::new(entry, h.pauses.of(&engine.cluster.name));
    if !b.client_in.is_empty() && gate.admit(engine.quiescent(&b), &mut b.client_in) {
        with_env_at(h, &mut views, clock, |env| {
            engine.on_client_input(&mut b, env)
        });
    }
    let end = loop {
        perform(
            &mut engine,
            &mut servers,
            &mut acquiring,
            &mut pools,
            &mut b,
            h,
            &mut views,
            clock,
        );
        if let Some(end) = engine.take_end() {
            break end;
        }
        if draining && engine.quiescent(&b) {
            break End::Shutdown;
        }
        let quiescent = engine.quiescent(&b);
        let holding = gate.is_holding();
        gate.publish(if holding {
            ClientState::Paused
        } else {
            state_of(&engine, quiescent)
        });
        // While a batch is held the client is still read (a closed socket is noticed), up to
        // the high-water mark.
        let read_client =
            engine.wants_client_input(&b, HIGH_WATER) && !(holding && gate.kept() >= HIGH_WATER);
        let client_backed_up = b.client_out.len() >= HIGH_WATER;
        let servers_backed_up = b.server_out.iter().map(BytesMut::len).sum::<usize>() >= HIGH_WATER;
        let server_sock = |slot: Slot| SockIo {
            can_read: (!client_backed_up && b.server_in[slot.index()].len() < HIGH_WATER)
                || engine.needs_server_bytes(slot, &b),
            // Reading the client waits on the servers' output; quiescence on an idle server's.
            report_writes: servers_backed_up || engine.settles_when_sent(slot),
        };
        let io0 = server_sock(Slot::Primary);
        let io1 = server_sock(Slot::Replica);
        // The servers are read again once the client's output drains below the mark.
        let client_io = SockIo {
            can_read: read_client,
            report_writes: client_backed_up,
        };
        let partial = engine.has_partial_batch() && b.client_in.is_empty();
        let Buffers {
            client_in,
            client_out,
            server_in: [in0, in1],
            server_out: [out0, out1],
        } = &mut b;
        let [h0, h1] = &mut servers;
        // Biased: servers first, then the client, then timers; the last branch runs only when
        // nothing else is ready (backpressure keeps any side from starving the others).
        tokio::select! {
            biased;
            ev = server_io(h0, in0, out0, io0) => {
                clock = std::time::Instant::now();
                on_server_event(&mut engine, Slot::Primary, ev, &mut b, h, &mut views, clock);
            }
            ev = server_io(h1, in1, out1, io1) => {
                clock = std::time::Instant::now();
                on_server_event(&mut engine, Slot::Replica, ev, &mut b, h, &mut views, clock);
            }
            ev = std::future::poll_fn(|cx| poll_sock(&mut client, client_in, client_out, client_io, cx)) => {
                match ev {
                    IoEvent::Closed(_) => break End::ClientGone,
                    IoEvent::Wrote => {}
                    IoEvent::Read => {
                        let now = Instant::now();
                        last_read = now;
                        clock = now.into_std();
                        if !shrink_due {
                            shrink.as_mut().reset(now + SHRINK_AFTER);
                            shrink_due = true;
                        }
                        if gate.is_holding() {
                            gate.keep(&mut b.client_in);
                        } else if gate.admit(engine.quiescent(&b), &mut b.client_in) {
                            with_env_at(h, &mut views, now.into_std(), |env| engine.on_client_input(&mut b, env));
                        }
                    }
                }
            }
            (slot, node, r) = acquired(&mut acquiring) => {
                acquiring = None;
                clock = std::time::Instant::now();
                match r {
                    Ok(lease) => {
                        if let Some(state) = install(&mut servers[slot.index()], lease) {
                            with_env_at(h, &mut views, clock, |env| engine.on_acquired(slot, state, &mut b, env));
                        }
                    }
                    Err(e) => {
                        if let AcquireError::Connect(c) = &e {
                            if c.suggests_node_failure() {
                                h.hints.cluster(&node.cluster).connect_failed();
                            }
                        }
                        tracing::warn!(error = %e, "no server connection for the session");
                        let err = e.to_client();
                        with_env_at(h, &mut views, clock, |env| engine.on_acquire_failed(slot, err, &mut b, env));
                    }
                }
            }
            stop = std::future::poll_fn(|cx| h.sessions.poll_stop(entry, stop_seen, cx)) => {
                stop_seen = stop;
                if stop == Stop::Now {
                    break End::Shutdown;
                }
                draining = true;
            }
            // PAUSE or RESUME of the cluster while a batch was held.
            () = gate.changed(), if holding => {
                if gate.admit(engine.quiescent(&b), &mut b.client_in) {
                    clock = std::time::Instant::now();
                    with_env_at(h, &mut views, clock, |env| engine.on_client_input(&mut b, env));
                }
            }
            _ = idle.as_mut(), if idle_enabled && quiescent && !holding => {
                let due = last_read + idle_timeout;
                if Instant::now() >= due {
                    break End::IdleTimeout;
                }
                idle.as_mut().reset(due);
            }
            _ = shrink.as_mut(), if shrink_due && quiescent && !partial => {
                let due = last_read + SHRINK_AFTER;
                if Instant::now() >= due {
                    shrink_due = false;
                    engine.forget_shapes();
                    give_back_buffers(&mut b);
                } else {
                    shrink.as_mut().reset(due);
                }
            }
            // The client went quiet in the middle of a batch (pipeline mode without Sync).
            _ = std::future::ready(()), if partial => {
                clock = std::time::Instant::now();
                with_env_at(h, &mut views, clock, |env| engine.flush_partial(&mut b, env));
            }
        }
        for kind in engine.take_errors() {
            h.metrics.error(kind);
        }
    };
    for kind in engine.take_errors() {
        h.metrics.error(kind);
    }
    count_end(&end, h);
    engine.finish(&mut b);
    perform(
        &mut engine,
        &mut servers,
        &mut acquiring,
        &mut pools,
        &mut b,
        h,
        &mut views,
        std::time::Instant::now(),
    );
    close_client(&end, &mut client.stream, &mut b.client_out).await;
    end
}

/// Frees every empty buffer of a quiet session (their capacity stays otherwise: 16 KiB and
/// more per socket that has been read).
fn give_back_buffers(b: &mut Buffers) {
    let Buffers {
        client_in,
        client_out,
        server_in,
        server_out,
    } = b;
    let all = [client_in, client_out]
        .into_iter()
        .chain(server_in.iter_mut())
        .chain(server_out.iter_mut());
    for buf in all {
        if buf.is_empty() {
            *buf = BytesMut::new();
        }
    }
    crate::memory::want_trim();
}

/// The shared topology and health as a session reads them: through caches, so that a read
/// is a pointer comparison while neither changed (a plain `ArcSwap::load` takes a slot of
/// arc-swap's debt list, several times per transaction).
struct Views<'s> {
    topology: arc_swap::Cache<
        &'s arc_swap::ArcSwap<crate::topology::Topology>,
        Arc<crate::topology::Topology>,
    >,
    health:
        arc_swap::Cache<&'s arc_swap::ArcSwap<crate::health::Health>, Arc<crate::health::Health>>,
}

impl<'s> Views<'s> {
    fn new(h: &Handles<'s>) -> Views<'s> {
        Views {
            topology: arc_swap::Cache::new(h.topology),
            health: arc_swap::Cache::new(h.health),
        }
    }
}

/// Runs `f` with the shared state as of now; `now` is the caller's clock reading.
fn with_env_at<R>(
    h: &Handles,
    v: &mut Views,
    now: std::time::Instant,
    f: impl FnOnce(&Env) -> R,
) -> R {
    let topology = v.topology.load();
    let health = v.health.load();
    let env = Env {
        topology,
        health,
        metrics: h.metrics,
        learned: h.learned,
        scopes: h.scopes,
        schema_epoch: h.schema_epoch,
        catalogs: h.catalogs,
        hints: h.hints,
        now,
    };
    f(&env)
}

fn on_server_event(
    engine: &mut Engine,
    slot: Slot,
    ev: IoEvent,
    b: &mut Buffers,
    h: &Handles,
    v: &mut Views,
    now: std::time::Instant,
) {
    match ev {
        IoEvent::Read => with_env_at(h, v, now, |env| engine.on_server_input(slot, b, env)),
        IoEvent::Wrote => {}
        IoEvent::Closed(reason) => with_env_at(h, v, now, |env| {
            engine.on_server_closed(slot, reason, b, env)
        }),
    }
}

/// The pools this session has used, by node (saves the shared map's lock per transaction).
#[derive(Default)]
struct PoolCache(Vec<(usize, Arc<Pool>)>);

impl PoolCache {
    fn get(
        &mut self,
        node: &Arc<crate::topology::NodeSpec>,
        engine: &Engine,
        h: &Handles,
    ) -> Arc<Pool> {
        let key = Arc::as_ptr(node) as usize;
        if let Some((_, p)) = self.0.iter().find(|(k, p)| *k == key && !p.is_retired()) {
            return p.clone();
        }
        let pool = h.pools.get(node, &engine.user, &engine.cluster.pooling);
        self.0.retain(|(k, _)| *k != key);
        self.0.push((key, pool.clone()));
        pool
    }
}

/// Takes a lease into the session: its socket stays with the driver; its state is returned
/// for the engine (`on_acquired`).
fn install(held: &mut Option<Held>, mut lease: Lease) -> Option<Box<ServerState>> {
    let state = lease.conn.state.take()?;
    let sock = Sock {
        stream: std::mem::replace(&mut lease.conn.stream, Stream::Detached),
        flush: false,
    };
    // An idle connection is handed over between messages: nothing unread.
    lease.conn.rbuf.clear();
    *held = Some(Held { lease, sock });
    Some(state)
}

/// Carries out what the engine asked for; `now` is the time of the event that led to it.
#[allow(clippy::too_many_arguments)]
fn perform(
    engine: &mut Engine,
    servers: &mut [Option<Held>; 2],
    acquiring: &mut Option<Acquiring>,
    cache: &mut PoolCache,
    b: &mut Buffers,
    h: &Handles,
    v: &mut Views,
    now: std::time::Instant,
) {
    while let Some(action) = engine.next_action() {
        match action {
            Action::Acquire { slot, node } => {
                let pool = cache.get(&node, engine, h);
                if let Some(lease) = pool.try_acquire_now(now) {
                    if let Some(state) = install(&mut servers[slot.index()], lease) {
                        with_env_at(h, v, now, |env| engine.on_acquired(slot, state, b, env));
                    }
                    continue;
                }
                let options = crate::backend::ConnectOptions::from(&h.topology.load().limits);
                let fut = Box::pin(async move { pool.acquire(options).await });
                *acquiring = Some((slot, node, fut));
            }
            Action::Release { slot, state, reuse } => {
                if let Some(held) = servers[slot.index()].take() {
                    let Held { mut lease, sock } = held;
                    lease.conn.stream = sock.stream;
                    lease.conn.state = Some(state);
                    let pool = lease.pool.clone();
                    pool.release(lease, reuse, now);
                }
                b.server_in[slot.index()].clear();
                b.server_out[slot.index()].clear();
            }
            Action::Dedicate { slot } => {
                if let Some(held) = servers[slot.index()].as_mut() {
                    held.lease.set_pinned();
                }
            }
        }
    }
}

fn count_end(end: &End, h: &Handles) {
    match end {
        End::ClientError(e) => h.metrics.error(e.kind),
        End::BackendGone(_) => h.metrics.error(crate::error::ErrorKind::BackendLost),
        End::ClientTerminated | End::ClientGone | End::Shutdown | End::IdleTimeout => {}
    }
}

/// Tells the client why it is closed (when it is still there) and closes its socket.
async fn close_client(end: &End, client: &mut Stream, out: &mut BytesMut) {
    match end {
        End::ClientError(e) => e.encode(out),
        End::Shutdown => ClientError::fatal(
            sqlstate::ADMIN_SHUTDOWN,
            "terminating connection because pgmeridian is shutting down",
        )
        .encode(out),
        End::IdleTimeout => ClientError::fatal(
            sqlstate::IDLE_SESSION_TIMEOUT,
            "terminating connection due to idle-session timeout",
        )
        .encode(out),
        End::ClientGone | End::ClientTerminated | End::BackendGone(_) => {}
    }
    let bye = async {
        if !matches!(end, End::ClientGone) && !out.is_empty() {
            let _ = client.write_all(out).await;
        }
        let _ = client.shutdown().await;
    };
    let _ = tokio::time::timeout(CLOSE_FLUSH_TIMEOUT, bye).await;
}
