//! Scale-out: several processes run one pipeline and share its source's partitions.
//!
//! A source that can be shared (Kafka with a consumer group) splits its position into
//! **units** (a topic partition each), named by the source. In a shared pipeline its
//! [`SourcePosition`](crate::SourcePosition) is `{"units": {unit: position}}` (see
//! [`SourcePosition::units`](crate::SourcePosition::units)) and holds only the units the
//! process owns. The engine keeps the pipeline's ledger: one linear log of who owns which
//! unit and up to where the lake holds it. A checkpoint is decided only if every unit in
//! its position is still owned by the process deciding it, so a process that stalled
//! while its partitions moved on can never commit them twice.

use std::collections::{BTreeMap, BTreeSet};

use crate::Result;

/// What [`Ledger::acquire`] found.
#[derive(Debug, Default, Clone)]
pub struct Acquired {
    /// Where the lake holds each taken unit that was ever committed.
    pub positions: BTreeMap<String, serde_json::Value>,
    /// Every unit the ledger knows (taken or not), e.g. to tell a new partition of a
    /// topic read before from one of a topic never read.
    pub known: BTreeSet<String>,
}

/// The ledger a shared source takes its units over from.
#[async_trait::async_trait]
pub trait Ledger: Send + Sync {
    /// This process's name in the pipeline's group.
    fn member(&self) -> &str;

    /// Take `units` over for this process and return where the lake holds each one that
    /// was ever committed. The last decided checkpoint of every earlier owner is
    /// committed before the takeover is recorded, so the lake is complete up to the
    /// returned positions.
    async fn acquire(&self, units: &[String]) -> Result<Acquired>;
}
