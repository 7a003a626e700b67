//! Hive-style partitioned Parquet sink (`type = "hive"`), written exactly-once.
//!
//! Layout under the sink's root URL (`file://` or `s3://`, through `object_store`):
//!
//! ```text
//! <root>/<table>/<k1>=<v1>/<k2>=<v2>/part-<uuid>.parquet   committed files
//! <root>/<table>/<k1>=<v1>/<k2>=<v2>/_SUCCESS              the partition is complete
//! <root>/_lakeshore/<pipeline>/<table>/staging/            files of open checkpoints
//! <root>/_lakeshore/<pipeline>/<table>/commit.json         the last committed checkpoint
//! ```
//!
//! Exactly-once: a writer writes whole Parquet files under the staging prefix, outside
//! the table, so no reader of `<root>/<table>/**` ever sees a partial or uncommitted
//! file. The checkpoint record lists the staged files and their places in the table;
//! the commit moves each one there (a rename on a file system, a server-side copy on
//! S3; either way the file appears whole), writes `_SUCCESS` into the partitions it
//! completes, then records the checkpoint in `commit.json`. A commit that finds its
//! checkpoint in `commit.json` does nothing; a file already moved is skipped; so
//! recovery can repeat a commit that a crash cut short. Staged files that no checkpoint
//! record names are deleted when the table is opened (after recovery).
//!
//! Partition commit: a partition whose path is made of time functions (`dt=date(ts)`,
//! `hour=hour(ts)`) ends in event time; when the source's watermark passes that end plus
//! `commit_delay`, the next checkpoint writes `_SUCCESS` into it and runs the configured
//! command, once per partition (at least once: a command interrupted by a crash runs
//! again). Rows that arrive later still land in the partition and are counted in
//! `lakeshore_hive_late_rows_total`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use lakeshore_api::files::{Codec, writer_properties};
use lakeshore_api::{
    CommitContext, Error, ErrorKind, LakeCommit, PendingCommit, Result, Sink, SourcePosition,
    TableTarget, TableWriter,
};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};

pub mod partition;
mod writer;

pub use lakeshore_api::StorageOptions;
pub use writer::{HivePending, HiveWriter, StagedFile};

/// Validated `[sink]` settings for `type = "hive"`.
#[derive(Debug, Clone)]
pub struct HiveOptions {
    /// Root URL: `file:///abs/dir` or `s3://bucket/prefix`.
    pub url: String,
    /// `object_store` settings for the URL.
    pub storage: StorageOptions,
    /// The pipeline writing (names the staging and commit records).
    pub pipeline: String,
    /// Parquet codec.
    pub codec: Codec,
    /// Close a Parquet row group past this many encoded bytes.
    pub row_group_bytes: usize,
    /// Roll a file past this many bytes.
    pub target_file_size: u64,
    /// At most this many files of one table open at once.
    pub max_open_files: usize,
    /// Roll a file older than this (files always close at a checkpoint).
    pub rollover: Option<Duration>,
    /// How long after a partition's end (in event time) it is committed.
    pub commit_delay: Duration,
    /// Shell command run once per committed partition.
    pub partition_commit_command: Option<String>,
    /// Environment variables the command must not see: the ones lakeshore's
    /// configuration took secrets from.
    pub command_hides_env: Vec<String>,
}

/// How long `partition_commit_command` may run.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(300);

/// What the writers share.
pub(crate) struct Settings {
    pub store: Arc<dyn ObjectStore>,
    pub props: WriterProperties,
    pub target_file_size: u64,
    pub max_open_files: usize,
    pub rollover: Option<Duration>,
    pub commit_delay_micros: i64,
}

/// Where one table's files and records live.
#[derive(Debug, Clone)]
pub(crate) struct TableLayout {
    pub table: String,
    pub data: Path,
    pub staging: Path,
    pub marker: Path,
}

/// `commit.json`: the last checkpoint committed to a table by a pipeline.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Marker {
    pipeline: String,
    checkpoint_id: u64,
    position: serde_json::Value,
    /// Partitions written and not complete yet, with their end in event time.
    open: BTreeMap<String, i64>,
    committed_at_ms: u64,
    /// Lake tables the checkpoint changed (missing in markers of older versions).
    #[serde(default)]
    tables: Option<usize>,
}

