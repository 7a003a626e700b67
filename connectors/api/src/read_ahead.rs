//! The snapshot scheduling the database sources share: chunks of several tables read
//! ahead on a pool of idle connections while the current chunk is written, at most one
//! per table (a table's own chunks follow each other in key order), and the re-read of a
//! chunk until it covers every transaction the change stream dropped as not yet read.
//!
//! What a chunk is, how it is read and what "covers" means stay with each source
//! (PostgreSQL: the snapshot's visibility; MySQL: the binlog position the read saw).

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use crate::{Error, Result};

/// A chunk being read on its own connection.
struct Flight<C, K, R> {
    /// The key the chunk starts after (`None`: the table's first chunk).
    after: Option<K>,
    task: tokio::task::JoinHandle<(C, Result<R>)>,
}

/// Chunks read ahead: connections `C`, keys `K`, chunks `R`; tables by index.
pub struct ReadAhead<C, K, R> {
    idle: Vec<C>,
    flights: HashMap<usize, Flight<C, K, R>>,
}

impl<C, K, R> ReadAhead<C, K, R>
where
    C: Send + 'static,
    K: Clone + PartialEq,
    R: Send + 'static,
{
    /// Read ahead on `idle` connections (`parallelism` of them).
    pub fn new(idle: Vec<C>) -> Self {
        ReadAhead {
            idle,
            flights: HashMap::new(),
        }
    }

    /// Of tables `0..n` that `pending` keeps, the first whose read-ahead chunk is ready,
    /// else the first.
    pub fn next_table(&self, n: usize, pending: impl Fn(usize) -> bool) -> Option<usize> {
        (0..n)
            .filter(|t| pending(*t))
            .find(|t| self.flights.get(t).is_some_and(|f| f.task.is_finished()))
            .or_else(|| (0..n).find(|t| pending(*t)))
    }

    /// Start reading the next chunk of each table `0..n` that has none in flight, while
    /// idle connections last. `after(t)`: `None` to leave table `t` alone (finished,
    /// failed), else where its next chunk starts. `read(t, connection, after)` reads it
    /// and hands the connection back.
    pub fn start<F, Fut>(
        &mut self,
        n: usize,
        after: impl Fn(usize) -> Option<Option<K>>,
        mut read: F,
    ) where
        F: FnMut(usize, C, Option<K>) -> Fut,
        Fut: Future<Output = (C, Result<R>)> + Send + 'static,
    {
        for t in 0..n {
            if self.idle.is_empty() {
                return;
            }
            if self.flights.contains_key(&t) {
                continue;
            }
            let Some(after) = after(t) else { continue };
            let Some(conn) = self.idle.pop() else { return };
            let task = tokio::spawn(read(t, conn, after.clone()));
            self.flights.insert(t, Flight { after, task });
        }
    }

    /// The chunk read ahead for table `t`, if it was read after `after` and `usable`
    /// says it still fits (e.g. the table's columns did not change since); its connection
    /// goes back to the idle ones. A failed read ahead is the caller's error.
    pub async fn take(
        &mut self,
        t: usize,
        after: Option<&K>,
        usable: impl Fn(&R) -> bool,
    ) -> Result<Option<R>> {
        let Some(flight) = self.flights.remove(&t) else {
            return Ok(None);
        };
        let (conn, read) = flight
            .task
            .await
            .map_err(|e| Error::internal(format!("chunk reader: {e}")))?;
        self.idle.push(conn);
        let read = read?;
        Ok((flight.after.as_ref() == after && usable(&read)).then_some(read))
    }
}

/// The reads of a chunk that must cover every transaction the change stream dropped
/// because the snapshot had not reached its rows: their commit may become visible to a
/// new read a moment after the stream saw it, so the chunk is read again, 20 ms apart,
/// for about a second.
#[derive(Debug, Default)]
pub struct Covering {
    attempts: u32,
}

impl Covering {
    /// After a read that did not cover them: wait before the next, or give up with the
    /// (retryable) error `uncovered` names.
    pub async fn again(&mut self, uncovered: impl FnOnce() -> String) -> Result<()> {
        self.attempts += 1;
        if self.attempts > 50 {
            return Err(Error::transient(uncovered()));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn chunks_are_read_ahead_one_per_table_while_connections_last() {
        let mut ahead: ReadAhead<u8, u32, (usize, Option<u32>)> = ReadAhead::new(vec![1, 2]);
        // Table 1 is finished; tables 0, 2 and 3 have rows left; two connections.
        let after = |t: usize| match t {
            1 => None,
            0 => Some(Some(10)),
            _ => Some(None),
        };
        ahead.start(4, after, |t, c, k| async move { (c, Ok((t, k))) });
        // Tables 0 and 2 got the connections; table 3 waits for one.
        assert!(ahead.flights.contains_key(&0) && ahead.flights.contains_key(&2));
        assert!(!ahead.flights.contains_key(&3) && ahead.idle.is_empty());
        // A chunk read from another key is not used, but its connection comes back.
        assert!(ahead.take(0, Some(&11), |_| true).await.unwrap().is_none());
        assert_eq!(ahead.idle.len(), 1);
        assert_eq!(
            ahead.take(2, None, |_| true).await.unwrap(),
            Some((2, None))
        );
        // Table 2 is finished now: the connections go to tables 0 and 3.
        let after = |t: usize| if t == 2 { None } else { after(t) };
        ahead.start(4, after, |t, c, k| async move { (c, Ok((t, k))) });
        assert!(ahead.flights.contains_key(&0) && ahead.flights.contains_key(&3));
        // A chunk the caller cannot use any more (its columns changed) is dropped.
        assert!(ahead.take(3, None, |_| false).await.unwrap().is_none());
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(
            ahead.next_table(4, |t| t != 1),
            Some(0),
            "a ready chunk first"
        );
        assert_eq!(ahead.next_table(4, |t| t == 3), Some(3));
    }

    #[tokio::test]
    async fn a_chunk_is_read_again_for_about_a_second() {
        let mut covering = Covering::default();
        let started = std::time::Instant::now();
        for _ in 0..50 {
            covering.again(|| "never".into()).await.unwrap();
        }
        assert!(started.elapsed() >= Duration::from_millis(50 * 20));
        let err = covering.again(|| "t: never".into()).await.unwrap_err();
        assert!(err.is_retryable() && err.to_string() == "t: never", "{err}");
    }
}
