//! Property test: random operation sequences on the embedded backend agree with a simple
//! in-memory model (a `BTreeMap` per revision). Failing cases are saved by proptest under
//! `proptest-regressions/` and must be committed.

use std::collections::BTreeMap;

use bytes::Bytes;
use futures::StreamExt;
use kelson_storage::{Embedded, Error, Event, ListRequest, Revision, Storage, WatchMessage};
use proptest::prelude::*;

const KEYS: &[&str] = &["/m/a", "/m/b", "/m/c", "/n/a", "/m/ab"];
const PREFIXES: &[&str] = &["/m/", "/n/", "/", "/m/a"];

#[derive(Clone, Debug)]
enum Op {
    Create(usize, u8),
    Update {
        key: usize,
        value: u8,
        stale: bool,
    },
    Delete {
        key: usize,
        precondition: Option<bool>,
    },
    Get(usize),
    List {
        prefix: usize,
        limit: usize,
    },
    ListAt {
        back: i64,
    },
    Compact {
        back: i64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let key = 0..KEYS.len();
    prop_oneof![
        3 => (key.clone(), any::<u8>()).prop_map(|(k, v)| Op::Create(k, v)),
        3 => (key.clone(), any::<u8>(), any::<bool>()).prop_map(|(key, value, stale)| Op::Update { key, value, stale }),
        2 => (key.clone(), proptest::option::of(any::<bool>())).prop_map(|(key, precondition)| Op::Delete { key, precondition }),
        1 => key.prop_map(Op::Get),
        2 => (0..PREFIXES.len(), 0usize..4).prop_map(|(prefix, limit)| Op::List { prefix, limit }),
        1 => (0i64..10).prop_map(|back| Op::ListAt { back }),
        1 => (0i64..6).prop_map(|back| Op::Compact { back }),
    ]
}

#[derive(Clone, Debug, PartialEq)]
struct Entry {
    value: Bytes,
    create: Revision,
    modified: Revision,
}

#[derive(Default)]
struct Model {
    state: BTreeMap<String, Entry>,
    revision: Revision,
    compacted: Revision,
    snapshots: BTreeMap<Revision, BTreeMap<String, Entry>>,
    events: Vec<(Revision, String, &'static str)>,
}

impl Model {
    fn commit(&mut self, key: &str, kind: &'static str) {
        self.snapshots.insert(self.revision, self.state.clone());
        self.events.push((self.revision, key.to_owned(), kind));
    }

