//! Pure smoothing of probe round trips: the median of the last few, so that one slow probe on a
//! busy machine does not move sessions between replicas. No clock, no I/O.

use std::collections::VecDeque;
use std::time::Duration;

/// How many recent round trips the median is taken over.
pub const WINDOW: usize = 5;

/// A node's recent probe round trips.
#[derive(Debug, Clone, Default)]
pub struct RttWindow {
    recent: VecDeque<Duration>,
}

impl RttWindow {
    /// Adds a measured round trip and returns the median of the window (the lower middle one
    /// while the window holds an even number).
    pub fn push(&mut self, rtt: Duration) -> Duration {
        if self.recent.len() == WINDOW {
            self.recent.pop_front();
        }
        self.recent.push_back(rtt);
        let mut sorted: Vec<Duration> = self.recent.iter().copied().collect();
        sorted.sort_unstable();
        sorted[(sorted.len() - 1) / 2]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_of_the_last_five_ignores_spikes_and_follows_changes() {
        let ms = Duration::from_millis;
        // (round trips pushed in order, median after the last one)
        let cases: &[(&[u64], u64)] = &[
            (&[3], 3),
            (&[3, 40], 3),
            (&[3, 40, 4], 4),
            (&[1, 1, 1, 1, 90], 1),
            (&[1, 1, 1, 90, 90], 1),
            (&[1, 1, 90, 90, 90], 90),
            // Only the last five count.
            (&[90, 90, 90, 1, 1, 1], 1),
            (&[30, 30, 30, 30, 30, 2, 2, 2], 2),
        ];
        for (pushed, want) in cases {
            let mut w = RttWindow::default();
            let mut got = Duration::ZERO;
            for &p in *pushed {
                got = w.push(ms(p));
            }
            assert_eq!(got, ms(*want), "{pushed:?}");
        }
    }
}
