//! Pipeline leases: which of several daemon replicas runs a pipeline. A lease lives in
//! the pipeline's own state store, beside its checkpoint records, and needs nothing of
//! the store but create-if-absent (the same as the records' fencing), so it works on
//! local files, S3, GCS and Azure alike.
//!
//! - **Terms.** The lease is a series of terms, `lease/<n>.json`, each naming its holder.
//!   The newest term is the lease; a replica takes it by creating the next term
//!   (create-if-absent: of two replicas, one wins).
//! - **Heartbeats.** The holder overwrites `lease/<n>.beat` with a counter every
//!   `ttl / 3`, and looks whether a newer term exists (then it lost the lease and stops
//!   the pipeline). Another replica judges a term expired when its heartbeat has not
//!   changed for `ttl` **on its own clock** (no clock is compared with another's).
//! - **Hand-over.** A holder that stops cleanly writes `lease/<n>.released`: the next
//!   replica takes over at once instead of after `ttl`.
//! - **Safety does not rest on time.** Should two replicas ever both run a pipeline (a
//!   holder stalled past `ttl`), the checkpoint records' create-if-absent still lets only
//!   one of them write each checkpoint: the other is fenced and stops.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lakeshore_api::{Error, Result};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};

use crate::state::{numbered, open_store, read_record, store_error};

/// One term of a lease.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Term {
    /// The replica holding it.
    pub holder: String,
    /// When it was taken, ms since the epoch (for people reading the store).
    pub taken_at_ms: u64,
}

/// What a replica saw of a lease the last time it looked.
#[derive(Debug, Clone, Default)]
struct Seen {
    term: Option<u64>,
    beat: Option<Vec<u8>>,
    since: Option<Instant>,
}

/// The lease of one pipeline, as one replica handles it.
pub struct Lease {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    holder: String,
    /// The term this replica holds, with its heartbeat counter.
    held: Option<(u64, u64)>,
    /// The last successful heartbeat.
    renewed: Option<Instant>,
    seen: Seen,
}

/// Who holds a lease.
#[derive(Debug, Clone, PartialEq)]
pub enum Holder {
    /// Nobody: no term yet, or the newest was released or expired.
    Free,
    /// This replica.
    Me,
    /// Another replica, alive as far as its heartbeat says.
    Other(String),
}

impl Lease {
    /// The lease of `pipeline` in the state store at `url`, handled by replica `holder`.
    pub fn open(
        url: &str,
        pipeline: &str,
        storage: &lakeshore_api::StorageOptions,
        holder: &str,
    ) -> Result<Self> {
        let (store, base) = open_store(url, storage)?;
        Ok(Self::at(store, base.join(pipeline).join("lease"), holder))
    }

    /// The lease of `pipeline` on `store` (tests use `object_store::memory::InMemory`).
    pub fn on(store: Arc<dyn ObjectStore>, pipeline: &str, holder: &str) -> Self {
        Self::at(store, Path::from(pipeline).join("lease"), holder)
    }

    fn at(store: Arc<dyn ObjectStore>, prefix: Path, holder: &str) -> Self {
        Lease {
            store,
            prefix,
            holder: holder.to_string(),
            held: None,
            renewed: None,
            seen: Seen::default(),
        }
    }

    fn path(&self, term: u64, ext: &str) -> Path {
        self.prefix.clone().join(format!("{term:020}.{ext}"))
    }

    async fn newest(&self) -> Result<Option<u64>> {
        Ok(
            numbered(self.store.as_ref(), &self.prefix, "listing a lease")
                .await?
                .pop(),
        )
    }

