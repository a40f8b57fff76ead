//! The routing decision, pure: which node serves the next batch of a session, and why.
//! No sockets, clocks or randomness here; the session relays to whatever this returns.
//!
//! Until statement classification lands, every batch goes to the primary; the inputs below are
//! the ones that exist today, and the shape (input struct in, target + reason out) is the
//! contract the read/write router extends.

use crate::protocol::backend::TxnStatus;

/// Where a batch goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Primary,
}

/// Why it goes there; becomes a metric label, so the set is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The proxy does not split reads yet: everything is served by the primary.
    PrimaryOnly,
    /// The session is inside a transaction block, which never changes backend.
    InTransaction,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::PrimaryOnly => "primary_only",
            Reason::InTransaction => "in_transaction",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub target: Target,
    pub reason: Reason,
}

/// What the decision is made from.
#[derive(Debug, Clone, Copy)]
pub struct RouteInput {
    /// Transaction status from the last ReadyForQuery.
    pub txn: TxnStatus,
}

pub fn decide(input: &RouteInput) -> Decision {
    let reason = match input.txn {
        TxnStatus::InTransaction | TxnStatus::Failed => Reason::InTransaction,
        TxnStatus::Idle => Reason::PrimaryOnly,
    };
    Decision {
        target: Target::Primary,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decision_table() {
        let cases = [
            (TxnStatus::Idle, Target::Primary, Reason::PrimaryOnly),
            (
                TxnStatus::InTransaction,
                Target::Primary,
                Reason::InTransaction,
            ),
            (TxnStatus::Failed, Target::Primary, Reason::InTransaction),
        ];
        for (txn, target, reason) in cases {
            assert_eq!(
                decide(&RouteInput { txn }),
                Decision { target, reason },
                "{txn:?}"
            );
        }
    }
}