/// A storage failure (an `object_store` error, or one parquet passed on from it); most
/// are worth retrying (the store may come back), refused credentials are not.
pub(crate) fn storage_error(
    what: &str,
    e: impl Into<Box<dyn std::error::Error + Send + Sync>>,
) -> Error {
    let err = match e.into().downcast::<object_store::Error>() {
        Ok(store) => Error::from(*store),
        Err(other) => Error::transient("storage").with_boxed_source(other),
    };
    let hint = if err.kind() == ErrorKind::Config {
        "; check [sink] storage credentials"
    } else {
        ""
    };
    err.context(format!("hive sink storage: {what}{hint}"))
}

/// A path from text written as it should appear in the store: partition values are
/// already escaped the Hive way, so object_store must not escape them again.
pub(crate) fn path_of(text: &str) -> Result<Path> {
    Path::parse(text).map_err(|e| {
        Error::config(format!(
            "{text} cannot be a storage path: {e}; rename the table"
        ))
    })
}

/// `<table dir>/<partition>/<name>`, the partition being empty for unpartitioned tables.
pub(crate) fn in_partition(data: &Path, partition: &str, name: &str) -> Result<Path> {
    if partition.is_empty() {
        path_of(&format!("{data}/{name}"))
    } else {
        path_of(&format!("{data}/{partition}/{name}"))
    }
}

/// The Hive sink.
pub struct HiveSink {
    opts: HiveOptions,
    settings: Arc<Settings>,
    root: Path,
}

fn parse_url(url: &str) -> Result<url::Url> {
    url::Url::parse(url).map_err(|e| Error::config(format!("[sink] path {url} is not a URL: {e}")))
}

impl HiveSink {
    /// Open the store and check that it answers.
    pub async fn connect(opts: HiveOptions) -> Result<Self> {
        let url = parse_url(&opts.url)?;
        if url.scheme() == "file" {
            let dir = url.to_file_path().map_err(|()| {
                Error::config(format!("[sink] path {} is not a local directory", opts.url))
            })?;
            std::fs::create_dir_all(&dir).map_err(|e| {
                Error::config(format!(
                    "cannot create {}: {e}; check [sink] path",
                    dir.display()
                ))
            })?;
        }
        let (store, root) =
            lakeshore_api::open_store(&url, &opts.storage.with_env()).map_err(|e| {
                Error::config(format!(
                    "[sink] path {}: {e}; check [sink] path and storage",
                    opts.url
                ))
            })?;
        let settings = Arc::new(Settings {
            store,
            // One set of properties for every table: hashed columns keep the common
            // dictionary bound here (docs/transforms.md).
            props: writer_properties(opts.codec, opts.row_group_bytes, []),
            target_file_size: opts.target_file_size,
            max_open_files: opts.max_open_files,
            rollover: opts.rollover,
            commit_delay_micros: i64::try_from(opts.commit_delay.as_micros()).unwrap_or(i64::MAX),
        });
        let sink = HiveSink {
            opts,
            settings,
            root,
        };
        sink.probe().await?;
        Ok(sink)
    }

    /// One listing: fails early on a wrong endpoint, bucket or credentials.
    async fn probe(&self) -> Result<usize> {
        let listed = self
            .settings
            .store
            .list_with_delimiter(Some(&self.root))
            .await
            .map_err(|e| storage_error(&format!("listing {}", self.opts.url), e))?;
        Ok(listed.common_prefixes.len())
    }

    /// Where `pipeline` (the name commits carry) keeps the staging and commit record of
    /// `table`.
    fn layout(&self, pipeline: &str, table: &str) -> Result<TableLayout> {
        let meta = format!("{}/_lakeshore/{pipeline}/{table}", self.root);
        Ok(TableLayout {
            table: table.to_string(),
            data: path_of(&format!("{}/{table}", self.root))?,
            staging: path_of(&format!("{meta}/staging"))?,
            marker: path_of(&format!("{meta}/commit.json"))?,
        })
    }

