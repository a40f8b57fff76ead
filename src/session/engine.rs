//! The session engine, sans I/O: client bytes and server bytes go in, bytes for the client and
//! for leased server connections come out, plus actions for the driver (lease a connection,
//! give one back). It owns everything that belongs to the session rather than to a connection:
//! batching, routing, transaction and read-your-writes state, settings, prepared statements,
//! the safety net. It never touches a socket or a clock (time comes in `Env`), so the whole
//! protocol logic is tested by feeding it byte sequences (`engine/tests.rs`).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;

use super::batch::{Batch, LearnedWrites, Settings, Statements};
use crate::cancel::CancelHandle;
use crate::classify::ClientEncoding;
use crate::config::PoolMode;
use crate::error::ClientError;
use crate::geo::ClientLocation;
use crate::health::Health;
use crate::metrics::Metrics;
use crate::pool::ServerState;
use crate::route::{Reason, SessionRoute};
use crate::topology::{ClusterSpec, NodeSpec, Topology, UserSpec};

mod answers;
mod causality;
mod dispatch;
pub(crate) mod expect;
mod local;
mod observe;
mod send;
mod spare;
#[cfg(test)]
mod tests;

use expect::{Owed, Retry};

/// An unfinished extended-protocol batch is forwarded once it grows past this.
const BATCH_FORWARD_BYTES: usize = 64 * 1024;
/// Replica answers held back while a retry on the primary is still possible; past this much
/// (rows are flowing) they are released and the statement is committed to the replica.
const TENTATIVE_LIMIT: usize = 64 * 1024;
/// Server messages of the inspected kinds larger than this pass uninspected.
pub const INSPECT_LIMIT: usize = 1 << 20;
/// Most named prepared statements one session may keep.
pub const MAX_SESSION_STATEMENTS: usize = 10_000;

/// Why a session ended.
#[derive(Debug)]
pub enum End {
    ClientTerminated,
    ClientGone,
    /// The client broke the protocol or a limit; it has been told.
    ClientError(ClientError),
    /// A server connection the session needed ended; the client has been told.
    BackendGone(String),
    Shutdown,
    IdleTimeout,
}

/// The two server connections a session may hold at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Slot {
    Primary,
    Replica,
}

impl Slot {
    pub const ALL: [Slot; 2] = [Slot::Primary, Slot::Replica];

    pub fn index(self) -> usize {
        match self {
            Slot::Primary => 0,
            Slot::Replica => 1,
        }
    }

    /// The metric label for what this slot connects to.
    pub fn role(self) -> crate::metrics::TargetRole {
        match self {
            Slot::Primary => crate::metrics::TargetRole::Primary,
            Slot::Replica => crate::metrics::TargetRole::Replica,
        }
    }
}

/// What the driver must do for the engine.
#[derive(Debug)]
pub enum Action {
    /// Lease a connection to `node` for `slot`; answer with `on_acquired` or `on_acquire_failed`.
    Acquire { slot: Slot, node: Arc<NodeSpec> },
    /// Give the slot's connection back to its pool (`reuse`: it is clean), or close it.
    Release {
        slot: Slot,
        state: Box<ServerState>,
        reuse: bool,
    },
    /// The slot's connection is the session's for life (a feature that cannot move).
    Dedicate { slot: Slot },
}

/// The bytes the engine reads and writes; the driver moves them to and from sockets.
#[derive(Default)]
pub struct Buffers {
    pub client_in: BytesMut,
    pub client_out: BytesMut,
    /// Per slot: bytes read from, and bytes to write to, the leased connection.
    pub server_in: [BytesMut; 2],
    pub server_out: [BytesMut; 2],
}

/// The shared state an engine call may read: loaded once per call by the driver.
pub struct Env<'a> {
    /// The live topology (a reload is followed between transactions).
    pub topology: &'a Arc<Topology>,
    pub health: &'a Arc<Health>,
    pub metrics: &'a Metrics,
    pub learned: &'a LearnedWrites,
    /// Positions shared by read-your-writes scopes.
    pub scopes: &'a crate::causal::Scopes,
    /// Bumped whenever a session runs DDL: server statements prepared before are not reused.
    pub schema_epoch: &'a std::sync::atomic::AtomicU64,
    /// Each cluster's volatile functions.
    pub catalogs: &'a crate::catalog::Catalogs,
    /// What sessions tell the probe loops.
    pub hints: &'a crate::health::hints::ProbeHints,
    pub now: Instant,
}

