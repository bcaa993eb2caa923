//! The conformance suite on a real etcd (Debian's etcd-server, started per test), plus
//! Kubernetes' key layout and two clients sharing one etcd.

use bytes::Bytes;
use kelson_storage::conformance::next_event;
use kelson_storage::test_support::EtcdProcess;
use kelson_storage::{Etcd, EtcdOptions, Event, Storage};

async fn connect(etcd: &EtcdProcess) -> Etcd {
    Etcd::connect(EtcdOptions::new([etcd.client_url()]))
        .await
        .unwrap()
}

kelson_storage::storage_conformance_suite!(|| async {
    let process = EtcdProcess::start();
    (connect(&process).await, process)
});

#[tokio::test]
async fn two_clients_on_one_etcd_see_each_others_writes_and_events() {
    let process = EtcdProcess::start();
    let (one, two) = (connect(&process).await, connect(&process).await);
    let start = one.current_revision().await.unwrap();
    let mut watch_one = one.watch("/registry/configmaps/", start).await.unwrap();
    let mut watch_two = two.watch("/registry/configmaps/", start).await.unwrap();
    let a = one
        .create("/registry/configmaps/default/a", Bytes::from_static(b"1"))
        .await
        .unwrap();
    let b = two
        .create("/registry/configmaps/default/b", Bytes::from_static(b"2"))
        .await
        .unwrap();
    assert_eq!(
        two.get("/registry/configmaps/default/a")
            .await
            .unwrap()
            .0
            .unwrap(),
        a
    );
    for watch in [&mut watch_one, &mut watch_two] {
        assert_eq!(next_event(watch).await, Event::Created(a.clone()));
        assert_eq!(next_event(watch).await, Event::Created(b.clone()));
    }
}

#[tokio::test]
async fn keys_are_stored_exactly_as_given() {
    let process = EtcdProcess::start();
    let storage = connect(&process).await;
    storage
        .create("/registry/pods/default/web", Bytes::from_static(b"{}"))
        .await
        .unwrap();
    let mut raw = etcd_client::Client::connect([process.client_url()], None)
        .await
        .unwrap();
    let response = raw.get("/registry/pods/default/web", None).await.unwrap();
    assert_eq!(response.kvs()[0].value(), b"{}");
}
