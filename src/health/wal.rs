//! The acting primary's WAL history: primary samples over time, a replica's lag and apply
//! delay against them, restarted when another node, system or timeline acts as primary. Pure:
//! the probe loop passes each round's health and the time.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{ClusterHealth, PrimaryView, PRIMARY_SAMPLES_KEPT};

/// Recent primary WAL positions, to turn a replica's replay position into a time lag:
/// a replica is as far behind as the oldest primary position it has not replayed.
#[derive(Debug, Clone)]
pub struct PrimaryHistory {
    samples: VecDeque<(Instant, u64)>,
    keep: Duration,
    /// Started for a primary that took over from another one (see [`PrimaryHistory::taken_over`]).
    taken_over: bool,
    /// Samples older than the horizon were dropped.
    trimmed: bool,
}

impl PrimaryHistory {
    pub fn new(keep: Duration) -> PrimaryHistory {
        PrimaryHistory {
            samples: VecDeque::new(),
            keep,
            taken_over: false,
            trimmed: false,
        }
    }

    /// The history of a primary that took over from another node, system or timeline. A
    /// standby that has not replayed even its first sampled position may not follow it at all
    /// (still attached to the old primary, or diverged from it), so its lag is unknown (None)
    /// rather than the time since that first sample, until it replays that position.
    pub fn taken_over(keep: Duration) -> PrimaryHistory {
        PrimaryHistory {
            taken_over: true,
            ..PrimaryHistory::new(keep)
        }
    }

    /// Records that the primary was at `lsn` at `at`; only advances are kept.
    pub fn push(&mut self, at: Instant, lsn: u64) {
        if self.samples.back().is_none_or(|&(_, last)| lsn > last) {
            self.samples.push_back((at, lsn));
        }
        // Keep one sample older than the horizon, so long lags stay measurable.
        while self.samples.len() > 1
            && self
                .samples
                .get(1)
                .is_some_and(|&(t, _)| at.saturating_duration_since(t) > self.keep)
        {
            self.samples.pop_front();
            self.trimmed = true;
        }
    }

    pub fn latest(&self) -> Option<u64> {
        self.samples.back().map(|&(_, l)| l)
    }

    /// When the primary wrote `lsn`, interpolated between the samples around it (sample
    /// times); None outside the sampled range.
    pub fn written_at(&self, lsn: u64) -> Option<Instant> {
        let i = self.samples.iter().position(|&(_, l)| l > lsn)?;
        let (t1, l1) = self.samples[i];
        let (t0, l0) = *self.samples.get(i.checked_sub(1)?)?;
        let span = t1.saturating_duration_since(t0);
        let part = (lsn - l0) as f64 / (l1 - l0) as f64;
        Some(t0 + span.mul_f64(part))
    }

    /// Time lag of a replica that has replayed up to `replay`, as of `now`.
    pub fn lag_of(&self, replay: u64, now: Instant) -> Option<Duration> {
        let latest = self.latest()?;
        if replay >= latest {
            return Some(Duration::ZERO);
        }
        // The first position the replica lacks appeared no later than this sample.
        let (i, (since, _)) = self
            .samples
            .iter()
            .enumerate()
            .find(|(_, &(_, lsn))| lsn > replay)?;
        if i == 0 && self.taken_over && !self.trimmed {
            return None;
        }
        Some(now.saturating_duration_since(*since))
    }
}

/// Whose WAL a history follows: positions are comparable only within one node writing one
/// timeline of one database system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalSource {
    /// The node's key (`NodeSpec::key`).
    pub node: Arc<str>,
    pub system_id: Option<u64>,
    pub timeline: Option<u32>,
}

/// The acting primary's WAL as the probes saw it, whichever node acts as primary: the
/// reference for replica lag and the source of `ClusterHealth::primary_samples`. It starts
/// afresh when the acting primary changes (another node, system or timeline). Pure: the probe
/// loop passes each round's health and the time.
#[derive(Debug, Clone)]
pub struct WalHistory {
    source: Option<WalSource>,
    /// Advances only, kept `keep_history`, for lag.
    history: PrimaryHistory,
    keep_history: Duration,
    /// Every probe's sample, oldest first, kept [`PRIMARY_SAMPLES_KEPT`], for read-your-writes.
    recent: VecDeque<(Instant, u64)>,
    /// When the last recorded sample was sent.
    last_at: Option<Instant>,
}