    async fn exists(&self, path: &Path) -> Result<bool> {
        match self.store.head(path).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(store_error("reading a lease", e)),
        }
    }

    async fn beat_of(&self, term: u64) -> Result<Option<Vec<u8>>> {
        match self.store.get(&self.path(term, "beat")).await {
            Ok(r) => Ok(Some(
                r.bytes()
                    .await
                    .map_err(|e| store_error("reading a lease", e))?
                    .to_vec(),
            )),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(store_error("reading a lease", e)),
        }
    }

    /// Who holds the lease now; a term whose heartbeat stood still for `ttl` (as this
    /// replica has watched it) is free.
    pub async fn holder(&mut self, ttl: Duration) -> Result<Holder> {
        Ok(self.look(ttl).await?.0)
    }

    /// [`Self::holder`], with the newest term it judged (0: none).
    async fn look(&mut self, ttl: Duration) -> Result<(Holder, u64)> {
        let Some(term) = self.newest().await? else {
            return Ok((Holder::Free, 0));
        };
        Ok((self.judge(term, ttl).await?, term))
    }

    async fn judge(&mut self, term: u64, ttl: Duration) -> Result<Holder> {
        if self.held.is_some_and(|(t, _)| t == term) {
            return Ok(Holder::Me);
        }
        if self.exists(&self.path(term, "released")).await? {
            return Ok(Holder::Free);
        }
        let beat = self.beat_of(term).await?;
        if self.seen.term != Some(term) || self.seen.beat != beat {
            self.seen = Seen {
                term: Some(term),
                beat,
                since: Some(Instant::now()),
            };
        }
        if self.seen.since.is_some_and(|s| s.elapsed() >= ttl) {
            return Ok(Holder::Free);
        }
        let who: Option<Term> =
            read_record(self.store.as_ref(), &self.path(term, "json"), "lease term").await?;
        Ok(Holder::Other(who.map_or_else(String::new, |t| t.holder)))
    }

    /// Take the lease if it is free (see [`Self::holder`]); true when this replica holds
    /// it afterwards.
    pub async fn acquire(&mut self, ttl: Duration) -> Result<bool> {
        let judged = match self.look(ttl).await? {
            (Holder::Me, _) => return Ok(true),
            (Holder::Other(_), _) => return Ok(false),
            (Holder::Free, term) => term,
        };
        // Exactly the term after the one judged free: had another replica taken that one
        // meanwhile, it exists and the take fails.
        self.take(judged + 1).await
    }

    /// Create term `next`, if nobody did.
    async fn take(&mut self, next: u64) -> Result<bool> {
        let term = Term {
            holder: self.holder.clone(),
            taken_at_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        };
        let body = serde_json::to_vec(&term).map_err(|e| Error::internal(e.to_string()))?;
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match self
            .store
            .put_opts(&self.path(next, "json"), PutPayload::from(body), opts)
            .await
        {
            Ok(_) => {}
            Err(object_store::Error::AlreadyExists { .. }) => return Ok(false),
            Err(e) => return Err(store_error("taking a lease", e)),
        }
        self.held = Some((next, 0));
        self.renew().await?;
        // Older terms are history; their files go (best effort).
        for old in numbered(self.store.as_ref(), &self.prefix, "listing a lease").await? {
            if old + 1 < next {
                for ext in ["json", "beat", "released"] {
                    let _ = self.store.delete(&self.path(old, ext)).await;
                }
            }
        }
        Ok(true)
    }

    /// The holder's heartbeat; false when the lease was lost (a newer term exists, or
    /// none is held).
    pub async fn renew(&mut self) -> Result<bool> {
        let Some((term, beat)) = self.held else {
            return Ok(false);
        };
        if self.newest().await? != Some(term) {
            self.held = None;
            return Ok(false);
        }
        self.store
            .put(
                &self.path(term, "beat"),
                PutPayload::from(beat.to_string().into_bytes()),
            )
            .await
            .map_err(|e| store_error("renewing a lease", e))?;
        self.held = Some((term, beat + 1));
        self.renewed = Some(Instant::now());
        Ok(true)
    }

    /// Whether the last heartbeat is recent enough that no other replica can have taken
    /// the lease for expired: younger than two thirds of `ttl`.
    pub fn fresh(&self, ttl: Duration) -> bool {
        self.renewed.is_some_and(|r| r.elapsed() < ttl * 2 / 3)
    }

    /// Stop holding the lease without a word (its heartbeats could not be written: by now
    /// another replica may hold it).
    pub fn abandon(&mut self) {
        self.held = None;
    }

    /// Give the lease up (after the pipeline stopped): another replica takes it at once.
    pub async fn release(&mut self) -> Result<()> {
        let Some((term, _)) = self.held.take() else {
            return Ok(());
        };
        self.store
            .put(&self.path(term, "released"), PutPayload::from_static(b"{}"))
            .await
            .map_err(|e| store_error("releasing a lease", e))?;
        Ok(())
    }

    /// Whether this replica holds the lease (as of its last renewal).
    pub fn held(&self) -> bool {
        self.held.is_some()
    }
}