    fn at(&self, revision: Revision) -> BTreeMap<String, Entry> {
        self.snapshots
            .range(..=revision)
            .next_back()
            .map(|(_, s)| s.clone())
            .unwrap_or_default()
    }
}

async fn list_all(
    s: &Embedded,
    prefix: &str,
    limit: usize,
    revision: Option<Revision>,
) -> Vec<(String, Entry)> {
    let mut out = Vec::new();
    let mut start = None;
    let mut revision = revision;
    loop {
        let page = s
            .list(ListRequest {
                prefix: prefix.into(),
                start: start.clone(),
                revision,
                limit,
            })
            .await
            .unwrap();
        revision = Some(page.revision);
        for kv in &page.kvs {
            out.push((
                kv.key.clone(),
                Entry {
                    value: kv.value.clone(),
                    create: kv.create_revision,
                    modified: kv.mod_revision,
                },
            ));
        }
        if !page.more {
            return out;
        }
        start = Some(format!("{}\0", page.kvs.last().unwrap().key));
    }
}

async fn run(ops: Vec<Op>) {
    let s = Embedded::in_memory();
    let mut m = Model::default();
    for op in ops {
        match op {
            Op::Create(k, v) => {
                let key = KEYS[k];
                let result = s.create(key, Bytes::from(vec![v])).await;
                if m.state.contains_key(key) {
                    assert!(matches!(result, Err(Error::AlreadyExists { .. })));
                } else {
                    m.revision += 1;
                    let kv = result.unwrap();
                    assert_eq!(kv.mod_revision, m.revision);
                    m.state.insert(
                        key.into(),
                        Entry {
                            value: kv.value,
                            create: m.revision,
                            modified: m.revision,
                        },
                    );
                    m.commit(key, "created");
                }
            }
            Op::Update {
                key: k,
                value,
                stale,
            } => {
                let key = KEYS[k];
                let current = m.state.get(key).cloned();
                let expected = match (&current, stale) {
                    (Some(e), false) => e.modified,
                    (Some(e), true) => e.modified - 1,
                    (None, _) => 1,
                };
                let result = s.update(key, Bytes::from(vec![value]), expected).await;
                match current {
                    None => assert!(matches!(result, Err(Error::NotFound { .. }))),
                    Some(_) if stale => assert!(matches!(result, Err(Error::Conflict { .. }))),
                    Some(e) => {
                        m.revision += 1;
                        let kv = result.unwrap();
                        assert_eq!(
                            (kv.mod_revision, kv.create_revision),
                            (m.revision, e.create)
                        );
                        m.state.insert(
                            key.into(),
                            Entry {
                                value: kv.value,
                                create: e.create,
                                modified: m.revision,
                            },
                        );
                        m.commit(key, "updated");
                    }
                }
            }
            Op::Delete {
                key: k,
                precondition,
            } => {
                let key = KEYS[k];
                let current = m.state.get(key).cloned();
                let expected = match (&current, precondition) {
                    (_, None) => None,
                    (Some(e), Some(true)) => Some(e.modified),
                    (Some(e), Some(false)) => Some(e.modified + 1),
                    (None, Some(_)) => Some(1),
                };
                let result = s.delete(key, expected).await;
                match current {
                    None => assert!(matches!(result, Err(Error::NotFound { .. }))),
                    Some(_) if precondition == Some(false) => {
                        assert!(matches!(result, Err(Error::Conflict { .. })))
                    }
                    Some(e) => {
                        m.revision += 1;
                        let (prev, revision) = result.unwrap();
                        assert_eq!((prev.value, revision), (e.value, m.revision));
                        m.state.remove(key);
                        m.commit(key, "deleted");
                    }
                }
            }
            Op::Get(k) => {
                let (kv, revision) = s.get(KEYS[k]).await.unwrap();
                assert_eq!(revision, m.revision);
                let got = kv.map(|kv| Entry {
                    value: kv.value,
                    create: kv.create_revision,
                    modified: kv.mod_revision,
                });
                assert_eq!(got, m.state.get(KEYS[k]).cloned());
            }
            Op::List { prefix, limit } => {
                let prefix = PREFIXES[prefix];
                let got = list_all(&s, prefix, limit, None).await;
                let want: Vec<_> = m
                    .state
                    .iter()
                    .filter(|(k, _)| k.starts_with(prefix))
                    .map(|(k, e)| (k.clone(), e.clone()))
                    .collect();
                assert_eq!(got, want);
            }
            Op::ListAt { back } => {
                let revision = (m.revision - back).max(m.compacted).max(1);
                if revision > m.revision {
                    continue;
                }
                let got = list_all(&s, "/", 2, Some(revision)).await;
                let want: Vec<_> = m.at(revision).into_iter().collect();
                assert_eq!(got, want, "list at {revision}");
            }
            Op::Compact { back } => {
                let target = m.revision - back;
                if target < 1 {
                    continue;
                }
                let result = s.compact(target).await;
                if target <= m.compacted {
                    assert!(matches!(result, Err(Error::Compacted { .. })), "{result:?}");
                } else {
                    result.unwrap();
                    m.compacted = target;
                }
            }
        }
    }
    // a watch from the compaction point replays exactly the model's later history
    let mut watch = s.watch("/", m.compacted).await.unwrap();
    let want: Vec<_> = m
        .events
        .iter()
        .filter(|(r, _, _)| *r > m.compacted)
        .cloned()
        .collect();
    let mut got = Vec::new();
    while got.len() < want.len() {
        match watch.next().await.unwrap().unwrap() {
            WatchMessage::Progress(_) => {}
            WatchMessage::Event(event) => got.push(match event {
                Event::Created(kv) => (kv.mod_revision, kv.key, "created"),
                Event::Updated { kv, .. } => (kv.mod_revision, kv.key, "updated"),
                Event::Deleted { prev, revision } => (revision, prev.key, "deleted"),
            }),
        }
    }
    assert_eq!(got, want);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn embedded_matches_model(ops in proptest::collection::vec(op(), 1..60)) {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap()
            .block_on(run(ops));
    }
}
