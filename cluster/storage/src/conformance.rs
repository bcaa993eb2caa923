//! The one conformance suite every storage backend must pass.
//!
//! Each check is a public async function taking a fresh, empty store. A backend's tests
//! instantiate all of them with one line:
//!
//! ```ignore
//! kelson_storage::storage_conformance_suite!(|| async { (Embedded::in_memory(), ()) });
//! ```
//!
//! The closure returns the store and a guard kept alive for the test (for example the etcd
//! process).

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;

use crate::{Error, Event, ListRequest, Storage, WatchMessage, WatchStream};

/// Instantiates every conformance check as a `#[tokio::test]` for one backend.
#[macro_export]
macro_rules! storage_conformance_suite {
    ($make:expr) => {
        $crate::storage_conformance_suite!(@tests $make;
            create_and_get, create_existing_fails, revisions_increase, update_is_compare_and_swap,
            delete_with_preconditions, recreate_after_delete, list_prefix, list_pages_are_a_snapshot,
            list_at_old_revision, watch_replays_then_follows, watch_from_current_revision,
            watch_reports_progress, compaction, concurrent_compare_and_swap, large_values,
            many_watchers_see_every_event);
    };
    (@tests $make:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let (storage, _guard) = ($make)().await;
                $crate::conformance::$name(&storage).await;
            }
        )*
    };
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// The next event of a watch, skipping progress messages; panics after 10 s.
pub async fn next_event(stream: &mut WatchStream) -> Event {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let message = tokio::time::timeout_at(deadline, stream.next())
            .await
            .expect("watch event within 10 s")
            .expect("watch stream open");
        match message.expect("watch without error") {
            WatchMessage::Event(event) => return event,
            WatchMessage::Progress(_) => {}
        }
    }
}

/// Asserts that no event arrives within `wait`.
pub async fn assert_no_event(stream: &mut WatchStream, wait: Duration) {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Err(_) => return,
            Ok(Some(Ok(WatchMessage::Progress(_)))) => {}
            Ok(other) => panic!("unexpected watch message {other:?}"),
        }
    }
}

/// A created key reads back with its revisions; a missing key reads as none.
pub async fn create_and_get(s: &impl Storage) {
    let kv = s.create("/registry/pods/default/a", b("v1")).await.unwrap();
    assert!(kv.mod_revision > 0);
    assert_eq!(kv.create_revision, kv.mod_revision);
    let (got, current) = s.get("/registry/pods/default/a").await.unwrap();
    assert_eq!(got.unwrap(), kv);
    assert!(current >= kv.mod_revision);
    let (missing, _) = s.get("/registry/pods/default/b").await.unwrap();
    assert!(missing.is_none());
}

/// Creating an existing key fails and changes nothing.
pub async fn create_existing_fails(s: &impl Storage) {
    let kv = s.create("/k", b("one")).await.unwrap();
    let error = s.create("/k", b("two")).await.unwrap_err();
    assert!(matches!(error, Error::AlreadyExists { .. }), "{error:?}");
    assert_eq!(s.get("/k").await.unwrap().0.unwrap(), kv);
}

/// Every write gets a greater revision, and the current revision follows.
pub async fn revisions_increase(s: &impl Storage) {
    let mut last = s.current_revision().await.unwrap();
    for i in 0..5 {
        let kv = s.create(&format!("/r/{i}"), b("x")).await.unwrap();
        assert!(kv.mod_revision > last);
        last = kv.mod_revision;
        let kv = s
            .update(&format!("/r/{i}"), b("y"), kv.mod_revision)
            .await
            .unwrap();
        assert!(kv.mod_revision > last);
        last = kv.mod_revision;
    }
    assert_eq!(s.current_revision().await.unwrap(), last);
}

