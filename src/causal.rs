//! Causality that travels: a causal token is a primary WAL position together with the cluster's
//! identity (PostgreSQL system identifier) and timeline, as text a client carries from one
//! connection (or proxy) to another; `Scopes` shares the positions of a read-your-writes scope
//! (one client address, one user) between sessions. Token text is parsed and made here, purely;
//! `Scopes` is a small map behind a lock, with no I/O.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::route::Requirement;

/// The ParameterStatus and setting name of the token.
pub const PARAMETER: &str = "pgmeridian.causal_token";

/// A position in one cluster's WAL history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token {
    pub system_id: u64,
    pub timeline: u32,
    pub lsn: u64,
}

impl Token {
    /// `pgm1:SYSTEM_ID:TIMELINE:X/Y` (the LSN as PostgreSQL prints it).
    pub fn format(&self) -> String {
        format!(
            "pgm1:{}:{}:{:X}/{:X}",
            self.system_id,
            self.timeline,
            self.lsn >> 32,
            self.lsn & 0xffff_ffff
        )
    }

    /// The token in `text`, or what is wrong with it.
    pub fn parse(text: &str) -> Result<Token, String> {
        let bad = |why: &str| format!("invalid causal token {text:?}: {why}");
        let mut parts = text.trim().split(':');
        if parts.next() != Some("pgm1") {
            return Err(bad("it does not start with pgm1:"));
        }
        let system_id = parts
            .next()
            .and_then(|p| p.parse::<u64>().ok())
            .ok_or_else(|| bad("no system identifier"))?;
        let timeline = parts
            .next()
            .and_then(|p| p.parse::<u32>().ok())
            .filter(|&t| t > 0)
            .ok_or_else(|| bad("no timeline"))?;
        let lsn = parts
            .next()
            .and_then(crate::health::parse_lsn)
            .ok_or_else(|| bad("no WAL position"))?;
        if parts.next().is_some() {
            return Err(bad("trailing text"));
        }
        Ok(Token {
            system_id,
            timeline,
            lsn,
        })
    }

    /// What the token means for a cluster whose acting primary is `identity` (system
    /// identifier, timeline), when known.
    pub fn check(&self, identity: Option<(u64, u32)>) -> Check {
        match identity {
            None => Check::Unverified,
            Some((system_id, _)) if system_id != self.system_id => Check::OtherCluster,
            Some((_, timeline)) if timeline != self.timeline => Check::OtherTimeline,
            Some(_) => Check::Applies(self.lsn),
        }
    }
}

/// A presented token against the cluster it was presented to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Reads must see this position.
    Applies(u64),
    /// Another PostgreSQL cluster's position: ignored.
    OtherCluster,
    /// A position on another timeline (before a failover, or a diverged history): ignored.
    OtherTimeline,
    /// The cluster's identity is not known yet (no probe answered): checked again later.
    Unverified,
}

impl Check {
    /// What the client is told when the token is ignored.
    pub fn notice(self) -> Option<&'static str> {
        match self {
            Check::OtherCluster => Some(
                "causal token ignored: it belongs to another PostgreSQL cluster (system identifier)",
            ),
            Check::OtherTimeline => Some(
                "causal token ignored: it belongs to another timeline of this cluster (a failover happened since)",
            ),
            Check::Applies(_) | Check::Unverified => None,
        }
    }
}

/// Who shares required positions.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ScopeKey {
    Address { cluster: String, ip: IpAddr },
    User { cluster: String, user: String },
}

/// Entries untouched this long are forgotten (positions that old are replayed everywhere).
const SCOPE_TTL: Duration = Duration::from_secs(300);
/// Past this many scopes, expired ones are swept at the next update.
const SWEEP_AT: usize = 10_000;

/// The latest requirement of each scope.
#[derive(Debug, Default)]
pub struct Scopes {
    map: Mutex<HashMap<ScopeKey, (Requirement, Instant)>>,
}

impl Scopes {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ScopeKey, (Requirement, Instant)>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A session of `key` wrote: its scope's reads must see `req` too.
    pub fn raise(&self, key: &ScopeKey, req: Requirement, now: Instant) {
        let mut map = self.lock();
        if map.len() >= SWEEP_AT {
            map.retain(|_, (_, at)| now.saturating_duration_since(*at) < SCOPE_TTL);
        }
        let entry = map.entry(key.clone()).or_insert((Requirement::NONE, now));
        entry.0 = entry.0.and(req);
        entry.1 = now;
    }

    /// What the scope requires now.
    pub fn get(&self, key: &ScopeKey) -> Requirement {
        self.lock()
            .get(key)
            .map_or(Requirement::NONE, |(req, _)| *req)
    }

    /// Replaces a requirement still awaiting a sample by the resolved one (so sessions of the
    /// scope need not resolve it again).
    pub fn settle(&self, key: &ScopeKey, resolved: Requirement) {
        if let Some((req, _)) = self.lock().get_mut(key) {
            if req.sample_after.is_some() && resolved.sample_after.is_none() {
                *req = resolved;
            }
        }
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_bad_ones_say_why() {
        let t = Token {
            system_id: 7311234567890123456,
            timeline: 3,
            lsn: (0x16 << 32) | 0xB374_D848,
        };
        let text = t.format();
        assert_eq!(text, "pgm1:7311234567890123456:3:16/B374D848");
        assert_eq!(Token::parse(&text), Ok(t));
        assert_eq!(Token::parse(&format!(" {text} ")), Ok(t));
        let bad = [
            ("", "pgm1"),
            ("pgm2:1:1:0/1", "pgm1"),
            ("pgm1:x:1:0/1", "system identifier"),
            ("pgm1:1:0:0/1", "timeline"),
            ("pgm1:1:1:01", "WAL position"),
            ("pgm1:1:1:0/1:more", "trailing"),
        ];
        for (text, why) in bad {
            let e = Token::parse(text).unwrap_err();
            assert!(e.contains(why), "{text:?}: {e}");
        }
    }

    #[test]
    fn a_token_applies_only_to_its_cluster_and_timeline() {
        let t = Token {
            system_id: 9,
            timeline: 2,
            lsn: 500,
        };
        let cases = [
            (None, Check::Unverified),
            (Some((9, 2)), Check::Applies(500)),
            (Some((8, 2)), Check::OtherCluster),
            (Some((9, 3)), Check::OtherTimeline),
        ];
        for (identity, want) in cases {
            assert_eq!(t.check(identity), want, "{identity:?}");
        }
        assert!(Check::OtherTimeline.notice().unwrap().contains("timeline"));
        assert!(Check::Applies(1).notice().is_none());
    }

    #[test]
    fn scopes_keep_the_latest_requirement_per_key() {
        let s = Scopes::default();
        let now = Instant::now();
        let a = ScopeKey::Address {
            cluster: "app".into(),
            ip: "10.0.0.1".parse().unwrap(),
        };
        let b = ScopeKey::User {
            cluster: "app".into(),
            user: "app".into(),
        };
        assert!(s.get(&a).is_none());
        s.raise(&a, Requirement::lsn(100), now);
        s.raise(&a, Requirement::lsn(50), now);
        assert_eq!(s.get(&a), Requirement::lsn(100));
        assert!(s.get(&b).is_none(), "scopes do not mix");
        s.raise(&a, Requirement::awaiting(now), now);
        assert_eq!(s.get(&a).sample_after, Some(now));
        s.settle(&a, Requirement::lsn(300));
        assert_eq!(s.get(&a), Requirement::lsn(300));
    }
}
