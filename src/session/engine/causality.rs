//! The session's read-your-writes requirement from its three sources: its own writes (the exact
//! commit position the proxy reads right behind them, else the first probe sample after the
//! commit), causal tokens it was given (startup option, `SET`, comment hint), and its scope's
//! shared positions. Also what the client sees of it: the `pgmeridian.causal_token`
//! ParameterStatus after a commit, `SHOW`, and notices for tokens that do not apply.

use bytes::BytesMut;

use super::*;
use crate::causal::{Check, Token};
use crate::config::ReadYourWrites;
use crate::error::sqlstate;
use crate::health::ClusterHealth;
use crate::protocol::encode;
use crate::route::Requirement;

/// The system identifier and timeline of the cluster's acting primary, when probed.
pub(super) fn identity(h: Option<&ClusterHealth>) -> Option<(u64, u32)> {
    h.and_then(ClusterHealth::acting_primary_identity)
}

impl Engine {
    /// The requirement a read decided now must meet: own writes, tokens and scope, resolved
    /// against the primary's WAL samples. Checks a token given before the cluster was known.
    pub(super) fn effective_requirement(&mut self, env: &Env) -> Requirement {
        let health = self.cluster_health(env);
        if let Some(token) = self.pending_token {
            let check = token.check(identity(health.as_deref()));
            if check != Check::Unverified {
                self.pending_token = None;
                self.apply_check(check);
            }
        }
        let samples: &[(std::time::Instant, u64)] =
            health.as_deref().map_or(&[], |h| &h.primary_samples);
        self.own = self.own.resolve(samples);
        let mut req = self.own.and(self.token_req.resolve(samples));
        if let Some(key) = &self.scope {
            let shared = env.scopes.get(key);
            let resolved = shared.resolve(samples);
            if resolved != shared {
                env.scopes.settle(key, resolved);
            }
            req = req.and(resolved);
        }
        req
    }

    fn apply_check(&mut self, check: Check) {
        match check {
            Check::Applies(lsn) => self.token_req = self.token_req.and(Requirement::lsn(lsn)),
            Check::Unverified => {}
            other => {
                if let Some(text) = other.notice() {
                    tracing::info!(reason = text, "causal token ignored");
                    self.notices.push(text.to_owned());
                }
            }
        }
    }

    /// A token the client gave (SET, comment hint): applied, ignored with a notice, or kept
    /// until the cluster's identity is known. A malformed one is the client's error (22023).
    pub(super) fn present_token(&mut self, text: &str, env: &Env) -> Result<(), ClientError> {
        let token = Token::parse(text).map_err(|e| {
            ClientError::error(sqlstate::INVALID_PARAMETER_VALUE, e).with_hint(
                "give the value of pgmeridian.causal_token exactly as a proxy reported it",
            )
        })?;
        let health = self.cluster_health(env);
        match token.check(identity(health.as_deref())) {
            Check::Unverified => self.pending_token = Some(token),
            check => self.apply_check(check),
        }
        Ok(())
    }

    /// Writes the notices owed to the client.
    pub(super) fn flush_notices(&mut self, out: &mut BytesMut) {
        for text in self.notices.drain(..) {
            encode::notice_response(out, "NOTICE", "01000", &text);
        }
    }

    /// The session's write committed on the primary: later reads must see it. `exact_follows`:
    /// the proxy's own position query runs right behind it and will tell the position.
    pub(super) fn after_write(&mut self, exact_follows: bool, env: &Env) {
        let now = env.now;
        self.own = match self.topology.routing.read_your_writes {
            ReadYourWrites::Lsn => Requirement::awaiting(now),
            ReadYourWrites::Window => {
                let lag = self
                    .cluster_health(env)
                    .map(|c| {
                        c.replicas
                            .iter()
                            .filter_map(|r| r.lag)
                            .max()
                            .unwrap_or_default()
                    })
                    .unwrap_or_default();
                Requirement::until(
                    now + crate::route::window_after_write(&self.topology.routing, lag),
                )
            }
            ReadYourWrites::Off => Requirement::NONE,
        };
        if !exact_follows {
            if let Some(key) = &self.scope {
                env.scopes.raise(key, self.own, now);
            }
        }
        self.write_pin_started(now);
    }