/// A leased connection as the engine sees it.
pub(crate) struct Server {
    pub(crate) state: Box<ServerState>,
    /// Which replica it is (`None`: the primary slot).
    pub(crate) replica: Option<usize>,
    pub(crate) owed: Owed,
    /// A batch went out without its Sync (after Flush): the next messages belong here.
    pub(crate) open_batch: bool,
    /// Bytes of a streamed (uninspected) message still to come, and where they go.
    pub(crate) remaining: usize,
    pub(crate) remaining_sink: expect::Sink,
    /// An inspected message is incomplete: read this many bytes even past the high-water mark.
    pub(crate) need: usize,
    /// A retryable batch is in flight alone: its answers are held here until it ends.
    pub(crate) retry: Option<Retry>,
    pub(crate) tentative: BytesMut,
    /// The last ErrorResponse forwarded to the client was FATAL: it knows why this closes.
    pub(crate) sent_fatal: bool,
    /// A FATAL the server sent while nothing was owed: it is about to close, for this reason.
    pub(crate) farewell: Option<String>,
    /// Its state is not what the proxy believes (a replay failed, an unexpected message):
    /// closed instead of reused.
    pub(crate) dirty: bool,
    /// Dedicated to this session for life.
    pub(crate) dedicated: bool,
    /// The client's ReadyForQuery after a commit, held until the proxy's position query
    /// behind it answers (so the causal token reaches the client before it).
    pub(crate) held_ready: Option<BytesMut>,
}

impl Server {
    fn new(state: Box<ServerState>, replica: Option<usize>) -> Server {
        let (queue, tentative) = spare::take();
        Server {
            state,
            replica,
            owed: Owed {
                queue,
                ..Owed::default()
            },
            open_batch: false,
            remaining: 0,
            remaining_sink: expect::Sink::Client,
            need: 0,
            retry: None,
            tentative,
            sent_fatal: false,
            farewell: None,
            dirty: false,
            dedicated: false,
            held_ready: None,
        }
    }

    /// Nothing in flight: no answer owed, nothing unsent, between messages.
    pub(crate) fn idle(&self, out: &BytesMut) -> bool {
        self.owed.is_empty()
            && !self.open_batch
            && self.remaining == 0
            && out.is_empty()
            && self.held_ready.is_none()
    }
}

/// A complete batch that cannot go out yet. (One per session at most: its size is no concern.)
#[allow(clippy::large_enum_variant)]
pub(crate) enum Held {
    /// Forward to `slot` once the other connection is idle and this one is leased.
    Forward {
        batch: Batch,
        slot: Slot,
        reason: Reason,
        replica: Option<usize>,
        /// Wait on the replica until it has replayed this WAL position before sending.
        wait: Option<Wait>,
    },
    /// Answer in the proxy once nothing is in flight.
    Answer { reply: LocalReply },
}

pub(crate) enum LocalReply {
    /// A statement for the proxy itself (route hint, causal token).
    Run {
        batch: Box<Batch>,
        statement: local::ProxyStatement,
    },
    /// A batch that cannot be served now (refused read, no server connection).
    Refuse(ClientError),
    /// `DEALLOCATE name` of a statement only the proxy holds.
    Deallocate(String),
    /// `DEALLOCATE ALL` when every statement lives only in the proxy.
    DeallocateAll,
    /// A batch that only syncs, flushes or closes statements: nothing for a server to do
    /// (ReadyForQuery only if it ends with Sync).
    Inert(Batch),
    /// An error in the middle of an extended batch: no ReadyForQuery until its Sync.
    Error(ClientError),
    /// The Sync of a batch skipped after an error: ReadyForQuery only.
    Ready,
}

/// A read waiting for its replica to replay a position (`routing.causal_wait_max`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Wait {
    pub(crate) lsn: u64,
    /// The wait query is out on the replica.
    pub(crate) sent: bool,
}

/// What a session starts with.
pub struct Start {
    pub cluster: Arc<ClusterSpec>,
    pub topology: Arc<Topology>,
    pub user: Arc<UserSpec>,
    pub location: ClientLocation,
    pub cancel: CancelHandle,
    /// Settings from the startup packet (application_name, options `-c`, …).
    pub settings: Settings,
    /// The client's address (after PROXY protocol): the `client_address` scope.
    pub client_ip: std::net::IpAddr,
    /// A causal token given at startup (`pgmeridian.causal_token`).
    pub causal_token: Option<crate::causal::Token>,
    /// The `client_encoding` the client was greeted with.
    pub client_encoding: ClientEncoding,
}