#[cfg(test)]
mod tests {
    use object_store::memory::InMemory;

    use super::*;

    const TTL: Duration = Duration::from_millis(200);

    #[tokio::test]
    async fn one_replica_holds_a_lease_and_the_other_takes_it_when_the_heartbeat_stops() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let mut a = Lease::on(store.clone(), "p", "a");
        let mut b = Lease::on(store.clone(), "p", "b");
        assert!(a.acquire(TTL).await.unwrap());
        assert!(!b.acquire(TTL).await.unwrap());
        assert_eq!(b.holder(TTL).await.unwrap(), Holder::Other("a".into()));
        // While a beats, b never takes it.
        for _ in 0..4 {
            tokio::time::sleep(TTL / 3).await;
            assert!(a.renew().await.unwrap());
            assert!(!b.acquire(TTL).await.unwrap());
        }
        // a stalls: after ttl of b's own watching, b takes over, and a learns it lost.
        tokio::time::sleep(TTL + TTL / 4).await;
        assert!(b.acquire(TTL).await.unwrap());
        assert!(!a.renew().await.unwrap());
        assert!(!a.held());
        assert!(!a.acquire(TTL).await.unwrap());
        assert_eq!(a.holder(TTL).await.unwrap(), Holder::Other("b".into()));
    }

    #[tokio::test]
    async fn a_released_lease_is_taken_at_once_and_two_takers_cannot_both_win() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let mut a = Lease::on(store.clone(), "p", "a");
        assert!(a.acquire(TTL).await.unwrap());
        a.release().await.unwrap();
        let mut b = Lease::on(store.clone(), "p", "b");
        let mut c = Lease::on(store.clone(), "p", "c");
        // Both see it free; only one creates the next term.
        assert_eq!(b.holder(TTL).await.unwrap(), Holder::Free);
        assert_eq!(c.holder(TTL).await.unwrap(), Holder::Free);
        let (rb, rc) = tokio::join!(b.acquire(TTL), c.acquire(TTL));
        assert!(rb.unwrap() ^ rc.unwrap());
        // One that judged the lease free before the other took it does not take it too.
        let mut e = Lease::on(store.clone(), "p", "e");
        let (winner, loser) = if b.held() {
            (&mut b, &mut c)
        } else {
            (&mut c, &mut b)
        };
        winner.release().await.unwrap();
        assert_eq!(e.look(TTL).await.unwrap(), (Holder::Free, 2));
        assert!(loser.acquire(TTL).await.unwrap());
        assert!(!e.take(3).await.unwrap());
        assert!(!e.held());
        loser.release().await.unwrap();
        // Terms before the previous one are pruned.
        let mut d = Lease::on(store.clone(), "p", "d");
        assert!(d.acquire(TTL).await.unwrap());
        let left = numbered(store.as_ref(), &Path::from("p/lease"), "t")
            .await
            .unwrap();
        assert_eq!(left, vec![3, 4]);
    }
}
