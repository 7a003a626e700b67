//! The validated plan: what a pipeline will run, with every default filled in and every
//! path made absolute. Nothing here touches the network or the disk beyond reading the
//! pipeline file; `validate` and `run` share it.

use std::path::PathBuf;
use std::time::Duration;

pub use crate::sinks::SinkPlan;
pub use crate::sources::SourcePlan;

/// A pipeline, ready to run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Pipeline name.
    pub name: String,
    /// The file it came from.
    pub file: PathBuf,
    /// Time between checkpoints.
    pub checkpoint_interval: Duration,
    /// Checkpoint store URL (`file:///...` or `s3://...`).
    pub state_url: String,
    /// Settings the file left to their defaults.
    pub defaulted: Defaulted,
    /// `on_table_error = "isolate"`.
    pub isolate_tables: bool,
    /// The source.
    pub source: SourcePlan,
    /// The sink.
    pub sink: SinkPlan,
    /// Source table → lake table.
    pub routes: Vec<RoutePlan>,
    /// How rows are shaped before routing (`[[transform]]`, `[pipeline] metadata`).
    pub transforms: Vec<lakeshore_transform::TransformSpec>,
}

/// One `[[route]]`.
#[derive(Debug, Clone)]
pub struct RoutePlan {
    /// Glob over source table names.
    pub from: String,
    /// Lake table name.
    pub to: String,
}

/// Which settings the pipeline file left to their defaults (the daemon file may set
/// them for every pipeline).
#[derive(Debug, Clone, Copy, Default)]
pub struct Defaulted {
    /// `[pipeline] checkpoint_interval`.
    pub checkpoint_interval: bool,
    /// `[pipeline] state`.
    pub state: bool,
}

impl Plan {
    /// Apply the daemon file's defaults to the settings the pipeline file left out.
    pub fn apply_defaults(&mut self, daemon: &super::daemon::DaemonConfig) {
        if self.defaulted.checkpoint_interval
            && let Some(i) = daemon.checkpoint_interval
        {
            self.checkpoint_interval = i;
        }
        if self.defaulted.state
            && let Some(s) = &daemon.state
        {
            self.state_url = s.clone();
        }
    }

    /// True when several processes share the source (Kafka `scale_out`).
    pub fn scale_out(&self) -> bool {
        self.source.scale_out()
    }

    /// The lake table a source table lands in: the first matching route, else the
    /// source name without its database/schema prefix.
    pub fn target_table(&self, source_table: &str) -> String {
        self.route(source_table).0
    }

    /// [`Plan::target_table`], and whether a `[[route]]` chose it (several source tables
    /// may share a lake table only by a route).
    pub fn route(&self, source_table: &str) -> (String, bool) {
        for r in &self.routes {
            if glob_match(&r.from, source_table) {
                return (r.to.clone(), true);
            }
        }
        let bare = source_table.rsplit('.').next().unwrap_or(source_table);
        (bare.to_string(), false)
    }
}

pub use lakeshore_api::glob_match;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_sharded_tables() {
        assert!(glob_match("shop.orders_*", "shop.orders_07"));
        assert!(!glob_match("shop.orders_*", "shop.order_items"));
        assert!(glob_match("*.a*c", "db.abbc"));
        assert!(glob_match("exact", "exact"));
        assert!(!glob_match("exact", "exactly"));
    }
}
