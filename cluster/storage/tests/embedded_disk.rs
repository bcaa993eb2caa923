//! The conformance suite on the embedded backend with a database file, plus durability checks.

use bytes::Bytes;
use kelson_storage::{Embedded, EmbeddedOptions, ListRequest, Storage};

kelson_storage::storage_conformance_suite!(|| async {
    let dir = tempfile::tempdir().unwrap();
    let storage = Embedded::open(EmbeddedOptions::at(dir.path().join("state.redb"))).unwrap();
    (storage, dir)
});

#[tokio::test]
async fn state_and_revisions_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let (kept, last) = {
        let storage = Embedded::open(EmbeddedOptions::at(&path)).unwrap();
        let a = storage
            .create("/k/a", Bytes::from_static(b"1"))
            .await
            .unwrap();
        storage
            .update("/k/a", Bytes::from_static(b"2"), a.mod_revision)
            .await
            .unwrap();
        storage
            .create("/k/b", Bytes::from_static(b"3"))
            .await
            .unwrap();
        let (_, last) = storage.delete("/k/b", None).await.unwrap();
        storage.compact(last - 1).await.unwrap();
        (storage.get("/k/a").await.unwrap().0.unwrap(), last)
    };
    // the writer thread of the first instance may still hold the file briefly
    let storage = loop {
        match Embedded::open(EmbeddedOptions::at(&path)) {
            Ok(storage) => break storage,
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
        }
    };
    assert_eq!(storage.current_revision().await.unwrap(), last);
    assert_eq!(storage.get("/k/a").await.unwrap().0.unwrap(), kept);
    let list = storage
        .list(ListRequest {
            prefix: "/k/".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(list.kvs, vec![kept]);
    let next = storage
        .create("/k/c", Bytes::from_static(b"4"))
        .await
        .unwrap();
    assert_eq!(
        next.mod_revision,
        last + 1,
        "revisions never go back after a restart"
    );
}