/// Updates succeed only on the current revision.
pub async fn update_is_compare_and_swap(s: &impl Storage) {
    let created = s.create("/u", b("1")).await.unwrap();
    let updated = s.update("/u", b("2"), created.mod_revision).await.unwrap();
    assert!(updated.mod_revision > created.mod_revision);
    assert_eq!(updated.create_revision, created.create_revision);
    assert_eq!(updated.value, b("2"));
    let stale = s
        .update("/u", b("3"), created.mod_revision)
        .await
        .unwrap_err();
    assert_eq!(
        stale,
        Error::Conflict {
            key: "/u".into(),
            expected: created.mod_revision,
            actual: updated.mod_revision
        }
    );
    assert_eq!(s.get("/u").await.unwrap().0.unwrap().value, b("2"));
    let missing = s.update("/nope", b("x"), 1).await.unwrap_err();
    assert!(matches!(missing, Error::NotFound { .. }), "{missing:?}");
}

/// Deletes honour preconditions and return the deleted state.
pub async fn delete_with_preconditions(s: &impl Storage) {
    let created = s.create("/d", b("gone")).await.unwrap();
    let wrong = s
        .delete("/d", Some(created.mod_revision + 100))
        .await
        .unwrap_err();
    assert!(matches!(wrong, Error::Conflict { .. }), "{wrong:?}");
    let (prev, revision) = s.delete("/d", Some(created.mod_revision)).await.unwrap();
    assert_eq!(prev, created);
    assert!(revision > created.mod_revision);
    assert!(s.get("/d").await.unwrap().0.is_none());
    let again = s.delete("/d", None).await.unwrap_err();
    assert!(matches!(again, Error::NotFound { .. }), "{again:?}");
    s.create("/d2", b("x")).await.unwrap();
    let (prev, _) = s.delete("/d2", None).await.unwrap();
    assert_eq!(prev.value, b("x"));
}

/// A key created again after deletion starts a new life.
pub async fn recreate_after_delete(s: &impl Storage) {
    let first = s.create("/again", b("1")).await.unwrap();
    s.delete("/again", None).await.unwrap();
    let second = s.create("/again", b("2")).await.unwrap();
    assert!(second.create_revision > first.create_revision);
    assert_eq!(s.get("/again").await.unwrap().0.unwrap().value, b("2"));
}

