//! The conformance suite on the in-memory embedded backend, plus how writes share commits.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kelson_storage::{Embedded, EmbeddedOptions, Storage};

kelson_storage::storage_conformance_suite!(|| async { (Embedded::in_memory(), ()) });

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_arriving_under_load_share_commits() {
    let storage = Arc::new(
        Embedded::open(EmbeddedOptions {
            gather: Duration::from_millis(100),
            ..EmbeddedOptions::default()
        })
        .unwrap(),
    );
    // writes at once until two share a commit: the writer then knows writes are concurrent
    let mut primed = false;
    for round in 0..20 {
        let before = storage.commits();
        let (key_a, key_b) = (format!("/p/{round}a"), format!("/p/{round}b"));
        let (a, b) = tokio::join!(
            storage.create(&key_a, Bytes::from_static(b"1")),
            storage.create(&key_b, Bytes::from_static(b"1")),
        );
        a.unwrap();
        b.unwrap();
        if storage.commits() - before == 1 {
            primed = true;
            break;
        }
    }
    assert!(primed, "two writes at once never shared a commit");
    let before = storage.commits();
    // 50 writes arriving about 80 µs apart, each alone fast enough to commit before the next
    let runtime = tokio::runtime::Handle::current();
    let spawner = storage.clone();
    let writes = std::thread::spawn(move || {
        (0..50)
            .map(|i| {
                let storage = spawner.clone();
                let write = runtime.spawn(async move {
                    storage
                        .create(&format!("/k/{i:02}"), Bytes::from_static(b"2"))
                        .await
                        .unwrap();
                });
                let next = Instant::now() + Duration::from_micros(80);
                while Instant::now() < next {
                    std::hint::spin_loop();
                }
                write
            })
            .collect::<Vec<_>>()
    })
    .join()
    .unwrap();
    for write in writes {
        write.await.unwrap();
    }
    let commits = storage.commits() - before;
    assert!(commits <= 5, "50 writes took {commits} commits");
}

#[tokio::test]
async fn a_lone_writer_does_not_wait() {
    let storage = Embedded::open(EmbeddedOptions {
        gather: Duration::from_millis(100),
        ..EmbeddedOptions::default()
    })
    .unwrap();
    let started = Instant::now();
    for i in 0..20 {
        storage
            .create(&format!("/k/{i:02}"), Bytes::from_static(b"1"))
            .await
            .unwrap();
    }
    assert_eq!(storage.commits(), 20, "one commit per write");
    // waiting 100 ms before each commit would take 2 s
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}