/// One session's protocol state.
pub struct Engine {
    pub(crate) topology: Arc<Topology>,
    pub(crate) cluster: Arc<ClusterSpec>,
    pub(crate) user: Arc<UserSpec>,
    pub(crate) location: ClientLocation,
    /// Distances from `location` to `cluster`'s replicas (`route::replica_distances`): made at
    /// the first decision after the cluster spec was set, empty until then.
    pub(crate) replica_km: Vec<f64>,
    pub(crate) cancel: CancelHandle,
    pub(crate) mode: PoolMode,
    pub(crate) max_message: usize,
    pub(crate) servers: [Option<Server>; 2],
    /// A lease asked for and not answered yet.
    pub(crate) acquiring: Option<Slot>,
    /// The connection with work in flight; batches for the other one wait.
    pub(crate) active: Option<Slot>,
    pub(crate) held: Option<Held>,
    /// An error ended the extended batch being received: its messages are skipped until its
    /// Sync, which gets ReadyForQuery (as PostgreSQL does).
    pub(crate) skip_to_sync: bool,
    /// A batch that was held when a retry jumped ahead of it.
    pub(crate) held_after_retry: Option<Held>,
    pub(crate) batch: Batch,
    pub(crate) statements: Statements,
    pub(crate) settings: Settings,
    pub(crate) route: SessionRoute,
    /// The open transaction may have written (marks read-your-writes at its end).
    pub(crate) txn_wrote: bool,
    /// The batch in flight may open a transaction: pipelined batches behind it follow it.
    pub(crate) txn_may_be_opening: bool,
    /// The open transaction ran DDL (the schema epoch moves again when it ends).
    pub(crate) txn_changed_schema: bool,
    pub(crate) actions: VecDeque<Action>,
    pub(crate) end: Option<End>,
    pub(crate) obs: observe::Obs,
    /// What this session's own writes require of its reads.
    pub(crate) own: crate::route::Requirement,
    /// What the causal tokens it was given require.
    pub(crate) token_req: crate::route::Requirement,
    /// A token given before the cluster's identity was known: checked at the next decision.
    pub(crate) pending_token: Option<crate::causal::Token>,
    /// Its read-your-writes scope beyond itself, if any.
    pub(crate) scope: Option<crate::causal::ScopeKey>,
    /// The token last reported to the client (ParameterStatus), to report only changes.
    pub(crate) reported_token: Option<String>,
    /// The last decision said to wait on its replica for this position.
    pub(crate) waiting_for: Option<u64>,
    /// The write functions with the cluster's catalog, as of (catalogs version, topology).
    pub(crate) functions: Option<(u64, Arc<Topology>, Option<crate::classify::WriteFunctions>)>,
    /// Its cluster's probe hints: (cluster name, hints).
    pub(crate) probe_hint: Option<(Arc<str>, Arc<crate::health::hints::ClusterHint>)>,
    /// How the client's SQL bytes form characters, from the last `client_encoding` reported.
    pub(crate) client_encoding: ClientEncoding,
    /// Bumped when the write functions or the client encoding change (`batch::Ctx::epoch`).
    pub(crate) classify_epoch: u64,
    /// NoticeResponses owed to the client before the next batch's answers.
    pub(crate) notices: Vec<String>,
    /// The last health snapshot seen, for this cluster: (snapshot, spec, aligned state).
    #[allow(clippy::type_complexity)]
    pub(crate) health_cache: Option<(
        Arc<Health>,
        Arc<ClusterSpec>,
        Option<Arc<crate::health::ClusterHealth>>,
    )>,
}

impl Engine {
    pub fn new(start: Start) -> Engine {
        let scope = match start.topology.routing.read_your_writes_scope {
            crate::config::RywScope::Session => None,
            crate::config::RywScope::ClientAddress => Some(crate::causal::ScopeKey::Address {
                cluster: start.cluster.name.clone(),
                ip: start.client_ip,
            }),
            crate::config::RywScope::User => Some(crate::causal::ScopeKey::User {
                cluster: start.cluster.name.clone(),
                user: start.user.name.clone(),
            }),
        };
        let mut engine = Engine {
            mode: start.cluster.pooling.mode,
            max_message: start.topology.limits.max_message_bytes,
            topology: start.topology,
            cluster: start.cluster,
            user: start.user,
            location: start.location,
            replica_km: Vec::new(),
            cancel: start.cancel,
            servers: [None, None],
            acquiring: None,
            active: None,
            held: None,
            skip_to_sync: false,
            held_after_retry: None,
            batch: Batch::default(),
            statements: Statements::default(),
            settings: start.settings,
            route: SessionRoute::default(),
            txn_wrote: false,
            txn_may_be_opening: false,
            txn_changed_schema: false,
            actions: VecDeque::new(),
            end: None,
            obs: observe::Obs::default(),
            health_cache: None,
            own: crate::route::Requirement::NONE,
            token_req: crate::route::Requirement::NONE,
            pending_token: start.causal_token,
            scope: None,
            reported_token: None,
            waiting_for: None,
            client_encoding: start.client_encoding,
            classify_epoch: 0,
            functions: None,
            probe_hint: None,
            notices: Vec::new(),
        };
        engine.scope = scope;
        engine
    }

