//! End to end through a real `concord serve` process and the gRPC API.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use concord_client::{Client, ClientError, Context, ReadOptions, SetBucketRequest, WriteOptions};
use concord_proto::v1 as pb;
use concord_tests::{Server, ServerOptions};
use tonic::Code;

async fn values(c: &Client, bucket: &str, key: &[u8]) -> BTreeSet<Vec<u8>> {
    c.get(bucket, key).await.unwrap().values().into_iter().map(<[u8]>::to_vec).collect()
}

fn set(items: &[&[u8]]) -> BTreeSet<Vec<u8>> {
    items.iter().map(|v| v.to_vec()).collect()
}

#[tokio::test]
async fn key_value_semantics() {
    let server = Server::start().await.unwrap();
    let c = server.client().await;

    // Round trip; a never-written key is not an error.
    let missing = c.get("b", b"nope").await.unwrap();
    assert!(!missing.found && missing.siblings.is_empty() && missing.context.is_empty());
    c.put("b", b"k", b"v1", &Context::none()).await.unwrap();
    let r = c.get("b", b"k").await.unwrap();
    assert!(r.found);
    assert_eq!(r.values(), vec![&b"v1"[..]]);
    assert_eq!(r.replicas.len(), 1);

    // Concurrent writes (no context) become siblings. The reply's context
    // covers both, so the reply shows both.
    let second = c.put("b", b"k", b"v2", &Context::none()).await.unwrap();
    assert_eq!(second.sibling_count, 2);
    let shown: BTreeSet<Vec<u8>> = second.siblings.iter().map(|s| s.value.clone()).collect();
    assert_eq!(shown, set(&[b"v1", b"v2"]), "a reply whose context covers siblings lists them");
    assert_eq!(values(&c, "b", b"k").await, set(&[b"v1", b"v2"]));

    // Writing with the read's context supersedes both.
    let r = c.get("b", b"k").await.unwrap();
    let w = c.put("b", b"k", b"merged", &r.context).await.unwrap();
    assert_eq!(w.sibling_count, 1);
    assert_eq!(values(&c, "b", b"k").await, set(&[b"merged"]));

    // Two writers from the same (now stale) context: both kept.
    let stale = c.get("b", b"k").await.unwrap().context;
    c.put("b", b"k", b"x", &stale).await.unwrap();
    c.put("b", b"k", b"y", &stale).await.unwrap();
    assert_eq!(values(&c, "b", b"k").await, set(&[b"x", b"y"]));

    // The put's own returned context is the newest: it supersedes everything.
    let w = c.put("b", b"k", b"z", &c.get("b", b"k").await.unwrap().context).await.unwrap();
    let w2 = c.put("b", b"k", b"z2", &w.context).await.unwrap();
    assert_eq!(w2.sibling_count, 1);

    // Delete, then write again.
    let r = c.get("b", b"k").await.unwrap();
    c.delete("b", b"k", &r.context).await.unwrap();
    let gone = c.get("b", b"k").await.unwrap();
    assert!(!gone.found, "a deleted key reads as not found");
    assert!(!gone.context.is_empty(), "a deleted key still returns its context");
    assert!(gone.siblings.iter().all(|s| s.deleted));
    c.put("b", b"k", b"again", &gone.context).await.unwrap();
    let back = c.get("b", b"k").await.unwrap();
    assert_eq!(back.values(), vec![&b"again"[..]]);
    assert_eq!(back.siblings.len(), 1, "the put with the tombstone's context supersedes it");

    // Binary keys and values, byte for byte.
    let key: Vec<u8> = (0..=255u8).collect();
    let value: Vec<u8> = (0..2000u32).map(|i| (i * 7 % 256) as u8).collect();
    c.put("bin", &key, &value, &Context::none()).await.unwrap();
    assert_eq!(c.get("bin", &key).await.unwrap().values(), vec![&value[..]]);
    c.put("bin", &[0], b"", &Context::none()).await.unwrap();
    let empty = c.get("bin", &[0]).await.unwrap();
    assert!(empty.found, "an empty value is still a value");

    // Buckets are isolated.
    c.put("one", b"same", b"1", &Context::none()).await.unwrap();
    c.put("two", b"same", b"2", &Context::none()).await.unwrap();
    assert_eq!(values(&c, "one", b"same").await, set(&[b"1"]));
    assert_eq!(values(&c, "two", b"same").await, set(&[b"2"]));
    assert!(!c.get("three", b"same").await.unwrap().found);
}