    /// The proxy's position query behind a commit answered: the exact requirement, the token
    /// reported to the client, then the client's ReadyForQuery that waited for it.
    pub(super) fn commit_position(
        &mut self,
        slot: Slot,
        committed: bool,
        lsn: Option<u64>,
        b: &mut Buffers,
        env: &Env,
    ) {
        match lsn.filter(|_| committed) {
            Some(lsn) => {
                self.own = Requirement::lsn(lsn);
                if let Some(key) = &self.scope {
                    env.scopes.raise(key, self.own, env.now);
                }
                let health = self.cluster_health(env);
                if let Some((system_id, timeline)) = identity(health.as_deref()) {
                    let token = Token {
                        system_id,
                        timeline,
                        lsn,
                    }
                    .format();
                    if self.reported_token.as_deref() != Some(token.as_str()) {
                        encode::parameter_status(
                            &mut b.client_out,
                            crate::causal::PARAMETER.as_bytes(),
                            token.as_bytes(),
                        );
                        self.reported_token = Some(token);
                    }
                }
            }
            None => {
                // No exact position: the probes' first sample after now will do.
                if let Some(key) = &self.scope {
                    env.scopes
                        .raise(key, Requirement::awaiting(env.now), env.now);
                }
            }
        }
        if let Some(server) = self.server_mut(slot) {
            if let Some(ready) = server.held_ready.take() {
                b.client_out.unsplit(ready);
            }
        }
    }

    /// Sends the wait for `lsn` on `slot`'s replica: a DO block that polls the replay position
    /// every millisecond, in the replica's backend, and fails once `causal_wait_max` is up.
    pub(super) fn send_wait(&mut self, slot: Slot, lsn: u64, b: &mut Buffers, env: &Env) {
        let max_ms = self.topology.routing.causal_wait_max.as_millis().max(1);
        let sql = format!(
            "DO $pgmeridian$ BEGIN WHILE coalesce(pg_last_wal_replay_lsn() < '{:X}/{:X}'::pg_lsn, true) LOOP \
             IF clock_timestamp() > statement_timestamp() + interval '{max_ms} milliseconds' THEN \
             RAISE EXCEPTION 'pgmeridian: replay wait timed out'; END IF; \
             PERFORM pg_sleep(0.001); END LOOP; END $pgmeridian$",
            lsn >> 32,
            lsn & 0xffff_ffff
        );
        let Some(server) = self.servers[slot.index()].as_mut() else {
            return;
        };
        let _ = postgres_protocol::message::frontend::query(&sql, &mut b.server_out[slot.index()]);
        let unit = super::expect::Unit {
            proxy: Some(super::expect::ProxyUnit::AwaitReplay),
            ..Default::default()
        };
        server.owed.push(
            super::expect::Kind::Query { unit },
            super::expect::Origin::Proxy,
            super::expect::Effect::default(),
        );
        self.cancel.set_target(crate::cancel::CancelTarget {
            node: server.state.node.clone(),
            pid: server.state.pid,
            key: server.state.key,
        });
        self.active = Some(slot);
        let _ = env;
    }

    /// The replica answered the wait: the read goes there (`replayed`), else to the primary.
    pub(super) fn wait_answered(&mut self, replayed: bool) {
        if let Some(Held::Forward {
            slot,
            reason,
            replica,
            wait,
            ..
        }) = &mut self.held
        {
            *wait = None;
            if !replayed {
                tracing::debug!(
                    "the replica did not replay the position in time; reading from the primary"
                );
                *slot = Slot::Primary;
                *reason = Reason::PinnedAfterWrite;
                *replica = None;
            }
        }
    }

    /// The token of what this session requires now (`SHOW pgmeridian.causal_token`): its own
    /// write or the tokens it was given, whichever is later; empty when there is none.
    pub(super) fn current_token(&mut self, env: &Env) -> String {
        let health = self.cluster_health(env);
        let (Some((system_id, timeline)), Some(lsn)) = (
            identity(health.as_deref()),
            self.own.lsn.max(self.token_req.lsn),
        ) else {
            return String::new();
        };
        Token {
            system_id,
            timeline,
            lsn,
        }
        .format()
    }
}
