//! Replica mode (`[replicas]`, `--replica`): several daemons over the same pipeline files,
//! each pipeline run by one of them at a time, by a lease in the pipeline's state store
//! ([`lakeshore_engine::lease`]). Every `lease_ttl / 3` this loop first renews the leases
//! this replica holds, all at once and each within a third of the TTL (a lease lost, or
//! not renewed for two thirds of the TTL, stops its pipeline here), then looks at the
//! others and takes the free ones: released by their holder, or with a heartbeat that
//! stood still for `lease_ttl`. With `count`, a replica takes a free lease of a pipeline
//! another ordinal prefers only once it stayed free for `lease_ttl` more. Checkpoint
//! fencing keeps exactly-once even if two replicas ever overlap.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use futures::future::join_all;
use lakeshore_engine::lease::{Holder, Lease};

use super::Daemon;
use crate::config::daemon::Replica;

/// What the loop needs of one pipeline entry.
struct Known {
    plan: crate::config::Plan,
    running: bool,
    paused: bool,
    /// Its run ended fenced: the replica it took the lease from wrote a checkpoint last.
    fenced: bool,
}

/// A pipeline's lease, with the state store it is in.
pub(super) struct Held {
    url: String,
    lease: Lease,
}

/// The lease loop of `daemon` as replica `me`, until the process stops.
pub(super) async fn run(daemon: Arc<Daemon>, me: Replica) {
    let mut free_since: HashMap<String, Instant> = HashMap::new();
    let step = me.lease_ttl / 3;
    loop {
        let known = known(&daemon);
        let mut leases = daemon.leases.lock().await;
        sync(&mut leases, &known, &me, &daemon).await;
        // Heartbeats first, all at once: a slow store must not delay them past the TTL.
        let renewals = join_all(leases.iter_mut().filter(|(_, h)| h.lease.held()).map(
            |(name, h)| async move {
                (
                    name.clone(),
                    tokio::time::timeout(step, h.lease.renew()).await,
                )
            },
        ))
        .await;
        for (name, renewed) in renewals {
            let (Some(h), Some(k)) = (leases.get_mut(&name), known.get(&name)) else {
                continue;
            };
            match renewed {
                Ok(Ok(true)) => {
                    if (!k.running || k.fenced) && !k.paused {
                        if k.fenced {
                            tracing::info!(pipeline = %name, "fenced by the replica that held it before; starting again from its checkpoint");
                        }
                        daemon.start(&name);
                    }
                }
                Ok(Ok(false)) => {
                    tracing::warn!(pipeline = %name, replica = %me.id, "another replica took the pipeline's lease; stopping it here");
                    daemon.lost(&name);
                }
                Ok(Err(_)) | Err(_) if !h.lease.fresh(me.lease_ttl) => {
                    tracing::warn!(pipeline = %name, replica = %me.id, "the lease could not be renewed in time (state store); stopping the pipeline here, another replica may take it");
                    h.lease.abandon();
                    daemon.lost(&name);
                }
                Ok(Err(e)) => {
                    tracing::warn!(pipeline = %name, error = %e, "renewing the lease failed; trying again");
                }
                Err(_) => {
                    tracing::warn!(pipeline = %name, "renewing the lease is slow; trying again")
                }
            }
        }
        if !daemon.shutting_down() {
            take_free(&daemon, &me, &known, &mut leases, &mut free_since).await;
        }
        drop(leases);
        tokio::time::sleep(step).await;
    }
}

fn known(daemon: &Daemon) -> BTreeMap<String, Known> {
    daemon
        .registry()
        .pipelines
        .iter()
        .map(|(n, e)| {
            let known = Known {
                plan: e.plan.clone(),
                running: e.run.as_ref().is_some_and(|r| !r.ended()),
                paused: e.paused,
                fenced: e.status.failed_fenced(),
            };
            (n.clone(), known)
        })
        .collect()
}

/// Leases for the pipelines known: new ones opened, those of removed pipelines (or of a
/// state store the file no longer names) released.
async fn sync(
    leases: &mut BTreeMap<String, Held>,
    known: &BTreeMap<String, Known>,
    me: &Replica,
    daemon: &Daemon,
) {
    let stale: Vec<String> = leases
        .iter()
        .filter(|(n, h)| known.get(*n).is_none_or(|k| k.plan.state_url != h.url))
        .map(|(n, _)| n.clone())
        .collect();
    for name in stale {
        if let Some(mut h) = leases.remove(&name) {
            if h.lease.held() {
                daemon.lost(&name);
            }
            let _ = h.lease.release().await;
        }
    }
    for (name, k) in known {
        if leases.contains_key(name) {
            continue;
        }
        match Lease::open(&k.plan.state_url, name, &k.plan.sink.storage(), &me.id) {
            Ok(lease) => {
                let url = k.plan.state_url.clone();
                leases.insert(name.clone(), Held { url, lease });
            }
            Err(e) => {
                tracing::warn!(pipeline = %name, error = %e, "cannot reach the pipeline's lease in its state store");
            }
        }
    }
}

/// Look at the leases this replica does not hold, and take the free ones it may.
async fn take_free(
    daemon: &Arc<Daemon>,
    me: &Replica,
    known: &BTreeMap<String, Known>,
    leases: &mut BTreeMap<String, Held>,
    free_since: &mut HashMap<String, Instant>,
) {
    let step = me.lease_ttl / 3;
    let looks = join_all(
        leases
            .iter_mut()
            .filter(|(n, h)| !h.lease.held() && known.get(*n).is_some_and(|k| !k.paused))
            .map(|(name, h)| async move {
                let seen = tokio::time::timeout(step, h.lease.holder(me.lease_ttl)).await;
                (name.clone(), seen)
            }),
    )
    .await;
    for (name, seen) in looks {
        match seen {
            Ok(Ok(Holder::Free)) => {}
            Ok(Ok(_)) => {
                free_since.remove(&name);
                continue;
            }
            Ok(Err(e)) => {
                tracing::warn!(pipeline = %name, error = %e, "reading the lease failed; trying again");
                continue;
            }
            Err(_) => continue,
        }
        let since = *free_since.entry(name.clone()).or_insert_with(Instant::now);
        if !me.prefers(&name) && since.elapsed() < me.lease_ttl {
            continue;
        }
        let Some(h) = leases.get_mut(&name) else {
            continue;
        };
        match tokio::time::timeout(step, h.lease.acquire(me.lease_ttl)).await {
            Ok(Ok(true)) => {
                free_since.remove(&name);
                tracing::info!(pipeline = %name, replica = %me.id, "took the pipeline's lease; starting it here");
                daemon.held().insert(name.clone());
                daemon.start(&name);
            }
            Ok(Ok(false)) => {}
            Ok(Err(e)) => tracing::warn!(pipeline = %name, error = %e, "taking the lease failed"),
            Err(_) => tracing::warn!(pipeline = %name, "taking the lease is slow; trying again"),
        }
    }
}

/// Give up every lease this replica holds (after its pipelines stopped): the other
/// replicas take them over at once.
pub(super) async fn release_all(daemon: &Daemon) {
    let mut leases = daemon.leases.lock().await;
    for (name, h) in leases.iter_mut() {
        if let Err(e) = h.lease.release().await {
            tracing::warn!(pipeline = %name, error = %e, "could not release the lease; another replica takes over after lease_ttl");
        }
    }
    daemon.held().clear();
}
