//! The random histories: what happens to one planned transfer ([`Outcome`]), the steps of a
//! history ([`Op`]: puts, deletes, cycles, retries, clock jumps, server faults) and the
//! proptest strategy that generates them.

use super::*;

/// What happens to one planned transfer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Outcome {
    Ok,
    Transport,
    /// Downloads: the blob fails verification. Uploads: transport.
    Invalid,
    /// Uploads: the server stored it but the response was lost. Others: transport.
    Lost,
}

pub(crate) fn outcome(code: u8) -> Outcome {
    match code % 10 {
        0..=5 => Outcome::Ok,
        6 | 7 => Outcome::Transport,
        8 => Outcome::Invalid,
        _ => Outcome::Lost,
    }
}

#[derive(Clone, Debug)]
pub(crate) enum Op {
    Put {
        dev: usize,
        size: u64,
    },
    LocalDelete {
        dev: usize,
        pick: usize,
    },
    RemotePut {
        size: u64,
    },
    RemoteDelete {
        pick: usize,
    },
    /// The server loses a live blob without a tombstone.
    ServerLoses {
        pick: usize,
    },
    /// The server invents a tombstone (no delete proof).
    ServerForgesDelete {
        pick: usize,
    },
    /// The server is replaced by an empty one (new instance id, everything gone).
    ServerReset,
    /// Many puts on one device at once (enough to reach the mass-deletion guard's floor).
    BulkPut {
        dev: usize,
        n: usize,
    },
    /// Another device of the user deletes every live blob, each with its proof.
    MassRemoteDelete,
    Cycle {
        dev: usize,
        full: bool,
        outcomes: Vec<u8>,
        shuffle: u64,
    },
    Advance {
        secs: u64,
    },
    /// Due transfers between cycles: `Engine::run` wakes at the next due retry (10 s after a
    /// failure, while a cycle comes every 30 s). The engine lists first when an attempted
    /// upload (salt recorded) is due (`Engine::transfers_only`); if that listing fails the
    /// server is unreachable (`reachable == false`) and so is every transfer. A model that
    /// only ever transfers right after a listing would miss a re-upload decided on a stale
    /// view of the server.
    Retry {
        dev: usize,
        reachable: bool,
        outcomes: Vec<u8>,
        shuffle: u64,
    },
}

pub(crate) fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..2usize, 0..200_000u64).prop_map(|(dev, size)| Op::Put { dev, size }),
        1 => (0..2usize, any::<usize>()).prop_map(|(dev, pick)| Op::LocalDelete { dev, pick }),
        1 => (0..200_000u64).prop_map(|size| Op::RemotePut { size }),
        1 => any::<usize>().prop_map(|pick| Op::RemoteDelete { pick }),
        4 => (0..2usize, any::<bool>(), prop::collection::vec(any::<u8>(), 1..8), any::<u64>())
            .prop_map(|(dev, full, outcomes, shuffle)| Op::Cycle { dev, full, outcomes, shuffle }),
        2 => (1..90u64).prop_map(|secs| Op::Advance { secs }),
        2 => (0..2usize, any::<bool>(), prop::collection::vec(any::<u8>(), 1..8), any::<u64>())
            .prop_map(|(dev, reachable, outcomes, shuffle)| Op::Retry { dev, reachable, outcomes, shuffle }),
        1 => any::<usize>().prop_map(|pick| Op::ServerLoses { pick }),
        1 => any::<usize>().prop_map(|pick| Op::ServerForgesDelete { pick }),
        1 => Just(Op::ServerReset),
        1 => (0..2usize, 101..140usize).prop_map(|(dev, n)| Op::BulkPut { dev, n }),
        1 => Just(Op::MassRemoteDelete),
    ]
}
