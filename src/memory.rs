//! Gives freed heap memory back to the system after sessions went quiet: glibc's allocator
//! keeps what a burst of logins or queries freed (buffers, SCRAM state) inside the heap,
//! between the allocations of the sessions that stay, so an idle proxy would otherwise hold
//! its peak. Sessions that give their buffers back ask for a trim; at most one runs per
//! second, and none while every session is busy. Owns only that; it frees nothing itself.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// How often a requested trim may run.
const PERIOD: Duration = Duration::from_secs(1);

/// Set when a session freed its buffers since the last trim.
static WANTED: AtomicBool = AtomicBool::new(false);

/// A session gave memory back: the next round trims the heap.
pub fn want_trim() {
    if !WANTED.load(Ordering::Relaxed) {
        WANTED.store(true, Ordering::Relaxed);
    }
}

/// Trims the heap, at most every [`PERIOD`] and only when asked, until `stop` (glibc only;
/// elsewhere it returns at once).
pub async fn trim_when_asked(stop: CancellationToken) {
    if !cfg!(all(target_os = "linux", target_env = "gnu")) {
        return;
    }
    loop {
        tokio::select! {
            _ = tokio::time::sleep(PERIOD) => {}
            _ = stop.cancelled() => return,
        }
        if !WANTED.swap(false, Ordering::Relaxed) {
            continue;
        }
        let took = tokio::task::spawn_blocking(|| {
            let started = Instant::now();
            trim();
            started.elapsed()
        })
        .await;
        if let Ok(took) = took {
            tracing::trace!(?took, "trimmed the heap");
        }
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)] // one libc call, see the SAFETY note
fn trim() {
    // SAFETY: malloc_trim only returns free memory to the kernel; it takes the allocator's
    // own locks and touches no memory that is in use.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}
