//! Table tests of the engine without PostgreSQL: client messages go in as bytes, leases are
//! granted by hand, server answers are written as a real server would, and what reaches each
//! side is read back message by message.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};

use super::*;
use crate::cancel::CancelRegistry;
use crate::config::Config;
use crate::geo::{ClientLocation, GeoSource};
use crate::health::{ClusterHealth, NodeHealth};
use crate::protocol::frame;

mod causal;
mod fuzz;
mod partial;
mod pipelines;
mod routing;
mod safety;
mod statements;

pub(super) const YAML: &str = "listen: 127.0.0.1:0
region: us-east
regions:
  us-east: { lat: 39.0, lon: -77.5 }
users:
  - { name: app, password: x }
clusters:
  app:
    primary: { name: p, host: 127.0.0.1, port: 5432, region: us-east, tls: disable }
    replicas:
      - { name: r, host: 127.0.0.1, port: 5433, region: us-east, tls: disable }
";

/// One message on the wire.
pub(super) fn msg(tag: u8, body: &[u8]) -> Bytes {
    let mut m = BytesMut::new();
    m.put_u8(tag);
    m.put_u32(body.len() as u32 + 4);
    m.put_slice(body);
    m.freeze()
}

pub(super) fn cstr(parts: &[&[u8]]) -> Vec<u8> {
    let mut v = Vec::new();
    for p in parts {
        v.extend_from_slice(p);
        v.push(0);
    }
    v
}

pub(super) fn query(sql: &str) -> Bytes {
    msg(b'Q', &cstr(&[sql.as_bytes()]))
}
pub(super) fn parse(name: &str, sql: &str) -> Bytes {
    let mut b = cstr(&[name.as_bytes(), sql.as_bytes()]);
    b.extend_from_slice(&[0, 0]);
    msg(b'P', &b)
}
pub(super) fn bind(stmt: &str) -> Bytes {
    let mut b = cstr(&[b"", stmt.as_bytes()]);
    b.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    msg(b'B', &b)
}
pub(super) fn describe_stmt(name: &str) -> Bytes {
    let mut b = vec![b'S'];
    b.extend(cstr(&[name.as_bytes()]));
    msg(b'D', &b)
}
pub(super) fn close_stmt(name: &str) -> Bytes {
    let mut b = vec![b'S'];
    b.extend(cstr(&[name.as_bytes()]));
    msg(b'C', &b)
}
pub(super) fn execute() -> Bytes {
    msg(b'E', &[0, 0, 0, 0, 0])
}
pub(super) fn sync() -> Bytes {
    msg(b'S', b"")
}
pub(super) fn flush() -> Bytes {
    msg(b'H', b"")
}

/// Server messages.
pub(super) fn ready(status: u8) -> Bytes {
    msg(b'Z', &[status])
}
pub(super) fn complete(tag: &str) -> Bytes {
    msg(b'C', &cstr(&[tag.as_bytes()]))
}
pub(super) fn row(v: &str) -> Bytes {
    let mut b = vec![0, 1];
    b.extend_from_slice(&(v.len() as i32).to_be_bytes());
    b.extend_from_slice(v.as_bytes());
    msg(b'D', &b)
}
pub(super) fn error(code: &str, message: &str) -> Bytes {
    let mut b = BytesMut::new();
    crate::protocol::encode::error_response(&mut b, "ERROR", code, message, None, None);
    b.freeze()
}
/// The answer to the proxy's `SELECT pg_current_wal_insert_lsn()` behind a commit.
pub(super) fn position(lsn: &str) -> [Bytes; 4] {
    [
        msg(
            b'T',
            b"\0\x01pg_current_wal_insert_lsn\0\0\0\0\0\0\0\0\0\x0c\xdc\0\x08\xff\xff\xff\xff\0\0",
        ),
        row(lsn),
        complete("SELECT 1"),
        ready(b'I'),
    ]
}

