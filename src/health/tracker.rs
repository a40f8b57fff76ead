//! Pure hysteresis over probe results: `fall` consecutive failures mark a node down, `rise`
//! consecutive successes mark it up again. No clock, no I/O; the probe loop feeds it.

/// A node's health as the router sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Never answered yet.
    Unknown,
    Up,
    Down,
}

#[derive(Debug, Clone, Copy)]
pub struct Tracker {
    state: State,
    /// Consecutive results of the kind that would change the state.
    streak: u32,
    fall: u32,
    rise: u32,
}

impl Tracker {
    pub fn new(fall: u32, rise: u32) -> Tracker {
        Tracker {
            state: State::Unknown,
            streak: 0,
            fall: fall.max(1),
            rise: rise.max(1),
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// New `fall` and `rise` (a reload): the state and the streak so far are kept, and the
    /// next result is judged by the new limits.
    pub fn set_limits(&mut self, fall: u32, rise: u32) {
        self.fall = fall.max(1);
        self.rise = rise.max(1);
    }

    pub fn is_up(&self) -> bool {
        self.state == State::Up
    }

    /// Folds one probe result in; returns the new state when it changed. A node's first
    /// answer marks it up at once (no history to distrust); after that, changes need a streak.
    pub fn observe(&mut self, ok: bool) -> Option<State> {
        let next = match (self.state, ok) {
            (State::Unknown, true) => Some(State::Up),
            (State::Unknown, false) => {
                self.streak += 1;
                (self.streak >= self.fall).then_some(State::Down)
            }
            (State::Up, true) | (State::Down, false) => {
                self.streak = 0;
                None
            }
            (State::Up, false) => {
                self.streak += 1;
                (self.streak >= self.fall).then_some(State::Down)
            }
            (State::Down, true) => {
                self.streak += 1;
                (self.streak >= self.rise).then_some(State::Up)
            }
        };
        if let Some(s) = next {
            self.state = s;
            self.streak = 0;
        }
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `results` (true = probe answered) and records the state after each.
    fn run(fall: u32, rise: u32, results: &str) -> String {
        let mut t = Tracker::new(fall, rise);
        results
            .chars()
            .map(|c| {
                t.observe(c == '+');
                match t.state() {
                    State::Unknown => '?',
                    State::Up => 'U',
                    State::Down => 'D',
                }
            })
            .collect()
    }

    #[test]
    fn hysteresis_table() {
        // (fall, rise, probe results, states after each)
        let cases = [
            (3, 2, "+", "U"),
            (3, 2, "---", "??D"),
            (3, 2, "+--+--", "UUUUUU"), // failures must be consecutive
            (3, 2, "+---", "UUUD"),
            (3, 2, "+---+-++", "UUUDDDDU"), // successes must be consecutive too
            (1, 1, "+-+-", "UDUD"),
            (2, 3, "+--+++-+--", "UUDDDUUUUD"),
            (0, 0, "+-+", "UDU"), // zero thresholds behave as 1
        ];
        for (fall, rise, results, want) in cases {
            assert_eq!(
                run(fall, rise, results),
                want,
                "fall {fall} rise {rise} results {results}"
            );
        }
    }

    #[test]
    fn observe_reports_only_changes() {
        let mut t = Tracker::new(2, 2);
        assert_eq!(t.observe(true), Some(State::Up));
        assert_eq!(t.observe(true), None);
        assert_eq!(t.observe(false), None);
        assert_eq!(t.observe(false), Some(State::Down));
        assert_eq!(t.observe(true), None);
        assert_eq!(t.observe(true), Some(State::Up));
    }

    #[test]
    fn new_limits_apply_to_the_next_result() {
        let mut t = Tracker::new(5, 5);
        t.observe(true);
        t.observe(false);
        t.observe(false);
        // A reload lowers `fall` to 3: the two failures so far count toward it.
        t.set_limits(3, 1);
        assert_eq!(t.observe(false), Some(State::Down));
        assert_eq!(t.observe(true), Some(State::Up), "rise is now 1");
        t.set_limits(0, 0);
        assert_eq!(t.observe(false), Some(State::Down), "zero behaves as 1");
    }
}
