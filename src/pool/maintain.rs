//! The pools' housekeeping, once a second: closes idle connections past `idle_timeout` or
//! `lifetime`, and opens connections up to `min_idle` (for every node and user of a cluster
//! that asks for warm ones). Runs on the main runtime; sessions never wait for it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{CloseReason, Pool, Pools, ServerConn};

const PERIOD: Duration = Duration::from_secs(1);

/// Runs until `stop` is cancelled.
pub async fn maintain(
    pools: Arc<Pools>,
    topology: impl Fn() -> Arc<crate::topology::Topology>,
    stop: tokio_util::sync::CancellationToken,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(PERIOD) => {}
            _ = stop.cancelled() => return,
        }
        let t = topology();
        for cluster in t.clusters.values() {
            if cluster.pooling.min_idle == 0 {
                continue;
            }
            for node in cluster.nodes() {
                for user in &t.users_in_order {
                    pools.get(node, user, &cluster.pooling);
                }
            }
        }
        for pool in pools.all() {
            pool.expire(Instant::now());
            pool.warm(crate::backend::ConnectOptions::from(&t.limits))
                .await;
        }
    }
}

impl Pool {
    /// Closes idle connections past their idle timeout or lifetime.
    fn expire(&self, now: Instant) {
        let expired: Vec<(ServerConn, CloseReason)> = {
            let mut inner = self.lock();
            let (idle_timeout, lifetime) = (inner.config.idle_timeout, inner.config.lifetime);
            let mut expired = Vec::new();
            let mut i = 0;
            while i < inner.idle.len() {
                let c = &inner.idle[i];
                let reason = if !lifetime.is_zero() && now.duration_since(c.created) >= lifetime {
                    Some(CloseReason::Lifetime)
                } else if !idle_timeout.is_zero() && now.duration_since(c.last_used) >= idle_timeout
                {
                    Some(CloseReason::IdleTimeout)
                } else {
                    None
                };
                match reason {
                    Some(r) => {
                        let c = inner.idle.remove(i);
                        inner.open -= 1;
                        expired.push((c, r));
                    }
                    None => i += 1,
                }
            }
            expired
        };
        for (c, reason) in expired {
            self.metrics.idle.dec();
            self.closed(reason);
            c.close();
        }
    }

    /// Opens connections until `min_idle` are idle, as long as a lease permit is free (so a
    /// warm-up never takes a place a session is waiting for) and fewer than `size` are open
    /// (leased ones count: a warm connection must not add to them beyond the size).
    async fn warm(self: &Arc<Self>, connect: crate::backend::ConnectOptions) {
        if self.retired.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        loop {
            let Ok(permit) = self.permits.clone().try_acquire_owned() else {
                return;
            };
            let (user, opening) = {
                let mut inner = self.lock();
                if inner.idle.len() >= inner.config.min_idle || inner.open >= inner.size {
                    drop(inner);
                    self.give_back_permit(permit);
                    return;
                }
                (inner.user.clone(), super::Opening::count(self, &mut inner))
            };
            match ServerConn::open(&self.node, &user, &connect).await {
                Ok((conn, params)) => {
                    opening.keep();
                    self.metrics.logins.inc();
                    let mut inner = self.lock();
                    inner.params = Some(Arc::new(params));
                    inner.idle.push(conn);
                    drop(inner);
                    self.metrics.idle.inc();
                    self.give_back_permit(permit);
                }
                Err(e) => {
                    drop(opening);
                    self.give_back_permit(permit);
                    tracing::debug!(node = %self.node, error = %e, "could not open a warm server connection");
                    return;
                }
            }
        }
    }
}