impl WalHistory {
    pub fn new(keep_history: Duration) -> WalHistory {
        WalHistory {
            source: None,
            history: PrimaryHistory::new(keep_history),
            keep_history,
            recent: VecDeque::new(),
            last_at: None,
        }
    }

    /// A standby's apply delay: from when the primary wrote `replay` to when the standby's
    /// probe read it, each side's sample time moved by half its round trip (when the server
    /// answered). Zero when the standby has replayed everything sampled.
    fn apply_delay(
        &self,
        replay: u64,
        sampled_at: Option<Instant>,
        rtt: Option<Duration>,
        primary_rtt: Option<Duration>,
    ) -> Option<Duration> {
        if replay >= self.history.latest()? {
            return Some(Duration::ZERO);
        }
        let written = self.history.written_at(replay)? + primary_rtt.unwrap_or_default() / 2;
        let replayed = sampled_at? + rtt.unwrap_or_default() / 2;
        Some(replayed.saturating_duration_since(written))
    }

    /// The primary whose WAL the history follows (None before one was seen).
    pub fn source(&self) -> Option<&WalSource> {
        self.source.as_ref()
    }

    /// Folds one probe round into `health` (each node's role and position after hysteresis;
    /// lag not set yet) at `now`: the acting primary's sample feeds the history (restarted when
    /// the acting primary is not the one it followed), every standby that is up gets its lag
    /// against it, and `primary_samples` is set. Returns true when the history restarted for a
    /// new acting primary (not at the first one seen).
    pub fn fold(&mut self, health: &mut ClusterHealth, now: Instant) -> bool {
        let mut restarted = false;
        if let PrimaryView::One(i) = health.primary_view() {
            if let Some(p) = health.node(i) {
                if let (Some(lsn), Some(at)) = (p.lsn, p.sampled_at) {
                    let source = WalSource {
                        node: health
                            .keys
                            .get(i)
                            .cloned()
                            .unwrap_or_else(|| format!("#{i}").into()),
                        system_id: p.system_id,
                        timeline: p.timeline,
                    };
                    restarted = self.observe(source, at, lsn);
                }
            }
        }
        while self
            .recent
            .front()
            .is_some_and(|&(t, _)| now.saturating_duration_since(t) > PRIMARY_SAMPLES_KEPT)
        {
            self.recent.pop_front();
        }
        let system = self.source.as_ref().and_then(|s| s.system_id);
        let primary_rtt = health.acting_primary_rtt();
        for n in health.nodes_mut() {
            (n.lag, n.lag_bytes) = (None, None);
            let standby = n.up && n.in_recovery == Some(true);
            // A standby of another database system does not replay this WAL at all.
            let foreign = matches!((system, n.system_id), (Some(a), Some(b)) if a != b);
            n.apply_delay = None;
            if let (true, false, Some(replay)) = (standby, foreign, n.lsn) {
                n.apply_delay = self.apply_delay(replay, n.sampled_at, n.rtt, primary_rtt);
                n.lag = self.history.lag_of(replay, now);
                n.lag_bytes = n
                    .lag
                    .and(self.history.latest())
                    .map(|p| p.saturating_sub(replay));
            }
        }
        health.primary_samples = self.recent.iter().copied().collect();
        restarted
    }