/// `answer` followed by the answer to the position query behind it.
pub(super) fn with_position(answer: &[Bytes], lsn: &str) -> Vec<Bytes> {
    let mut v = answer.to_vec();
    v.extend(position(lsn));
    v
}

pub(super) fn parse_complete() -> Bytes {
    msg(b'1', b"")
}
pub(super) fn bind_complete() -> Bytes {
    msg(b'2', b"")
}

/// One message read back: its tag and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Seen {
    pub tag: char,
    pub body: Vec<u8>,
}

impl Seen {
    /// The NUL-terminated strings of the body (names, SQL, command tags).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).replace('\0', "|")
    }
}

pub(super) fn split(buf: &mut BytesMut) -> Vec<Seen> {
    let mut out = Vec::new();
    while let Some(m) = frame::split_message(buf, 1 << 30).unwrap() {
        out.push(Seen {
            tag: m[0] as char,
            body: frame::body(&m).to_vec(),
        });
    }
    assert!(buf.is_empty(), "a partial message was left: {buf:?}");
    out
}

pub(super) fn tags(seen: &[Seen]) -> String {
    seen.iter().map(|s| s.tag).collect()
}

pub(super) struct Harness {
    pub engine: Engine,
    pub b: Buffers,
    pub topology: Arc<Topology>,
    pub health: Arc<Health>,
    pub metrics: Metrics,
    pub learned: LearnedWrites,
    pub epoch: std::sync::atomic::AtomicU64,
    pub catalogs: crate::catalog::Catalogs,
    pub hints: crate::health::hints::ProbeHints,
    pub scopes: crate::causal::Scopes,
    pub cancels: Arc<CancelRegistry>,
    pub cancel: (i32, i32),
    pub now: Instant,
    /// Actions seen but not yet looked at.
    pub pending: Vec<Action>,
    /// What each server was sent (the driver's writes), not yet looked at.
    pub sent: [BytesMut; 2],
    next_pid: i32,
}

impl Harness {
    pub fn new() -> Harness {
        Harness::with(YAML, "")
    }

    /// A session over `yaml` with `extra` appended at top level; the primary and the replica
    /// are up and the replica is caught up.
    pub fn with(yaml: &str, extra: &str) -> Harness {
        let config = Config::from_yaml(&format!("{yaml}{extra}"), &|_| None).unwrap();
        let topology = Arc::new(Topology::build(&config).unwrap_or_else(|_| panic!("topology")));
        let cluster = topology.clusters["app"].clone();
        let mut health = Health::default();
        let node = |rec| NodeHealth {
            up: true,
            in_recovery: Some(rec),
            lsn: Some(100),
            lag: Some(Duration::ZERO),
            lag_bytes: Some(0),
            rtt: Some(Duration::from_micros(300)),
            ..Default::default()
        };
        health.clusters.insert(
            "app".into(),
            Arc::new(ClusterHealth {
                primary: node(false),
                replicas: vec![node(true)],
                primary_samples: vec![],
                keys: vec![],
            }),
        );
        let cancels = Arc::new(CancelRegistry::default());
        let handle = cancels.register();
        let cancel = (handle.pid, handle.key);
        let engine = Engine::new(Start {
            user: topology.users["app"].clone(),
            location: ClientLocation {
                at: topology.location,
                source: GeoSource::ProxyRegion,
            },
            cancel: handle,
            settings: Settings::default(),
            client_ip: std::net::Ipv4Addr::LOCALHOST.into(),
            causal_token: None,
            client_encoding: Default::default(),
            topology: topology.clone(),
            cluster,
        });
        Harness {
            engine,
            b: Buffers::default(),
            topology,
            health: Arc::new(health),
            metrics: Metrics::new(),
            learned: LearnedWrites::default(),
            epoch: Default::default(),
            catalogs: Default::default(),
            hints: Default::default(),
            scopes: Default::default(),
            cancels,
            cancel,
            now: Instant::now(),
            pending: Vec::new(),
            sent: Default::default(),
            next_pid: 1000,
        }
    }