    async fn read_marker(&self, layout: &TableLayout) -> Result<Option<Marker>> {
        match self.settings.store.get(&layout.marker).await {
            Ok(r) => {
                let bytes = r
                    .bytes()
                    .await
                    .map_err(|e| storage_error("reading commit.json", e))?;
                let m = serde_json::from_slice(&bytes).map_err(|e| {
                    Error::internal(format!("{} is unreadable: {e}", layout.marker))
                })?;
                Ok(Some(m))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(storage_error("reading commit.json", e)),
        }
    }

    /// Move a staged file into the table; a file moved by an earlier attempt is skipped.
    async fn publish(&self, f: &StagedFile, checkpoint: u64) -> Result<()> {
        let store = &self.settings.store;
        let (from, to) = (path_of(&f.staged)?, path_of(&f.target)?);
        match store.rename(&from, &to).await {
            Ok(()) => Ok(()),
            Err(object_store::Error::NotFound { .. }) => match store.head(&to).await {
                Ok(_) => Ok(()),
                Err(object_store::Error::NotFound { .. }) => Err(Error::internal(format!(
                    "checkpoint {checkpoint}: staged file {from} is gone and {to} does not exist; was the staging directory cleaned by another copy of pipeline {}?",
                    self.opts.pipeline
                ))),
                Err(e) => Err(storage_error("checking a committed file", e)),
            },
            Err(e) => Err(storage_error(&format!("moving {from} into the table"), e)),
        }
    }

    async fn complete_partition(&self, layout: &TableLayout, partition: &str) -> Result<()> {
        self.settings
            .store
            .put(
                &in_partition(&layout.data, partition, "_SUCCESS")?,
                PutPayload::new(),
            )
            .await
            .map_err(|e| storage_error("writing _SUCCESS", e))?;
        metrics::counter!("lakeshore_hive_partitions_committed_total", "table" => layout.table.clone())
            .increment(1);
        tracing::info!(table = %layout.table, partition, "partition committed");
        if let Some(cmd) = &self.opts.partition_commit_command {
            let url = format!(
                "{}/{}/{}",
                self.opts.url.trim_end_matches('/'),
                layout.table,
                partition
            );
            let mut command = tokio::process::Command::new("sh");
            for name in &self.opts.command_hides_env {
                command.env_remove(name);
            }
            let run = command
                .arg("-c")
                .arg(cmd)
                .env("LAKESHORE_TABLE", &layout.table)
                .env("LAKESHORE_PARTITION", partition)
                .env("LAKESHORE_PARTITION_URL", &url)
                .stdin(std::process::Stdio::null())
                .kill_on_drop(true)
                .output();
            // A command that hangs must not stop the pipeline's commits for good.
            let out = tokio::time::timeout(COMMAND_TIMEOUT, run)
                .await
                .map_err(|_| {
                    Error::transient(format!(
                            "partition_commit_command for {}/{partition} did not finish within {} s; it was killed and will run again",
                            layout.table,
                            COMMAND_TIMEOUT.as_secs()
                        ),
                    )
                })?
                .map_err(|e| {
                    Error::config(format!("cannot run partition_commit_command: {e}"),
                    )
                })?;
            if !out.status.success() {
                let stderr = String::from_utf8_lossy(&out.stderr);
                let tail: String = stderr
                    .chars()
                    .rev()
                    .take(500)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                return Err(Error::transient(format!(
                    "partition_commit_command failed for {}/{partition} ({}): {}",
                    layout.table,
                    out.status,
                    tail.trim()
                )));
            }
        }
        Ok(())
    }

    /// Delete staged files that no checkpoint will commit (run after recovery).
    async fn remove_orphans(&self, layout: &TableLayout) -> Result<usize> {
        let store = &self.settings.store;
        let staged: Vec<_> = store
            .list(Some(&layout.staging))
            .try_collect()
            .await
            .map_err(|e| storage_error("listing staged files", e))?;
        for meta in &staged {
            match store.delete(&meta.location).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(storage_error("deleting an uncommitted file", e)),
            }
        }
        Ok(staged.len())
    }
}

/// `validate --connect`: reach the store.
pub async fn check(opts: &HiveOptions) -> Result<Vec<String>> {
    let sink = HiveSink::connect(opts.clone()).await?;
    let tables = sink.probe().await?; // connect() probed too; this counts the entries
    Ok(vec![format!(
        "hive sink: {} answers ({tables} entries at the root)",
        opts.url
    )])
}

#[async_trait::async_trait]
impl Sink for HiveSink {
    async fn open_table(&self, target: &TableTarget) -> Result<Box<dyn TableWriter>> {
        if target.name.is_empty() || target.name.contains('/') || target.name.starts_with('_') {
            return Err(Error::config(format!(
                "table name `{}` cannot be a directory of the Hive sink; rename it with [[route]]",
                target.name
            )));
        }
        let exprs = target
            .partitioning
            .iter()
            .map(|e| {
                partition::parse_expr(e)
                    .map_err(|m| Error::config(format!("table {}: {m}", target.name)))
            })
            .collect::<Result<Vec<_>>>()?;
        let layout = self.layout(&self.opts.pipeline, &target.name)?;
        let open = self
            .read_marker(&layout)
            .await?
            .map(|m| m.open)
            .unwrap_or_default();
        let removed = self.remove_orphans(&layout).await?;
        if removed > 0 {
            tracing::info!(table = %target.name, files = removed, "removed uncommitted files of an interrupted run");
        }
        Ok(Box::new(HiveWriter::new(
            self.settings.clone(),
            layout,
            exprs,
            target.source.clone(),
            open,
        )?))
    }

