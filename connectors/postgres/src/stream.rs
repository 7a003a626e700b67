//! The replication stream: a `pg_walstream` connection read by its own task, handing
//! decoded pgoutput events over a bounded channel; acknowledgements go back through the
//! crate's shared feedback LSN.

use std::sync::Arc;
use std::time::Duration;

use lakeshore_api::{Error, Result};
use pg_walstream::{
    CancellationToken, ChangeEvent, LogicalReplicationStream, ReplicationStreamConfig,
    SharedLsnFeedback, StreamingMode,
};
use tokio::sync::mpsc;

use crate::PostgresOptions;
use crate::server::{SESSION_OPTIONS, redact};

/// The replication stream, read by its own task.
pub(crate) struct Stream {
    pub rx: mpsc::Receiver<std::result::Result<ChangeEvent, String>>,
    pub feedback: Arc<SharedLsnFeedback>,
    pub cancel: CancellationToken,
    pub task: Option<tokio::task::JoinHandle<()>>,
    /// Highest LSN acked.
    pub acked: u64,
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Start the replication stream at `lsn` (0 = where the slot stands) in its own task.
pub(crate) async fn start_stream(opts: &PostgresOptions, lsn: u64) -> Result<Stream> {
    let conninfo = if opts.url.contains("://") {
        let sep = if opts.url.contains('?') { '&' } else { '?' };
        let options = SESSION_OPTIONS.replace(' ', "%20").replace('=', "%3D");
        format!("{}{sep}replication=database&options={options}", opts.url)
    } else {
        // libpq's key=value form.
        format!(
            "{} replication=database options='{SESSION_OPTIONS}'",
            opts.url
        )
    };
    let config = ReplicationStreamConfig::builder(opts.slot.clone(), opts.publication.clone())
        .with_protocol_version(1)
        .with_streaming_mode(StreamingMode::Off)
        .with_messages(true)
        .with_existing_slot_required(true)
        .with_feedback_interval(Duration::from_secs(1));
    let mut stream = LogicalReplicationStream::new(&conninfo, config)
        .await
        .map_err(|e| {
            // A server going down or coming up is a moment's condition (`run` retries);
            // anything else is the URL or the user's rights.
            if e.is_transient() {
                return Error::transient(format!(
                    "cannot open a replication connection ({}) for now: {e}",
                    redact(&opts.url)
                ));
            }
            Error::config(format!(
                "cannot open a replication connection ({}): {e}; check [source] url and \
                     that the user has the REPLICATION attribute",
                redact(&opts.url)
            ))
        })?;
    stream
        .start(if lsn == 0 { None } else { Some(lsn) })
        .await
        .map_err(|e| {
            Error::transient(format!(
                "cannot start replication from slot {}: {e}",
                opts.slot
            ))
        })?;
    let feedback = stream.shared_lsn_feedback.clone();
    let cancel = CancellationToken::new();
    let (tx, rx) = mpsc::channel(1024);
    let token = cancel.clone();
    let task = tokio::spawn(async move {
        loop {
            match stream.next_event(&token).await {
                Ok(ev) => {
                    if tx.send(Ok(ev)).await.is_err() {
                        break;
                    }
                }
                Err(e) => {
                    if !token.is_cancelled() {
                        let _ = tx.send(Err(e.to_string())).await;
                    }
                    break;
                }
            }
        }
        let _ = stream.stop().await;
    });
    Ok(Stream {
        rx,
        feedback,
        cancel,
        task: Some(task),
        acked: lsn,
    })
}
