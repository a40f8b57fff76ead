//! Session threads ("lanes"): each runs a single-threaded runtime and the sessions handed to it,
//! so a session's socket wakeups stay on one thread, with no work stealing and no cross-thread
//! wakeups per statement. Owns placement and the threads' lifetime, not what a session does.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;

type Job = Pin<Box<dyn Future<Output = ()> + Send>>;

thread_local! {
    static LANE: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// The session thread this code runs on (`None` off the session threads).
pub fn current_lane() -> Option<usize> {
    LANE.with(|l| l.get())
}

struct Lane {
    jobs: mpsc::UnboundedSender<Job>,
    /// Sessions on this lane now.
    sessions: Arc<AtomicUsize>,
}

/// The session threads. Dropping this lets each thread finish its sessions and exit.
pub struct Lanes {
    lanes: Vec<Lane>,
}

impl Lanes {
    /// Starts `n` session threads (at least one).
    pub fn start(n: usize) -> std::io::Result<Lanes> {
        let mut lanes = Vec::new();
        for i in 0..n.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (jobs, mut rx) = mpsc::unbounded_channel::<Job>();
            std::thread::Builder::new()
                .name(format!("pgmeridian-lane-{i}"))
                .spawn(move || {
                    LANE.with(|l| l.set(Some(i)));
                    runtime.block_on(async move {
                        let running = tokio_util::task::TaskTracker::new();
                        while let Some(job) = rx.recv().await {
                            running.spawn(job);
                        }
                        running.close();
                        running.wait().await;
                    })
                })?;
            lanes.push(Lane {
                jobs,
                sessions: Arc::new(AtomicUsize::new(0)),
            });
        }
        Ok(Lanes { lanes })
    }

    /// Runs `session` on the lane with the fewest sessions. Sockets it opens belong to that
    /// lane's runtime, so a client socket must reach it as a `std` socket and be registered
    /// there (`TcpStream::from_std` inside `session`).
    pub fn spawn(&self, session: impl Future<Output = ()> + Send + 'static) {
        let Some(lane) = self
            .lanes
            .iter()
            .min_by_key(|l| l.sessions.load(Ordering::Relaxed))
        else {
            return;
        };
        let counted = crate::occupancy::Occupied::new(&lane.sessions);
        let job = Box::pin(async move {
            session.await;
            drop(counted);
        });
        if lane.jobs.send(job).is_err() {
            // The thread is gone (it panicked): the job, and the client's socket, are dropped.
            tracing::error!("a session thread has stopped; the connection is closed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_spread_over_lanes_and_run_on_their_own_threads() {
        let lanes = Lanes::start(2).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let (release, hold) = tokio::sync::watch::channel(false);
        for _ in 0..4 {
            let (tx, mut hold) = (tx.clone(), hold.clone());
            lanes.spawn(async move {
                tx.send(std::thread::current().name().map(str::to_owned))
                    .unwrap();
                let _ = hold.wait_for(|go| *go).await;
            });
        }
        let mut names: Vec<_> = (0..4).map(|_| rx.recv().unwrap().unwrap()).collect();
        names.sort();
        assert_eq!(
            names,
            [
                "pgmeridian-lane-0",
                "pgmeridian-lane-0",
                "pgmeridian-lane-1",
                "pgmeridian-lane-1"
            ]
        );
        release.send(true).unwrap();
    }
}
