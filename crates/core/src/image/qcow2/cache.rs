//! A small least-recently-used cache of L2 tables, shared by concurrent readers.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

/// Decoded L2 tables keyed by their offset in the image file.
pub struct L2Cache {
    capacity: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    tables: HashMap<u64, (Arc<[u64]>, u64)>,
    clock: u64,
}

impl L2Cache {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            inner: Mutex::default(),
        }
    }

    /// Returns the table at `offset`, loading it with `load` on a miss. The lock is not held
    /// while loading, so a miss never stalls readers of other tables; two threads missing the
    /// same table both load it, which is harmless.
    pub fn get_or_load(
        &self,
        offset: u64,
        load: impl FnOnce() -> io::Result<Arc<[u64]>>,
    ) -> io::Result<Arc<[u64]>> {
        {
            let mut inner = self.lock();
            inner.clock += 1;
            let now = inner.clock;
            if let Some((table, used)) = inner.tables.get_mut(&offset) {
                *used = now;
                return Ok(Arc::clone(table));
            }
        }
        let table = load()?;
        let mut inner = self.lock();
        if inner.tables.len() >= self.capacity && !inner.tables.contains_key(&offset) {
            let oldest = inner
                .tables
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(&k, _)| k);
            if let Some(oldest) = oldest {
                inner.tables.remove(&oldest);
            }
        }
        let now = inner.clock;
        inner.tables.insert(offset, (Arc::clone(&table), now));
        Ok(table)
    }

    /// The cache holds no invariant a panicking thread could break, so a poisoned lock is
    /// still usable.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(v: u64) -> io::Result<Arc<[u64]>> {
        Ok(Arc::from(vec![v]))
    }

    #[test]
    fn evicts_least_recently_used() {
        let cache = L2Cache::new(2);
        cache.get_or_load(1, || table(1)).unwrap();
        cache.get_or_load(2, || table(2)).unwrap();
        cache.get_or_load(1, || panic!("1 is cached")).unwrap();
        cache.get_or_load(3, || table(3)).unwrap(); // evicts 2
        cache
            .get_or_load(1, || panic!("1 is still cached"))
            .unwrap();
        assert_eq!(cache.get_or_load(2, || table(22)).unwrap()[0], 22);
    }

    #[test]
    fn load_errors_are_not_cached() {
        let cache = L2Cache::new(2);
        assert!(cache
            .get_or_load(1, || Err(io::Error::other("boom")))
            .is_err());
        assert_eq!(cache.get_or_load(1, || table(1)).unwrap()[0], 1);
    }
}
