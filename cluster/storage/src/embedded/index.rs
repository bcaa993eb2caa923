//! The in-memory revision index of the embedded backend (etcd keeps the same `treeIndex`).
//!
//! For every key it remembers the revisions of its retained versions, so reads at any revision
//! since the last compaction find the right log record without scanning the log.

use std::collections::BTreeMap;
use std::ops::Bound;

use crate::Revision;

/// One version of a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Version {
    pub mod_revision: Revision,
    pub create_revision: Revision,
    pub deleted: bool,
}

impl Version {
    /// This version as a key-value with the given value bytes.
    pub fn kv(&self, key: &str, value: bytes::Bytes) -> crate::KeyValue {
        crate::KeyValue {
            key: key.to_owned(),
            value,
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct Index {
    /// Versions of every key, ascending by revision.
    keys: BTreeMap<String, Vec<Version>>,
    /// The revision of the latest committed write.
    pub current: Revision,
    /// History at or before this revision may have been forgotten.
    pub compacted: Revision,
}

impl Index {
    /// Records a new version; revisions must arrive in ascending order.
    pub fn push(&mut self, key: &str, version: Version) {
        debug_assert!(version.mod_revision > self.current || self.current == 0);
        match self.keys.get_mut(key) {
            Some(versions) => versions.push(version),
            None => {
                self.keys.insert(key.to_owned(), vec![version]);
            }
        }
    }

    /// The live version of `key` at `revision` (the latest when `None`).
    pub fn get(&self, key: &str, revision: Option<Revision>) -> Option<Version> {
        let versions = self.keys.get(key)?;
        version_at(versions, revision)
    }

    /// Live keys under `prefix`, from `start`, at `revision`; up to `limit` plus whether more exist.
    pub fn range(
        &self,
        prefix: &str,
        start: Option<&str>,
        revision: Option<Revision>,
        limit: usize,
    ) -> (Vec<(String, Version)>, bool) {
        let from = match start {
            Some(start) if start > prefix => start,
            _ => prefix,
        };
        let mut found = Vec::new();
        for (key, versions) in self
            .keys
            .range::<str, _>((Bound::Included(from), Bound::Unbounded))
        {
            if !key.starts_with(prefix) {
                break;
            }
            let Some(version) = version_at(versions, revision) else {
                continue;
            };
            if limit != 0 && found.len() == limit {
                return (found, true);
            }
            found.push((key.clone(), version));
        }
        (found, false)
    }

    /// The log revisions that compacting at `revision` drops: every version superseded at or
    /// before it, and deletes at or before it.
    pub fn compaction_plan(&self, revision: Revision) -> Vec<Revision> {
        let mut dropped = Vec::new();
        for versions in self.keys.values() {
            let keep_from = compaction_keep_from(versions, revision);
            dropped.extend(versions[..keep_from].iter().map(|v| v.mod_revision));
        }
        dropped
    }

    /// Forgets what [`Index::compaction_plan`] lists.
    pub fn compact(&mut self, revision: Revision) {
        self.keys.retain(|_, versions| {
            let keep_from = compaction_keep_from(versions, revision);
            versions.drain(..keep_from);
            !versions.is_empty()
        });
        self.compacted = self.compacted.max(revision);
    }

    /// Number of keys with any retained version.
    #[cfg(test)]
    pub fn key_count(&self) -> usize {
        self.keys.len()
    }
}

/// The newest version at or before the compaction point stays, unless it is a delete.
fn compaction_keep_from(versions: &[Version], revision: Revision) -> usize {
    match versions.iter().rposition(|v| v.mod_revision <= revision) {
        None => 0,
        Some(i) if versions[i].deleted => i + 1,
        Some(i) => i,
    }
}

fn version_at(versions: &[Version], revision: Option<Revision>) -> Option<Version> {
    let version = match revision {
        None => versions.last()?,
        Some(revision) => {
            let after = versions.partition_point(|v| v.mod_revision <= revision);
            versions[..after].last()?
        }
    };
    (!version.deleted).then_some(*version)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(index: &mut Index, key: &str, rev: Revision, create: Revision) {
        index.push(
            key,
            Version {
                mod_revision: rev,
                create_revision: create,
                deleted: false,
            },
        );
        index.current = rev;
    }

    fn del(index: &mut Index, key: &str, rev: Revision, create: Revision) {
        index.push(
            key,
            Version {
                mod_revision: rev,
                create_revision: create,
                deleted: true,
            },
        );
        index.current = rev;
    }

    #[test]
    fn reads_at_revisions() {
        let mut index = Index::default();
        put(&mut index, "/a", 1, 1);
        put(&mut index, "/a", 3, 1);
        del(&mut index, "/a", 5, 1);
        assert_eq!(index.get("/a", Some(0)), None);
        assert_eq!(index.get("/a", Some(2)).unwrap().mod_revision, 1);
        assert_eq!(index.get("/a", Some(4)).unwrap().mod_revision, 3);
        assert_eq!(index.get("/a", None), None);
    }

    #[test]
    fn range_respects_prefix_start_and_limit() {
        let mut index = Index::default();
        for (i, key) in ["/p/a", "/p/b", "/p/c", "/pz", "/q"].iter().enumerate() {
            put(&mut index, key, i as Revision + 1, i as Revision + 1);
        }
        let (keys, more) = index.range("/p/", None, None, 2);
        assert_eq!(
            keys.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
            ["/p/a", "/p/b"]
        );
        assert!(more);
        let (keys, more) = index.range("/p/", Some("/p/c"), None, 2);
        assert_eq!(keys.len(), 1);
        assert!(!more);
    }

    #[test]
    fn compaction_keeps_latest_live_versions() {
        let mut index = Index::default();
        put(&mut index, "/a", 1, 1);
        put(&mut index, "/a", 2, 1);
        put(&mut index, "/b", 3, 3);
        del(&mut index, "/b", 4, 3);
        put(&mut index, "/a", 5, 1);
        let mut dropped = index.compaction_plan(4);
        dropped.sort_unstable();
        index.compact(4);
        assert_eq!(dropped, vec![1, 3, 4]);
        assert_eq!(index.get("/a", Some(4)).unwrap().mod_revision, 2);
        assert_eq!(index.get("/a", None).unwrap().mod_revision, 5);
        assert_eq!(index.key_count(), 1);
    }
}