fn code(e: &ClientError) -> Code {
    match e {
        ClientError::InvalidArgument(_) => Code::InvalidArgument,
        ClientError::Unavailable(_) => Code::Unavailable,
        ClientError::Timeout(_) => Code::DeadlineExceeded,
        ClientError::SiblingLimit { .. } | ClientError::FailedPrecondition(_) => Code::FailedPrecondition,
        ClientError::NotFound(_) => Code::NotFound,
        ClientError::Other { code, .. } => *code,
        ClientError::Connect { .. } => Code::Unknown,
    }
}

#[tokio::test]
async fn bad_input_is_refused_and_changes_nothing() {
    let server = Server::start().await.unwrap();
    let c = server.client().await;
    let before = c.put("b", b"k", b"original", &Context::none()).await.unwrap();
    let other_key_ctx = c.put("b", b"other", b"o", &Context::none()).await.unwrap().context;

    let mut raw = pb::kv_client::KvClient::connect(format!("http://{}", server.addr)).await.unwrap();
    let long_key = vec![b'k'; 1025];
    let big_value = vec![0u8; 10 * 1024];
    let bad_bucket = "x".repeat(256);
    // A token for this key that names 200,000 actors, signed with the
    // node's own key (read from its data directory): refused before it is
    // decoded (merging it took seconds under a lock). Signed with any other
    // key, it is refused before that.
    let keys = node_keys(&server);
    let forged = concord::causal::VersionVector::from_entries((1..=200_000u64).map(|a| (a, 1)));
    let huge_ctx = Context::from_bytes(concord::causal::encode_context(&keys, &forged, "b", b"k").unwrap());
    let unsigned_ctx = Context::from_bytes(
        concord::causal::encode_context(&concord::security::KeySet::generate(), &forged, "b", b"k").unwrap(),
    );
    let cases: Vec<(&str, Result<_, ClientError>, &str)> = vec![
        ("empty key", c.put("b", b"", b"v", &Context::none()).await, "key is empty"),
        ("long key", c.put("b", &long_key, b"v", &Context::none()).await, "1025 bytes"),
        ("oversized", c.put("b", b"k", &big_value, &Context::none()).await, "max_object_bytes"),
        ("bucket chars", c.put("b/x", b"k", b"v", &Context::none()).await, "'/'"),
        ("bucket empty", c.put("", b"k", b"v", &Context::none()).await, "empty"),
        ("bucket long", c.put(&bad_bucket, b"k", b"v", &Context::none()).await, "255"),
        ("garbage context", c.put("b", b"k", b"v", &Context::from_bytes(vec![2, 2, 3])).await, "malformed"),
        ("unsigned context", c.put("b", b"k", b"v", &Context::from_bytes(vec![1, 2, 3])).await, "version 1"),
        ("unknown context version", c.put("b", b"k", b"v", &Context::from_bytes(vec![77])).await, "version 77"),
        ("context of another key", c.put("b", b"k", b"v", &other_key_ctx).await, "different bucket or key"),
        ("context of 200,000 actors", c.put("b", b"k", b"v", &huge_ctx).await, "names 200000 actors"),
        ("forged context", c.put("b", b"k", b"v", &unsigned_ctx).await, "not issued by this cluster"),
        (
            "w above n",
            c.put_with("b", b"k", b"v", &Context::none(), WriteOptions { w: 4, ..Default::default() }).await,
            "w=4 exceeds",
        ),
        ("delete with garbage context", c.delete("b", b"k", &Context::from_bytes(vec![2])).await, "malformed"),
        (
            "timeout over a minute",
            c.put_with(
                "b",
                b"k",
                b"v",
                &Context::none(),
                WriteOptions { timeout: Some(std::time::Duration::from_secs(61)), ..Default::default() },
            )
            .await,
            "timeout_ms is 61000; at most 60000",
        ),
    ];
    for (what, result, needle) in cases {
        let e = result.expect_err(what);
        assert_eq!(code(&e), Code::InvalidArgument, "{what}: {e}");
        assert!(e.to_string().contains(needle), "{what}: {e}");
    }
    for (what, result, needle) in [
        ("get empty key", c.get("b", b"").await, "key is empty"),
        ("get bad bucket", c.get("a b", b"k").await, "' '"),
        ("get r above n", c.get_with("b", b"k", ReadOptions { r: 9, ..Default::default() }).await, "r=9 exceeds"),
        (
            "get timeout over a minute",
            c.get_with(
                "b",
                b"k",
                ReadOptions { timeout: Some(std::time::Duration::from_secs(3600)), ..Default::default() },
            )
            .await,
            "at most 60000",
        ),
    ] {
        let e = result.expect_err(what);
        assert_eq!(code(&e), Code::InvalidArgument, "{what}: {e}");
        assert!(e.to_string().contains(needle), "{what}: {e}");
    }
    // An unknown consistency level only a raw client can send.
    let status = raw
        .get(pb::GetRequest {
            bucket: "b".into(),
            key: b"k".to_vec().into(),
            options: Some(pb::ReadOptions { consistency: 42, ..Default::default() }),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("consistency"), "{}", status.message());

    // Bad bucket properties.
    for (req, needle) in [
        (SetBucketRequest { name: "b".into(), n: Some(0), ..Default::default() }, "n must be"),
        (SetBucketRequest { name: "b".into(), r: Some(5), ..Default::default() }, "r=5 exceeds n=3"),
        (SetBucketRequest { name: "b c".into(), ..Default::default() }, "' '"),
        (SetBucketRequest { name: "b".into(), resolver: Some("nover".into()), ..Default::default() }, "NAME@VERSION"),
        (
            SetBucketRequest {
                name: "b".into(),
                max_siblings: Some(1024),
                max_object_bytes: Some(1 << 20),
                ..Default::default()
            },
            "one key may hold at most",
        ),
    ] {
        let e = c.set_bucket(req).await.unwrap_err();
        assert_eq!(code(&e), Code::InvalidArgument, "{e}");
        assert!(e.to_string().contains(needle), "{e}");
    }

    // Nothing changed.
    let after = c.get("b", b"k").await.unwrap();
    assert_eq!(after.values(), vec![&b"original"[..]]);
    assert_eq!(after.context, before.context);
    let props = c.get_bucket("b").await.unwrap();
    assert!(!props.configured);
    assert_eq!((props.n, props.r), (3, 2));
}

/// The node's cluster keys, from its data directory.
fn node_keys(server: &Server) -> concord::security::KeySet {
    let bytes = std::fs::read(server.data_dir.join(concord::security::keys::KEYS_FILE)).unwrap();
    concord::security::KeySet::decode(&bytes).unwrap()
}

#[tokio::test]
async fn forged_or_altered_contexts_erase_nothing() {
    let server = Server::start().await.unwrap();
    let c = server.client().await;
    c.put("b", b"k", b"one", &Context::none()).await.unwrap();
    c.put("b", b"k", b"two", &Context::none()).await.unwrap();
    let read = c.get("b", b"k").await.unwrap();
    assert_eq!(read.siblings.len(), 2);
    // A context the client made up, covering every actor the key has with
    // a huge counter (the actors show in a token's bytes): it would erase
    // both siblings on every replica, and u64::MAX would exhaust the
    // actor's counters. Built with the right layout but not the key.
    let seen = concord::causal::decode_context(
        &node_keys(&server),
        concord::security::now_ms(),
        read.context.as_bytes(),
        "b",
        b"k",
    )
    .unwrap();
    let mut actors = concord::causal::VersionVector::new();
    for &(a, _) in seen.entries() {
        actors.observe(a, u64::MAX);
    }
    let forged = concord::causal::encode_context(&concord::security::KeySet::generate(), &actors, "b", b"k").unwrap();
    let e = c.put("b", b"k", b"erase", &Context::from_bytes(forged)).await.unwrap_err();
    assert_eq!(code(&e), Code::InvalidArgument, "{e}");
    // Every single-byte change of a real token is refused (unsigned, most
    // of these were taken, each adding a sibling).
    let token = read.context.as_bytes().to_vec();
    for i in 0..token.len() {
        let mut bad = token.clone();
        bad[i] ^= 0x01;
        let e = c.put("b", b"k", b"flipped", &Context::from_bytes(bad)).await.unwrap_err();
        assert_eq!(code(&e), Code::InvalidArgument, "byte {i}: {e}");
    }
    let after = c.get("b", b"k").await.unwrap();
    assert_eq!(values(&c, "b", b"k").await, set(&[b"one", b"two"]));
    assert_eq!(after.context, read.context, "nothing was written");
    // The real token still works, and replaces both.
    c.put("b", b"k", b"merged", &read.context).await.unwrap();
    assert_eq!(values(&c, "b", b"k").await, set(&[b"merged"]));
}

#[tokio::test]
async fn sibling_budget_is_enforced_with_what_is_needed_to_merge() {
    let server = Server::start().await.unwrap();
    let c = server.client().await;
    let props = c
        .set_bucket(SetBucketRequest { name: "tight".into(), max_siblings: Some(3), ..Default::default() })
        .await
        .unwrap();
    assert_eq!(props.max_siblings, 3);
    for v in [&b"a"[..], b"b", b"c"] {
        c.put("tight", b"k", v, &Context::none()).await.unwrap();
    }
    let e = c.put("tight", b"k", b"d", &Context::none()).await.unwrap_err();
    let ClientError::SiblingLimit { limit, siblings, context } = e else { panic!("expected SiblingLimit, got {e}") };
    assert_eq!(limit, 3);
    let got: BTreeSet<Vec<u8>> = siblings.iter().map(|s| s.value.clone()).collect();
    assert_eq!(got, set(&[b"a", b"b", b"c"]));
    assert_eq!(values(&c, "tight", b"k").await, got, "the refused write changed nothing");
    // Merge and write back with the carried context.
    c.put("tight", b"k", b"abcd", &context).await.unwrap();
    assert_eq!(values(&c, "tight", b"k").await, set(&[b"abcd"]));
}

#[tokio::test]
async fn parallel_writes_are_all_readable() {
    let server = Server::start().await.unwrap();
    let c = server.client().await;
    let writes: Vec<_> = (0..200u32)
        .map(|i| {
            let c = c.clone();
            tokio::spawn(async move {
                let key = format!("k{i}");
                c.put("par", key.as_bytes(), &i.to_be_bytes(), &Context::none()).await.map(|_| ())
            })
        })
        .collect();
    for w in writes {
        w.await.unwrap().unwrap();
    }
    // And 50 concurrent writers on one key: every write is a sibling.
    let hot: Vec<_> = (0..30u32)
        .map(|i| {
            let c = c.clone();
            tokio::spawn(async move { c.put("par", b"hot", &i.to_be_bytes(), &Context::none()).await.map(|_| ()) })
        })
        .collect();
    for w in hot {
        w.await.unwrap().unwrap();
    }
    for i in 0..200u32 {
        let key = format!("k{i}");
        assert_eq!(values(&c, "par", key.as_bytes()).await, set(&[&i.to_be_bytes()]), "{key}");
    }
    assert_eq!(c.get("par", b"hot").await.unwrap().siblings.len(), 30);
}

#[tokio::test]
async fn restart_keeps_data_and_bucket_properties() {
    let mut server = Server::start().await.unwrap();
    {
        let c = server.client().await;
        for i in 0..50u32 {
            c.put("keep", format!("k{i}").as_bytes(), &i.to_le_bytes(), &Context::none()).await.unwrap();
        }
        c.set_bucket(SetBucketRequest { name: "keep".into(), max_siblings: Some(7), ..Default::default() })
            .await
            .unwrap();
    }
    server.restart().await.unwrap();
    let c = server.client().await;
    for i in 0..50u32 {
        assert_eq!(values(&c, "keep", format!("k{i}").as_bytes()).await, set(&[&i.to_le_bytes()]));
    }
    assert_eq!(c.get_bucket("keep").await.unwrap().max_siblings, 7);
}

#[tokio::test]
async fn fsync_mode_loses_no_acknowledged_write_on_kill_9() {
    let mut server =
        Server::start_with(ServerOptions { args: vec!["--durability".into(), "fsync".into()], ..Default::default() })
            .await
            .unwrap();
    let c = server.client().await;
    let acked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..8u32)
        .map(|w| {
            let (c, acked, stop) = (c.clone(), Arc::clone(&acked), Arc::clone(&stop));
            tokio::spawn(async move {
                for i in 0..100_000u32 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let key = format!("w{w}-{i}");
                    match c.put("durable", key.as_bytes(), key.as_bytes(), &Context::none()).await {
                        Ok(_) => acked.lock().unwrap().push(key),
                        Err(_) => break,
                    }
                }
            })
        })
        .collect();
    // Let the writers get going, then pull the plug mid-stream.
    while acked.lock().unwrap().len() < 300 {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    server.kill9();
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    server.restart().await.unwrap();
    let c = server.client().await;
    for key in &acked {
        let r = c.get("durable", key.as_bytes()).await.unwrap();
        assert_eq!(r.values(), vec![key.as_bytes()], "acknowledged write {key} was lost");
    }
}

