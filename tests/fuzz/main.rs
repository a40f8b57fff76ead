//! Structured fuzzing on stable: proptest properties over every parser of network or file input.
//!
//! Each property mixes inputs built to be nearly valid (right tags and lengths, real headers,
//! SQL from its grammar's pieces, a working YAML file) and then mutated (truncated, bytes
//! flipped, lengths declared huge), with plain random bytes. The short run (a few hundred to a
//! few thousand cases per property) is part of `cargo test`; the long run is
//! `PROPTEST_CASES=1000000 cargo test --release --test fuzz` (README, "Fuzzing").
//!
//! Beyond "no panic", the checks are:
//! - terminates: a watchdog ([`Case`]) aborts the run, naming the property, when one case runs
//!   longer than [`HANG`];
//! - bounded allocation: a tracking global allocator ([`alloc`]) measures the heap growth of
//!   one call, so framing can be shown never to reserve a message's declared length;
//! - the decision a parser makes is the safe one (undecodable SQL is a write, a declared length
//!   over the limit is refused from the header alone, secrets never reach error messages).

mod alloc;
mod config;
mod framing;
mod gen;
mod peer;
mod proxy;
mod scram;
mod sql;
mod startup;

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use proptest::test_runner::Config as ProptestConfig;

#[global_allocator]
static ALLOCATOR: alloc::Tracking = alloc::Tracking;

/// A single case running longer than this is a hang (cases take microseconds).
const HANG: Duration = Duration::from_secs(120);

/// The proptest configuration of a property: `short` cases in the ordinary test run, or as
/// many as `PROPTEST_CASES` says (the long run).
pub fn cases(short: u32) -> ProptestConfig {
    let mut config = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = short;
    }
    config
}

/// Cases in progress, by thread: (property, started).
fn running() -> &'static Mutex<HashMap<ThreadId, (&'static str, Instant)>> {
    static RUNNING: OnceLock<Mutex<HashMap<ThreadId, (&'static str, Instant)>>> = OnceLock::new();
    RUNNING.get_or_init(|| {
        std::thread::spawn(|| loop {
            std::thread::sleep(Duration::from_secs(1));
            let map = running().lock().unwrap_or_else(|e| e.into_inner());
            if let Some((name, _)) = map.values().find(|(_, at)| at.elapsed() > HANG) {
                eprintln!(
                    "fuzz: a case of {name} has run for over {HANG:?}: it does not terminate"
                );
                std::process::abort();
            }
        });
        Mutex::new(HashMap::new())
    })
}

/// One case of a property, watched for hangs while it lives.
pub struct Case;

impl Case {
    pub fn start(property: &'static str) -> Case {
        let mut map = running().lock().unwrap_or_else(|e| e.into_inner());
        map.insert(std::thread::current().id(), (property, Instant::now()));
        Case
    }
}

impl Drop for Case {
    fn drop(&mut self) {
        let mut map = running().lock().unwrap_or_else(|e| e.into_inner());
        map.remove(&std::thread::current().id());
    }
}
