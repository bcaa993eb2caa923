//! The cluster DNS server over real sockets: cluster names answered from the caches over UDP
//! and TCP, other names forwarded to an upstream, junk answered with an error and survived.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use hickory_server::proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_server::proto::rr::rdata::A;
use hickory_server::proto::rr::{Name, RData, Record, RecordType};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kelson_proxy::dns::{DnsConfig, Handler, serve};
use kube::runtime::{reflector, watcher};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

fn query(name: &str, record_type: RecordType) -> Vec<u8> {
    let mut message = Message::query();
    message.metadata.id = 4242;
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(Name::from_ascii(name).unwrap(), record_type));
    message.to_vec().unwrap()
}

async fn udp(server: SocketAddr, name: &str, record_type: RecordType) -> Message {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket
        .send_to(&query(name, record_type), server)
        .await
        .unwrap();
    let mut buffer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), socket.recv(&mut buffer))
        .await
        .expect("an answer")
        .unwrap();
    Message::from_vec(&buffer[..n]).unwrap()
}

async fn tcp(server: SocketAddr, name: &str, record_type: RecordType) -> Message {
    let mut stream = tokio::net::TcpStream::connect(server).await.unwrap();
    let bytes = query(name, record_type);
    stream
        .write_all(&u16::try_from(bytes.len()).unwrap().to_be_bytes())
        .await
        .unwrap();
    stream.write_all(&bytes).await.unwrap();
    let length = stream.read_u16().await.unwrap();
    let mut buffer = vec![0u8; usize::from(length)];
    stream.read_exact(&mut buffer).await.unwrap();
    Message::from_vec(&buffer).unwrap()
}

fn addresses(records: &[Record]) -> Vec<Ipv4Addr> {
    records
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(A(ip)) => Some(*ip),
            _ => None,
        })
        .collect()
}

/// An upstream resolver that answers every A query with 192.0.2.99.
async fn upstream() -> SocketAddr {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let address = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buffer = vec![0u8; 4096];
        while let Ok((n, from)) = socket.recv_from(&mut buffer).await {
            let Ok(request) = Message::from_vec(&buffer[..n]) else {
                continue;
            };
            let mut response =
                Message::new(request.metadata.id, MessageType::Response, OpCode::Query);
            response.metadata.recursion_available = true;
            for q in &request.queries {
                response.add_query(q.clone());
                response.answers.push(Record::from_rdata(
                    q.name().clone(),
                    300,
                    RData::A(A(Ipv4Addr::new(192, 0, 2, 99))),
                ));
            }
            let _ = socket.send_to(&response.to_vec().unwrap(), from).await;
        }
    });
    address
}

#[tokio::test]
async fn cluster_names_are_answered_and_others_forwarded() {
    let (services, mut services_writer) = reflector::store::<Service>();
    let (slices, mut slices_writer) = reflector::store::<EndpointSlice>();
    let web: Service = serde_json::from_value(json!({
        "metadata": {"namespace": "shop", "name": "web"},
        "spec": {"clusterIP": "10.96.7.7", "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}}))
    .unwrap();
    services_writer.apply_watcher_event(&watcher::Event::Apply(web));
    let slice: EndpointSlice = serde_json::from_value(json!({
        "metadata": {"namespace": "shop", "name": "web-1", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4", "endpoints": [], "ports": []}))
    .unwrap();
    slices_writer.apply_watcher_event(&watcher::Event::Apply(slice));

    let mut config = DnsConfig::new("cluster.local");
    config.upstreams = vec![upstream().await];
    let handler = Handler::new(services, slices, config, None, "test".into());
    let shutdown = CancellationToken::new();
    let server = serve("127.0.0.1:0".parse().unwrap(), handler, shutdown.clone())
        .await
        .unwrap();

    let answer = udp(server, "web.shop.svc.cluster.local.", RecordType::A).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert!(answer.metadata.authoritative);
    assert_eq!(addresses(&answer.answers), [Ipv4Addr::new(10, 96, 7, 7)]);
    assert_eq!(answer.answers[0].ttl, 5);
    let answer = tcp(server, "web.shop.svc.cluster.local.", RecordType::A).await;
    assert_eq!(addresses(&answer.answers), [Ipv4Addr::new(10, 96, 7, 7)]);

    let srv = udp(
        server,
        "_http._tcp.web.shop.svc.cluster.local.",
        RecordType::SRV,
    )
    .await;
    assert_eq!(srv.answers.len(), 1);
    assert_eq!(addresses(&srv.additionals), [Ipv4Addr::new(10, 96, 7, 7)]);

    let missing = udp(server, "nope.shop.svc.cluster.local.", RecordType::A).await;
    assert_eq!(missing.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(missing.authorities.len(), 1, "the zone's SOA");
    let nodata = udp(server, "web.shop.svc.cluster.local.", RecordType::AAAA).await;
    assert_eq!(nodata.metadata.response_code, ResponseCode::NoError);
    assert!(nodata.answers.is_empty());

    let forwarded = udp(server, "example.org.", RecordType::A).await;
    assert_eq!(
        addresses(&forwarded.answers),
        [Ipv4Addr::new(192, 0, 2, 99)]
    );
    assert!(!forwarded.metadata.authoritative);

    // junk gets no crash: the server still answers afterwards
    let junk = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    junk.send_to(b"\x00\x01garbage", server).await.unwrap();
    let answer = udp(server, "web.shop.svc.cluster.local.", RecordType::A).await;
    assert_eq!(addresses(&answer.answers), [Ipv4Addr::new(10, 96, 7, 7)]);
    shutdown.cancel();
}