#[tokio::test]
async fn a_second_process_on_the_same_data_dir_is_refused() {
    let server = Server::start().await.unwrap();
    let second = Server::start_with(ServerOptions { data_dir: Some(server.data_dir.clone()), ..Default::default() })
        .await
        .err()
        .expect("second server on the same data dir must fail");
    let msg = second.to_string();
    assert!(msg.contains("in use by another Concord process"), "{msg}");
    // The first keeps serving.
    server.client().await.put("b", b"k", b"v", &Context::none()).await.unwrap();
}

#[tokio::test]
async fn health_and_reflection_are_served() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_reflection::pb::{v1, v1alpha};

    let server = Server::start().await.unwrap();
    let uri = format!("http://{}", server.addr);
    let channel = tonic::transport::Endpoint::from_shared(uri).unwrap().connect().await.unwrap();
    let mut health = HealthClient::new(channel.clone());
    let status = health
        .check(tonic_health::pb::HealthCheckRequest { service: "concord.v1.Kv".into() })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);

    let mut r1 = v1::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let req = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(String::new())),
    };
    let mut stream = r1.server_reflection_info(futures::stream::iter([req])).await.unwrap().into_inner();
    let reply = stream.message().await.unwrap().unwrap();
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) = reply.message_response
    else {
        panic!("unexpected reflection reply")
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"concord.v1.Kv") && names.contains(&"concord.v1.Admin"), "{names:?}");

    let mut r0 = v1alpha::server_reflection_client::ServerReflectionClient::new(channel);
    let req = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1alpha::server_reflection_request::MessageRequest::ListServices(String::new())),
    };
    let mut stream = r0.server_reflection_info(futures::stream::iter([req])).await.unwrap().into_inner();
    assert!(stream.message().await.unwrap().is_some(), "v1alpha reflection answers");
}

#[tokio::test]
async fn metrics_endpoint_reports_requests() {
    let metrics_port = concord_tests::free_port();
    let server = Server::start_with(ServerOptions {
        args: vec!["--metrics-listen".into(), format!("127.0.0.1:{metrics_port}")],
        ..Default::default()
    })
    .await
    .unwrap();
    let c = server.client().await;
    c.put("m", b"k", b"v", &Context::none()).await.unwrap();
    c.put("m", b"k", b"w", &Context::none()).await.unwrap();
    c.get("m", b"k").await.unwrap();
    let _ = c.put("m", b"", b"v", &Context::none()).await;
    let body = http_get(metrics_port, "/metrics").await;
    for needle in [
        "concord_request_duration_seconds_bucket{op=\"put\"",
        "concord_requests_total{op=\"put\",code=\"ok\"} 2",
        "concord_requests_total{op=\"put\",code=\"invalid_argument\"} 1",
        "concord_siblings_per_read_bucket",
    ] {
        assert!(body.contains(needle), "metrics lack {needle}:\n{body}");
    }
}

/// A minimal HTTP/1.1 GET on 127.0.0.1.
async fn http_get(port: u16, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}