    fn run(&mut self, f: impl FnOnce(&mut Engine, &mut Buffers, &Env)) {
        let env = Env {
            topology: &self.topology,
            health: &self.health,
            metrics: &self.metrics,
            learned: &self.learned,
            schema_epoch: &self.epoch,
            catalogs: &self.catalogs,
            hints: &self.hints,
            scopes: &self.scopes,
            now: self.now,
        };
        f(&mut self.engine, &mut self.b, &env);
        while let Some(a) = self.engine.next_action() {
            if let Action::Release { slot, .. } = &a {
                // What was queued for a connection given back never reaches it.
                self.sent[slot.index()].clear();
            }
            self.pending.push(a);
        }
        // The driver writes whatever is queued for the servers at once.
        for i in 0..2 {
            let out = self.b.server_out[i].split();
            self.sent[i].unsplit(out);
        }
    }

    /// The client sends these messages.
    pub fn client(&mut self, msgs: &[Bytes]) {
        for m in msgs {
            self.b.client_in.extend_from_slice(m);
        }
        self.run(|e, b, env| e.on_client_input(b, env));
    }

    /// The engine asked for a lease for `slot`: grant a fresh server connection (or `state`).
    pub fn grant(&mut self, slot: Slot) -> i32 {
        let node = self.take_acquire(slot);
        self.next_pid += 1;
        let pid = self.next_pid;
        let state = ServerState::new(node, pid, 7);
        self.grant_state(slot, state);
        pid
    }

    pub fn grant_state(&mut self, slot: Slot, state: ServerState) {
        self.run(|e, b, env| e.on_acquired(slot, Box::new(state), b, env));
    }

    /// The Acquire action for `slot` (panics if there is none).
    pub fn take_acquire(&mut self, slot: Slot) -> Arc<NodeSpec> {
        let i = self
            .pending
            .iter()
            .position(|a| matches!(a, Action::Acquire { slot: s, .. } if *s == slot))
            .unwrap_or_else(|| panic!("no Acquire for {slot:?}; actions: {:?}", self.pending));
        match self.pending.remove(i) {
            Action::Acquire { node, .. } => node,
            _ => unreachable!(),
        }
    }

    /// The Release action for `slot`: (its state, reuse).
    pub fn take_release(&mut self, slot: Slot) -> (Box<ServerState>, bool) {
        let i = self
            .pending
            .iter()
            .position(|a| matches!(a, Action::Release { slot: s, .. } if *s == slot))
            .unwrap_or_else(|| panic!("no Release for {slot:?}; actions: {:?}", self.pending));
        match self.pending.remove(i) {
            Action::Release { state, reuse, .. } => (state, reuse),
            _ => unreachable!(),
        }
    }

    pub fn no_actions(&self) {
        assert!(
            self.pending.is_empty(),
            "unexpected actions: {:?}",
            self.pending
        );
    }

    /// What the server of `slot` was sent since the last look.
    pub fn server_got(&mut self, slot: Slot) -> Vec<Seen> {
        split(&mut self.sent[slot.index()])
    }

    /// The server of `slot` answers with these messages.
    pub fn server(&mut self, slot: Slot, msgs: &[Bytes]) {
        for m in msgs {
            self.b.server_in[slot.index()].extend_from_slice(m);
        }
        self.run(|e, b, env| e.on_server_input(slot, b, env));
    }

    /// The server answers one byte at a time (every split point).
    pub fn server_trickle(&mut self, slot: Slot, msgs: &[Bytes]) {
        let all: Vec<u8> = msgs.iter().flat_map(|m| m.to_vec()).collect();
        for byte in all {
            self.b.server_in[slot.index()].put_u8(byte);
            self.run(|e, b, env| e.on_server_input(slot, b, env));
        }
    }

    pub fn server_closes(&mut self, slot: Slot) {
        self.run(|e, b, env| e.on_server_closed(slot, "gone".into(), b, env));
    }

    /// What the client received since the last look.
    pub fn client_got(&mut self) -> Vec<Seen> {
        split(&mut self.b.client_out)
    }
}