    /// Records the acting primary's position; returns true when that restarted the history.
    fn observe(&mut self, source: WalSource, at: Instant, lsn: u64) -> bool {
        let mut restarted = false;
        if self.source.as_ref() != Some(&source) {
            restarted = self.source.is_some();
            self.history = if restarted {
                PrimaryHistory::taken_over(self.keep_history)
            } else {
                PrimaryHistory::new(self.keep_history)
            };
            self.recent.clear();
            self.last_at = None;
            self.source = Some(source);
        }
        // A sample carried over from an earlier round (one missed probe) is not new.
        if self.last_at.is_none_or(|t| at > t) {
            self.last_at = Some(at);
            self.recent.push_back((at, lsn));
            self.history.push(at, lsn);
        }
        restarted
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::NodeHealth;

    #[test]
    fn replica_lag_from_primary_history() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut h = PrimaryHistory::new(Duration::from_secs(60));
        assert_eq!(h.lag_of(5, ms(0)), None, "no primary sample yet");
        h.push(ms(0), 100);
        h.push(ms(100), 100); // no advance: not recorded
        h.push(ms(200), 150);
        h.push(ms(300), 400);
        let now = ms(1000);
        let cases = [
            (400, Some(Duration::ZERO)),             // caught up
            (500, Some(Duration::ZERO)),             // ahead of our last sample
            (150, Some(Duration::from_millis(700))), // lacks 400, seen at 300 ms
            (120, Some(Duration::from_millis(800))), // lacks 150, seen at 200 ms
            (99, Some(Duration::from_millis(1000))), // lacks everything we have seen
        ];
        for (replay, want) in cases {
            assert_eq!(h.lag_of(replay, now), want, "replay {replay}");
        }
    }

    #[test]
    fn history_forgets_beyond_its_horizon_but_keeps_one_older_sample() {
        let t0 = Instant::now();
        let mut h = PrimaryHistory::new(Duration::from_secs(1));
        for i in 0..50u64 {
            h.push(t0 + Duration::from_millis(100 * i), i + 1);
        }
        assert!(h.samples.len() <= 12, "{}", h.samples.len());
        assert_eq!(
            h.lag_of(0, t0 + Duration::from_secs(5)),
            Some(Duration::from_millis(5000 - 3800))
        );
    }

    #[test]
    fn a_position_is_dated_between_the_samples_around_it() {
        let t0 = Instant::now();
        let mut h = PrimaryHistory::new(Duration::from_secs(60));
        h.push(t0, 1000);
        h.push(t0 + Duration::from_millis(100), 2000);
        h.push(t0 + Duration::from_millis(300), 2100);
        let cases: &[(u64, Option<u64>)] = &[
            (999, None),
            (1000, Some(0)),
            (1500, Some(50)),
            (2050, Some(200)),
            (2100, None),
        ];
        for &(lsn, want_ms) in cases {
            let got = h
                .written_at(lsn)
                .map(|t| t.duration_since(t0).as_millis() as u64);
            assert_eq!(got, want_ms, "{lsn}");
        }
    }

    const SYSTEM: u64 = 7;

    /// A node out of recovery at `lsn` on timeline `tl`.
    fn p(lsn: u64, tl: u32) -> NodeHealth {
        NodeHealth {
            up: true,
            in_recovery: Some(false),
            lsn: Some(lsn),
            system_id: Some(SYSTEM),
            timeline: Some(tl),
            ..Default::default()
        }
    }

    /// A standby that has replayed up to `lsn`.
    fn s(lsn: u64) -> NodeHealth {
        NodeHealth {
            up: true,
            in_recovery: Some(true),
            lsn: Some(lsn),
            system_id: Some(SYSTEM),
            ..Default::default()
        }
    }

    fn down() -> NodeHealth {
        NodeHealth::default()
    }

    /// Folds rounds of (probes sent at ms, nodes a/b/c with `a` the configured primary); each
    /// round ends 100 ms after its probes were sent. Returns the last round's health and
    /// whether each round restarted the history.
    fn run(t0: Instant, rounds: &[(u64, [NodeHealth; 3])]) -> (ClusterHealth, Vec<bool>) {
        let mut wal = WalHistory::new(Duration::from_secs(60));
        let mut last = ClusterHealth::default();
        let mut restarts = Vec::new();
        for (ms, nodes) in rounds {
            let at = t0 + Duration::from_millis(*ms);
            let [a, b, c] = nodes.clone().map(|mut n| {
                n.sampled_at = n.up.then_some(at);
                n
            });
            last = ClusterHealth {
                primary: a,
                replicas: vec![b, c],
                primary_samples: vec![],
                keys: ["a", "b", "c"].map(Arc::from).to_vec(),
            };
            restarts.push(wal.fold(&mut last, at + Duration::from_millis(100)));
        }
        (last, restarts)
    }