    async fn commit(&self, pending: &PendingCommit, ctx: &CommitContext) -> Result<bool> {
        let p: HivePending = serde_json::from_value(pending.payload.clone()).map_err(|e| {
            Error::internal(format!(
                "checkpoint {}: not a Hive commit: {e}",
                ctx.checkpoint_id
            ))
        })?;
        // The commit's own name: a shared pipeline commits what an earlier owner left.
        let layout = self.layout(&ctx.pipeline, &pending.table)?;
        let marker = self.read_marker(&layout).await?;
        match &marker {
            // Another member's checkpoint, committed on its behalf (scale-out hand-over):
            // it commits in order, so a later one in the marker means this one is in.
            Some(m)
                if m.checkpoint_id > ctx.checkpoint_id && ctx.pipeline != self.opts.pipeline =>
            {
                return Ok(false);
            }
            Some(m) if m.checkpoint_id > ctx.checkpoint_id => {
                // Checkpoint ids only grow: the pipeline's state was reset or moved.
                return Err(Error::config(format!(
                    "table {}: {} says pipeline {} committed checkpoint {}, but the pipeline's state is at checkpoint {}; was [pipeline] state changed or deleted? Restore it, or use a new pipeline name",
                    pending.table, layout.marker, ctx.pipeline, m.checkpoint_id, ctx.checkpoint_id
                )));
            }
            Some(m) if m.checkpoint_id == ctx.checkpoint_id => return Ok(false),
            _ => {}
        }
        let open_before = marker.map(|m| m.open).unwrap_or_default();
        if p.files.is_empty() && p.complete.is_empty() && p.open == open_before {
            // Nothing changes: spare the store a write per idle checkpoint.
            return Ok(false);
        }
        for f in &p.files {
            self.publish(f, ctx.checkpoint_id).await?;
        }
        for partition in &p.complete {
            self.complete_partition(&layout, partition).await?;
        }
        let marker = Marker {
            pipeline: ctx.pipeline.clone(),
            checkpoint_id: ctx.checkpoint_id,
            position: ctx.position.0.clone(),
            open: p.open,
            committed_at_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            tables: Some(ctx.tables),
        };
        let body = serde_json::to_vec(&marker).map_err(|e| Error::internal(e.to_string()))?;
        self.settings
            .store
            .put(&layout.marker, PutPayload::from(body))
            .await
            .map_err(|e| storage_error("writing commit.json", e))?;
        Ok(true)
    }

    async fn last_commits(&self, pipeline: &str) -> Result<Vec<LakeCommit>> {
        let meta = path_of(&format!("{}/_lakeshore/{pipeline}", self.root))?;
        let listed = self
            .settings
            .store
            .list_with_delimiter(Some(&meta))
            .await
            .map_err(|e| storage_error("listing the pipeline's commit records", e))?;
        let mut commits = Vec::new();
        for dir in listed.common_prefixes {
            let Some(table) = dir.filename() else {
                continue;
            };
            if let Some(m) = self.read_marker(&self.layout(pipeline, table)?).await? {
                commits.push(LakeCommit {
                    table: table.to_string(),
                    checkpoint_id: m.checkpoint_id,
                    position: SourcePosition(m.position),
                    tables: m.tables,
                });
            }
        }
        Ok(commits)
    }
}

#[cfg(test)]
mod tests {
    use arrow_array::{Int64Array, RecordBatch, StringArray};
    use arrow_schema::{DataType, Field, Schema};
    use lakeshore_api::{ChangeBatch, SourcePosition, TableSchema};

    use super::*;

    fn options(dir: &std::path::Path) -> HiveOptions {
        HiveOptions {
            url: format!("file://{}", dir.display()),
            storage: StorageOptions::default(),
            pipeline: "p".into(),
            codec: Codec::Snappy,
            row_group_bytes: 1 << 20,
            target_file_size: 128 << 20,
            max_open_files: 16,
            rollover: None,
            commit_delay: Duration::ZERO,
            partition_commit_command: None,
            command_hides_env: Vec::new(),
        }
    }