/// Lists return exactly the keys under the prefix, sorted, with their values.
pub async fn list_prefix(s: &impl Storage) {
    for key in ["/a/y", "/a/x", "/ab/z", "/b/w", "/a/sub/v"] {
        s.create(key, b(key)).await.unwrap();
    }
    let list = s
        .list(ListRequest {
            prefix: "/a/".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let keys: Vec<_> = list.kvs.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, ["/a/sub/v", "/a/x", "/a/y"]);
    assert!(list.kvs.iter().all(|kv| kv.value == b(&kv.key)));
    assert!(!list.more);
    assert_eq!(list.revision, s.current_revision().await.unwrap());
    let empty = s
        .list(ListRequest {
            prefix: "/zzz/".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(empty.kvs.is_empty());
}

/// Pages read at the first page's revision see one consistent snapshot.
pub async fn list_pages_are_a_snapshot(s: &impl Storage) {
    let mut revisions = Vec::new();
    for i in 0..5 {
        revisions.push(
            s.create(&format!("/p/{i}"), b(&format!("v{i}")))
                .await
                .unwrap(),
        );
    }
    let page = |start: Option<String>, revision| ListRequest {
        prefix: "/p/".into(),
        start,
        revision,
        limit: 2,
    };
    let first = s.list(page(None, None)).await.unwrap();
    assert_eq!(first.kvs.len(), 2);
    assert!(first.more);
    // the world moves on between pages
    s.update("/p/3", b("changed"), revisions[3].mod_revision)
        .await
        .unwrap();
    s.delete("/p/2", None).await.unwrap();
    s.create("/p/25", b("new")).await.unwrap();
    let mut seen: Vec<_> = first.kvs.clone();
    let mut next = first;
    while next.more {
        let start = format!("{}\0", next.kvs.last().unwrap().key);
        next = s
            .list(page(Some(start), Some(next.revision)))
            .await
            .unwrap();
        seen.extend(next.kvs.iter().cloned());
    }
    let values: Vec<_> = seen.iter().map(|kv| kv.value.clone()).collect();
    assert_eq!(values, ["v0", "v1", "v2", "v3", "v4"].map(b));
    let now = s
        .list(ListRequest {
            prefix: "/p/".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let keys: Vec<_> = now.kvs.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, ["/p/0", "/p/1", "/p/25", "/p/3", "/p/4"]);
}

/// A list at an older revision shows the values of that time.
pub async fn list_at_old_revision(s: &impl Storage) {
    let v1 = s.create("/h/k", b("1")).await.unwrap();
    let v2 = s.update("/h/k", b("2"), v1.mod_revision).await.unwrap();
    s.delete("/h/k", None).await.unwrap();
    let at = |revision| ListRequest {
        prefix: "/h/".into(),
        revision: Some(revision),
        ..Default::default()
    };
    assert_eq!(
        s.list(at(v1.mod_revision)).await.unwrap().kvs[0].value,
        b("1")
    );
    assert_eq!(s.list(at(v2.mod_revision)).await.unwrap().kvs[0], v2);
    let current = s.current_revision().await.unwrap();
    assert!(s.list(at(current)).await.unwrap().kvs.is_empty());
    let future = s.list(at(current + 1000)).await.unwrap_err();
    assert!(matches!(future, Error::FutureRevision { .. }), "{future:?}");
}

/// A watch replays history after its revision in order, then delivers live events.
pub async fn watch_replays_then_follows(s: &impl Storage) {
    let before = s.current_revision().await.unwrap();
    let v1 = s.create("/w/a", b("1")).await.unwrap();
    let v2 = s.update("/w/a", b("2"), v1.mod_revision).await.unwrap();
    s.create("/other/x", b("no")).await.unwrap();
    let (deleted, delete_revision) = s.delete("/w/a", None).await.unwrap();
    let mut watch = s.watch("/w/", before).await.unwrap();
    assert_eq!(next_event(&mut watch).await, Event::Created(v1.clone()));
    assert_eq!(
        next_event(&mut watch).await,
        Event::Updated {
            kv: v2.clone(),
            prev: v1
        }
    );
    assert_eq!(
        next_event(&mut watch).await,
        Event::Deleted {
            prev: deleted,
            revision: delete_revision
        }
    );
    let live = s.create("/w/b", b("live")).await.unwrap();
    s.create("/wx", b("not under the prefix")).await.unwrap();
    let live2 = s
        .update("/w/b", b("live2"), live.mod_revision)
        .await
        .unwrap();
    assert_eq!(next_event(&mut watch).await, Event::Created(live.clone()));
    assert_eq!(
        next_event(&mut watch).await,
        Event::Updated {
            kv: live2,
            prev: live
        }
    );
    assert_no_event(&mut watch, Duration::from_millis(300)).await;
}

/// A watch from the current revision sees only later writes.
pub async fn watch_from_current_revision(s: &impl Storage) {
    s.create("/c/old", b("x")).await.unwrap();
    let now = s.current_revision().await.unwrap();
    let mut watch = s.watch("/c/", now).await.unwrap();
    assert_no_event(&mut watch, Duration::from_millis(200)).await;
    let kv = s.create("/c/new", b("y")).await.unwrap();
    assert_eq!(next_event(&mut watch).await, Event::Created(kv));
}

/// An idle watch in sync reports progress up to the current revision. (Backends may hold
/// progress back while a watch replays history; see the etcd backend.)
pub async fn watch_reports_progress(s: &impl Storage) {
    let created = s.create("/elsewhere/a", b("x")).await.unwrap();
    let mut watch = s.watch("/quiet/", created.mod_revision).await.unwrap();
    let written = s.create("/elsewhere/b", b("y")).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let message = tokio::time::timeout_at(deadline, watch.next())
            .await
            .expect("progress within 10 s")
            .unwrap()
            .unwrap();
        match message {
            WatchMessage::Progress(revision) if revision >= written.mod_revision => return,
            WatchMessage::Progress(_) => {}
            WatchMessage::Event(event) => panic!("no event expected, got {event:?}"),
        }
    }
}

/// After compaction, older revisions answer `Compacted`; the latest state is intact.
pub async fn compaction(s: &impl Storage) {
    let v1 = s.create("/z/k", b("1")).await.unwrap();
    let v2 = s.update("/z/k", b("2"), v1.mod_revision).await.unwrap();
    s.create("/z/gone", b("x")).await.unwrap();
    s.delete("/z/gone", None).await.unwrap();
    let v3 = s.update("/z/k", b("3"), v2.mod_revision).await.unwrap();
    s.compact(v3.mod_revision - 1).await.unwrap();
    let old = ListRequest {
        prefix: "/z/".into(),
        revision: Some(v1.mod_revision),
        ..Default::default()
    };
    let error = s.list(old).await.unwrap_err();
    assert!(matches!(error, Error::Compacted { .. }), "{error:?}");
    match s.watch("/z/", v1.mod_revision).await {
        Err(error) => assert!(matches!(error, Error::Compacted { .. }), "{error:?}"),
        Ok(mut watch) => {
            let first = tokio::time::timeout(Duration::from_secs(10), watch.next())
                .await
                .unwrap();
            let error = first.unwrap().unwrap_err();
            assert!(matches!(error, Error::Compacted { .. }), "{error:?}");
        }
    }
    assert_eq!(s.get("/z/k").await.unwrap().0.unwrap(), v3);
    let list = s
        .list(ListRequest {
            prefix: "/z/".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(list.kvs, vec![v3.clone()]);
    // the compaction point itself is still readable
    let at = ListRequest {
        prefix: "/z/".into(),
        revision: Some(v3.mod_revision - 1),
        ..Default::default()
    };
    assert_eq!(s.list(at).await.unwrap().kvs[0].value, b("2"));
    let mut watch = s.watch("/z/", v3.mod_revision - 1).await.unwrap();
    assert_eq!(
        next_event(&mut watch).await,
        Event::Updated { kv: v3, prev: v2 }
    );
}

/// Concurrent read-modify-write loops lose no increment.
pub async fn concurrent_compare_and_swap(s: &(impl Storage + Clone)) {
    s.create("/counter", b("0")).await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..20 {
                loop {
                    let kv = s.get("/counter").await.unwrap().0.unwrap();
                    let n: u64 = std::str::from_utf8(&kv.value).unwrap().parse().unwrap();
                    match s
                        .update("/counter", b(&(n + 1).to_string()), kv.mod_revision)
                        .await
                    {
                        Ok(_) => break,
                        Err(Error::Conflict { .. }) => continue,
                        Err(e) => panic!("{e}"),
                    }
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(s.get("/counter").await.unwrap().0.unwrap().value, b("160"));
}

/// Values of a megabyte round-trip unchanged.
pub async fn large_values(s: &impl Storage) {
    let value = Bytes::from(vec![b'x'; 1 << 20]);
    s.create("/big", value.clone()).await.unwrap();
    assert_eq!(s.get("/big").await.unwrap().0.unwrap().value, value);
}

/// Many concurrent watchers all receive every event, in order.
pub async fn many_watchers_see_every_event(s: &impl Storage) {
    let start = s.current_revision().await.unwrap();
    let mut watches = Vec::new();
    for _ in 0..20 {
        watches.push(s.watch("/fan/", start).await.unwrap());
    }
    let mut written = Vec::new();
    for i in 0..50 {
        written.push(
            s.create(&format!("/fan/{i:03}"), b("x"))
                .await
                .unwrap()
                .mod_revision,
        );
    }
    for watch in &mut watches {
        for expected in &written {
            assert_eq!(next_event(watch).await.revision(), *expected);
        }
    }
}