    #[test]
    fn samples_come_from_the_acting_primary_and_restart_when_it_changes() {
        let other_system = NodeHealth {
            system_id: Some(SYSTEM + 1),
            ..p(5000, 3)
        };
        // Each row is one more round after the rows above it:
        // (what happens, nodes a b c, primary_samples as (ms, lsn) after it, restarted)
        #[allow(clippy::type_complexity)]
        let rounds: Vec<(&str, u64, [NodeHealth; 3], &[(u64, u64)], bool)> = vec![
            (
                "configured primary",
                0,
                [p(100, 1), s(100), s(100)],
                &[(0, 100)],
                false,
            ),
            (
                "it advances",
                100,
                [p(200, 1), s(100), s(150)],
                &[(0, 100), (100, 200)],
                false,
            ),
            (
                "idle: a sample all the same",
                200,
                [p(200, 1), s(200), s(200)],
                &[(0, 100), (100, 200), (200, 200)],
                false,
            ),
            (
                "primary down: no acting primary, samples kept",
                300,
                [down(), s(200), s(200)],
                &[(0, 100), (100, 200), (200, 200)],
                false,
            ),
            (
                "b promoted: its WAL only",
                400,
                [down(), p(250, 2), s(200)],
                &[(400, 250)],
                true,
            ),
            (
                "b advances",
                500,
                [down(), p(300, 2), s(250)],
                &[(400, 250), (500, 300)],
                false,
            ),
            (
                "old primary back as primary: conflict, nothing taken",
                600,
                [p(900, 1), p(310, 2), s(250)],
                &[(400, 250), (500, 300)],
                false,
            ),
            (
                "old primary gone again",
                700,
                [down(), p(320, 2), s(300)],
                &[(400, 250), (500, 300), (700, 320)],
                false,
            ),
            (
                "b on a new timeline (promoted again)",
                800,
                [down(), p(330, 3), s(300)],
                &[(800, 330)],
                true,
            ),
            (
                "b's address now serves another database system",
                900,
                [down(), other_system, s(300)],
                &[(900, 5000)],
                true,
            ),
        ];
        let t0 = Instant::now();
        let mut so_far = Vec::new();
        for (what, ms, nodes, want_samples, want_restart) in rounds {
            so_far.push((ms, nodes));
            let (h, restarts) = run(t0, &so_far);
            let want: Vec<(Instant, u64)> = want_samples
                .iter()
                .map(|&(ms, lsn)| (t0 + Duration::from_millis(ms), lsn))
                .collect();
            assert_eq!(h.primary_samples, want, "{what}");
            assert_eq!(restarts.last(), Some(&want_restart), "{what}");
        }
    }

    #[test]
    fn a_sample_carried_over_from_a_missed_probe_is_not_taken_again() {
        let t0 = Instant::now();
        let mut wal = WalHistory::new(Duration::from_secs(60));
        let mut h = ClusterHealth {
            primary: NodeHealth {
                sampled_at: Some(t0 + Duration::from_millis(100)),
                ..p(200, 1)
            },
            replicas: vec![s(200)],
            primary_samples: vec![],
            keys: vec![],
        };
        wal.fold(&mut h, t0 + Duration::from_millis(150));
        h.primary.sampled_at = Some(t0);
        wal.fold(&mut h, t0 + Duration::from_millis(250));
        assert_eq!(
            h.primary_samples,
            vec![(t0 + Duration::from_millis(100), 200)]
        );
    }

