//! Table maintenance: compaction (`plan`: what to do, as pure code; `compact`: the
//! rewrite and its commit), equality deletes written by other tools (`equality`),
//! snapshot expiry (`expire`), orphan files (`orphans`), and when the daemon compacts on
//! its own (`schedule`).

pub mod compact;
mod equality;
pub mod expire;
pub mod orphans;
mod plan;
pub mod schedule;