    /// The session went quiet: the query shapes it kept go.
    pub fn forget_shapes(&mut self) {
        self.statements.forget_shapes();
    }

    /// The next thing the driver must do.
    pub fn next_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Why the session must end, once it must.
    pub fn ended(&self) -> Option<&End> {
        self.end.as_ref()
    }

    pub fn take_end(&mut self) -> Option<End> {
        self.end.take()
    }

    /// The client's bytes may be read (no batch waits to go out, servers are not backed up).
    pub fn wants_client_input(&self, b: &Buffers, high_water: usize) -> bool {
        // Answers the proxy gives itself (a Sync, its own statements) also wait for a client
        // that does not read them, as PostgreSQL's would.
        self.held.is_none()
            && self.end.is_none()
            && b.client_out.len() < high_water
            && b.server_out.iter().map(BytesMut::len).sum::<usize>() < high_water
    }

    /// The connection in `slot` owes the client nothing now: every answer it was asked for
    /// has come and gone out (its batch may still be open, waiting for the client's rest).
    pub(crate) fn owes_nothing(&self, slot: Slot, b: &Buffers) -> bool {
        self.server(slot).is_none_or(|s| {
            s.owed.is_empty()
                && s.remaining == 0
                && s.held_ready.is_none()
                && b.server_out[slot.index()].is_empty()
        })
    }

    /// The slot's server bytes must be read even with the client backed up: a message the
    /// engine has to see whole is incomplete.
    pub fn needs_server_bytes(&self, slot: Slot, b: &Buffers) -> bool {
        self.server(slot)
            .is_some_and(|s| s.need > b.server_in[slot.index()].len())
    }

    /// The slot's connection has nothing in flight but its unsent output: once that is written,
    /// the session may be quiescent (the driver re-checks its guards then).
    pub fn settles_when_sent(&self, slot: Slot) -> bool {
        self.server(slot).is_some_and(|s| s.idle(&BytesMut::new()))
    }

    /// Nothing in flight and no transaction open: the session may be closed or moved.
    pub fn quiescent(&self, b: &Buffers) -> bool {
        self.route.txn == crate::protocol::backend::TxnStatus::Idle
            && self.active.is_none()
            && self.acquiring.is_none()
            && self.held.is_none()
            && self.batch.is_empty()
            && Slot::ALL.iter().all(|&s| {
                self.server(s)
                    .is_none_or(|srv| srv.idle(&b.server_out[s.index()]))
            })
    }

    /// Whether a lease is held for `slot`.
    pub fn holds(&self, slot: Slot) -> bool {
        self.servers[slot.index()].is_some()
    }

    pub(crate) fn server(&self, slot: Slot) -> Option<&Server> {
        self.servers[slot.index()].as_ref()
    }

    pub(crate) fn server_mut(&mut self, slot: Slot) -> Option<&mut Server> {
        self.servers[slot.index()].as_mut()
    }

    /// The session is over: every lease goes back, clean ones for reuse.
    pub fn finish(&mut self, b: &mut Buffers) {
        for slot in Slot::ALL {
            if let Some(server) = self.servers[slot.index()].take() {
                let cancelled = self
                    .cancel
                    .release_target(&server.state.node, server.state.pid);
                let clean = !cancelled
                    && server.idle(&b.server_out[slot.index()])
                    && b.server_in[slot.index()].is_empty()
                    && self.route.txn == crate::protocol::backend::TxnStatus::Idle
                    && !server.dedicated
                    && !server.dirty
                    && server.farewell.is_none();
                self.actions.push_back(Action::Release {
                    slot,
                    state: server.state,
                    reuse: clean,
                });
                b.server_in[slot.index()].clear();
                b.server_out[slot.index()].clear();
            }
        }
        self.cancel.clear_target();
    }
}