    #[test]
    fn lag_is_measured_against_the_acting_primary() {
        let ms = |n| Some(Duration::from_millis(n));
        let foreign = NodeHealth {
            system_id: Some(SYSTEM + 1),
            ..s(100)
        };
        // (what, rounds, lag and lag bytes of a, b, c after the last round)
        #[allow(clippy::type_complexity)]
        let cases: Vec<(
            &str,
            Vec<(u64, [NodeHealth; 3])>,
            [(Option<Duration>, Option<u64>); 3],
        )> =
            vec![
            (
                "the configured primary's WAL",
                vec![(0, [p(100, 1), s(100), s(100)]), (1000, [p(200, 1), s(100), s(200)])],
                [(None, None), (ms(100), Some(100)), (ms(0), Some(0))],
            ),
            (
                "a promoted replica is the reference and has no lag itself",
                vec![
                    (0, [p(100, 1), s(100), s(100)]),
                    (1000, [down(), p(300, 2), s(300)]),
                    (2000, [down(), p(500, 2), s(300)]),
                ],
                [(None, None), (None, None), (ms(100), Some(200))],
            ),
            (
                "after a takeover, a standby short of the new primary's first sample: unknown",
                vec![
                    (0, [p(100, 1), s(100), s(100)]),
                    (1000, [down(), p(300, 2), s(100)]),
                    (5000, [down(), p(500, 2), s(100)]),
                ],
                [(None, None), (None, None), (None, None)],
            ),
            (
                "at the first primary seen, a standby short of its first sample lags since then",
                vec![(0, [p(300, 1), s(100), s(300)]), (2000, [p(300, 1), s(100), s(300)])],
                [(None, None), (ms(2100), Some(200)), (ms(0), Some(0))],
            ),
            (
                "the old primary back as a standby of the promoted one",
                vec![
                    (0, [p(100, 1), s(100), s(100)]),
                    (1000, [down(), p(300, 2), s(300)]),
                    (2000, [s(300), p(400, 2), s(400)]),
                ],
                [(ms(100), Some(100)), (None, None), (ms(0), Some(0))],
            ),
            (
                "a standby of another database system is not compared",
                vec![(0, [p(100, 1), foreign, s(100)])],
                [(None, None), (None, None), (ms(0), Some(0))],
            ),
            (
                "a down standby has no lag",
                vec![(0, [p(100, 1), down(), s(100)])],
                [(None, None), (None, None), (ms(0), Some(0))],
            ),
            (
                "no acting primary: lag keeps growing against the last one's WAL",
                vec![(0, [p(100, 1), s(100), s(50)]), (1000, [down(), s(100), s(50)])],
                [(None, None), (ms(0), Some(0)), (ms(1100), Some(50))],
            ),
            (
                "split brain: nothing sampled, lag against the WAL seen so far",
                vec![(0, [p(100, 1), s(100), s(100)]), (1000, [p(200, 1), p(900, 2), s(100)])],
                [(None, None), (None, None), (ms(0), Some(0))],
            ),
        ];
        let t0 = Instant::now();
        for (what, rounds, want) in cases {
            let (h, _) = run(t0, &rounds);
            let got = [&h.primary, &h.replicas[0], &h.replicas[1]].map(|n| (n.lag, n.lag_bytes));
            assert_eq!(got, want, "{what}");
        }
    }

    #[test]
    fn a_takeover_standby_is_measured_once_it_replays_the_first_sample() {
        let t0 = Instant::now();
        let (h, _) = run(
            t0,
            &[
                (0, [p(100, 1), s(100), s(100)]),
                (1000, [down(), p(300, 2), s(100)]),
                (2000, [down(), p(500, 2), s(100)]),
                (3000, [down(), p(600, 2), s(300)]),
            ],
        );
        // It lacks 500, first seen at 2000 ms; the round ended at 3100 ms.
        assert_eq!(h.replicas[1].lag, Some(Duration::from_millis(1100)));
        assert_eq!(h.replicas[1].lag_bytes, Some(300));
        assert!(!h.replicas[1].serves_reads(Duration::from_secs(1)));
    }

    #[test]
    fn identity_of_the_acting_primary() {
        let unknown_system = NodeHealth {
            system_id: None,
            ..p(1, 4)
        };
        let cases = [
            (
                "configured primary",
                [p(1, 1), s(1), s(1)],
                Some((SYSTEM, 1)),
            ),
            (
                "promoted replica",
                [down(), s(1), p(1, 2)],
                Some((SYSTEM, 2)),
            ),
            ("no primary", [down(), s(1), s(1)], None),
            ("two primaries", [p(1, 1), p(1, 2), s(1)], None),
            ("system not learned", [down(), unknown_system, s(1)], None),
        ];
        for (what, [a, b, c], want) in cases {
            let h = ClusterHealth {
                primary: a,
                replicas: vec![b, c],
                primary_samples: vec![],
                keys: vec![],
            };
            assert_eq!(h.acting_primary_identity(), want, "{what}");
        }
    }
}