    fn target() -> TableTarget {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("region", DataType::Utf8, true),
        ]));
        TableTarget {
            source: TableSchema {
                name: "src.t".into(),
                schema,
                key: vec![],
            },
            name: "t".into(),
            partitioning: vec!["region".into()],
        }
    }

    fn batch(ids: std::ops::Range<i64>) -> ChangeBatch {
        let regions: Vec<&str> = ids
            .clone()
            .map(|i| ["eu", "us/w"][i as usize % 2])
            .collect();
        let rows = RecordBatch::try_new(
            target().source.schema,
            vec![
                Arc::new(Int64Array::from_iter_values(ids)),
                Arc::new(StringArray::from(regions)),
            ],
        )
        .unwrap();
        ChangeBatch::inserts("src.t".into(), rows)
    }

    fn ctx(id: u64) -> CommitContext {
        CommitContext {
            pipeline: "p".into(),
            checkpoint_id: id,
            position: SourcePosition::sequence(id),
            tables: 1,
        }
    }

    fn files_under(dir: &std::path::Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                if e.path().is_dir() {
                    stack.push(e.path());
                } else {
                    out.push(e.path().strip_prefix(dir).unwrap().display().to_string());
                }
            }
        }
        out.sort();
        out
    }

    /// Scale-out: member b commits what member a decided (a hand-over); a's own marker
    /// says whether it is in, and a later one from a means it is.
    #[tokio::test]
    async fn a_member_commits_another_members_checkpoint_under_its_name() {
        let dir = std::env::temp_dir().join(format!("lakeshore-hive-{}", uuid::Uuid::new_v4()));
        let as_member = |m: &str| HiveOptions {
            pipeline: format!("p@{m}"),
            ..options(&dir)
        };
        let a = HiveSink::connect(as_member("a")).await.unwrap();
        let b = HiveSink::connect(as_member("b")).await.unwrap();
        let mut w = a.open_table(&target()).await.unwrap();
        let ctx_a = |id| CommitContext {
            pipeline: "p@a".into(),
            ..ctx(id)
        };
        w.write(batch(0..10)).await.unwrap();
        let p1 = w.prepare(1).await.unwrap();
        w.write(batch(10..20)).await.unwrap();
        let p2 = w.prepare(2).await.unwrap();
        assert!(b.commit(&p1, &ctx_a(1)).await.unwrap());
        assert!(dir.join("_lakeshore/p@a/t/commit.json").exists());
        assert!(!dir.join("_lakeshore/p@b").exists());
        assert!(!a.commit(&p1, &ctx_a(1)).await.unwrap());
        assert!(a.commit(&p2, &ctx_a(2)).await.unwrap());
        // b late with a's checkpoint 1: already in.
        assert!(!b.commit(&p1, &ctx_a(1)).await.unwrap());
        assert_eq!(files_under(&dir.join("t")).len(), 4);
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// The lake answers for lost state: each table's `commit.json` gives its pipeline's
    /// newest checkpoint, position and table count; other pipelines' are not listed.
    #[tokio::test]
    async fn last_commits_are_read_from_the_commit_records() {
        let dir = std::env::temp_dir().join(format!("lakeshore-hive-{}", uuid::Uuid::new_v4()));
        let sink = HiveSink::connect(options(&dir)).await.unwrap();
        assert!(sink.last_commits("p").await.unwrap().is_empty());
        let mut w = sink.open_table(&target()).await.unwrap();
        for id in 1..=3 {
            w.write(batch(0..10)).await.unwrap();
            let p = w.prepare(id).await.unwrap();
            assert!(!p.empty);
            assert!(sink.commit(&p, &ctx(id)).await.unwrap());
        }
        let idle = w.prepare(4).await.unwrap();
        assert!(idle.empty);
        assert!(!sink.commit(&idle, &ctx(4)).await.unwrap());
        let commits = sink.last_commits("p").await.unwrap();
        assert_eq!(
            commits,
            vec![LakeCommit {
                table: "t".into(),
                checkpoint_id: 3,
                position: SourcePosition::sequence(3),
                tables: Some(1),
            }]
        );
        assert!(sink.last_commits("other").await.unwrap().is_empty());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn commits_are_idempotent_and_orphans_are_removed() {
        let dir = std::env::temp_dir().join(format!("lakeshore-hive-{}", uuid::Uuid::new_v4()));
        let sink = HiveSink::connect(options(&dir)).await.unwrap();
        let mut w = sink.open_table(&target()).await.unwrap();
        let table = dir.join("t");

        // Prepared files are durable but not in the table.
        w.write(batch(0..10)).await.unwrap();
        let p1 = w.prepare(1).await.unwrap();
        assert_eq!(p1.added_rows, 10);
        assert!(files_under(&table).is_empty());
        assert!(sink.commit(&p1, &ctx(1)).await.unwrap());
        let first = files_under(&table);
        assert_eq!(first.len(), 2, "{first:?}");
        assert!(first.iter().any(|f| f.starts_with("region=eu/part-")));
        // Escaped once, the Hive way.
        assert!(
            first.iter().any(|f| f.starts_with("region=us%2Fw/part-")),
            "{first:?}"
        );
        // Again: nothing happens.
        assert!(!sink.commit(&p1, &ctx(1)).await.unwrap());
        assert_eq!(files_under(&table), first);

        // A commit cut short after moving one file: repeating it moves the rest.
        w.write(batch(10..20)).await.unwrap();
        let p2 = w.prepare(2).await.unwrap();
        let pending: HivePending = serde_json::from_value(p2.payload.clone()).unwrap();
        sink.publish(&pending.files[0], 2).await.unwrap();
        assert!(sink.commit(&p2, &ctx(2)).await.unwrap());
        assert_eq!(files_under(&table).len(), 4);

        // Files of a checkpoint no record names are deleted when the table reopens.
        w.write(batch(20..30)).await.unwrap();
        let _lost = w.prepare(3).await.unwrap();
        let staging = dir.join("_lakeshore/p/t/staging");
        assert_eq!(files_under(&staging).len(), 2);
        let _w = sink.open_table(&target()).await.unwrap();
        assert!(files_under(&staging).is_empty());
        assert_eq!(files_under(&table).len(), 4);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn partitions_complete_when_the_watermark_passes_their_end() {
        let dir = std::env::temp_dir().join(format!("lakeshore-hive-{}", uuid::Uuid::new_v4()));
        let mut opts = options(&dir);
        let log = dir.join("log");
        // SAFETY: a variable only this test reads.
        unsafe { std::env::set_var("LAKESHORE_TEST_HIDDEN_SECRET", "hunter2") };
        opts.command_hides_env = vec!["LAKESHORE_TEST_HIDDEN_SECRET".into()];
        opts.partition_commit_command = Some(format!(
            "echo \"$LAKESHORE_TABLE $LAKESHORE_PARTITION${{LAKESHORE_TEST_HIDDEN_SECRET}}\" >> {}",
            log.display()
        ));
        opts.commit_delay = Duration::from_secs(60);
        let sink = HiveSink::connect(opts).await.unwrap();
        let schema = Arc::new(Schema::new(vec![Field::new(
            "ts",
            DataType::Timestamp(arrow_schema::TimeUnit::Microsecond, None),
            true,
        )]));
        let mut t = target();
        t.source.schema = schema.clone();
        t.partitioning = vec!["dt=date(ts)".into()];
        let day = 86_400_000_000i64;
        let rows = RecordBatch::try_new(
            schema,
            vec![Arc::new(arrow_array::TimestampMicrosecondArray::from(
                vec![day * 20_000, day * 20_001 + 5],
            ))],
        )
        .unwrap();
        let mut w = sink.open_table(&t).await.unwrap();
        w.write(ChangeBatch::inserts("src.t".into(), rows))
            .await
            .unwrap();
        // The first day ends at 20_001 days; with the delay it completes a minute later.
        w.watermark(day * 20_001 + 59_000_000);
        let p = w.prepare(1).await.unwrap();
        sink.commit(&p, &ctx(1)).await.unwrap();
        assert!(!dir.join("t/dt=2024-10-04/_SUCCESS").exists());
        w.watermark(day * 20_001 + 60_000_000);
        let p = w.prepare(2).await.unwrap();
        sink.commit(&p, &ctx(2)).await.unwrap();
        assert!(dir.join("t/dt=2024-10-04/_SUCCESS").exists());
        assert!(!dir.join("t/dt=2024-10-05/_SUCCESS").exists());
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "t dt=2024-10-04\n");
        // A restarted writer still knows the open partition.
        let mut w = sink.open_table(&t).await.unwrap();
        w.watermark(day * 20_003);
        let p = w.prepare(3).await.unwrap();
        sink.commit(&p, &ctx(3)).await.unwrap();
        assert!(dir.join("t/dt=2024-10-05/_SUCCESS").exists());
        assert_eq!(
            std::fs::read_to_string(&log).unwrap(),
            "t dt=2024-10-04\nt dt=2024-10-05\n"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
