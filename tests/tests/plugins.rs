//! WebAssembly plugins end to end: every example plugin through gRPC, hot
//! swaps under load, and misbehaving plugins contained.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use concord::buckets::{BucketProps, PluginRef};
use concord::plugins::{DeployRequest, PluginConfig, Plugins};
use concord::storage::MemStore;
use concord_client::{Client, ClientError, Context, SetBucketRequest};
use concord_proto::v1 as pb;
use concord_tests::{Server, ServerOptions, plugins};
use serde_json::{Value, json};

async fn deploy(c: &Client, path: &str, name: &str, version: &str) -> Result<pb::DeployPluginResponse, ClientError> {
    deploy_with(c, path, name, version, false, &[]).await
}

async fn deploy_with(
    c: &Client,
    path: &str,
    name: &str,
    version: &str,
    force: bool,
    samples: &[&str],
) -> Result<pb::DeployPluginResponse, ClientError> {
    let wasm = std::fs::read(path).unwrap();
    let req = pb::DeployPluginRequest {
        name: name.into(),
        version: version.into(),
        wasm: wasm.into(),
        force,
        samples: samples.iter().map(|s| s.as_bytes().to_vec().into()).collect(),
        ..Default::default()
    };
    Ok(c.admin().deploy_plugin(req).await?.into_inner())
}

/// A node that runs the resolver on every read: with write-back off,
/// siblings stay, and with the memo off, every read calls the plugin.
async fn resolving_every_read() -> Server {
    Server::start_with(ServerOptions {
        env: vec![
            ("CONCORD_PLUGINS__WRITE_BACK_RESOLVED".into(), "false".into()),
            ("CONCORD_PLUGINS__MEMO_MB".into(), "0".into()),
        ],
        ..Default::default()
    })
    .await
    .unwrap()
}

async fn bind(c: &Client, req: SetBucketRequest) {
    c.set_bucket(req).await.unwrap();
}

fn resolver(bucket: &str, plugin: &str) -> SetBucketRequest {
    SetBucketRequest { name: bucket.into(), resolver: Some(plugin.into()), ..Default::default() }
}

fn validators(bucket: &str, list: &[&str]) -> SetBucketRequest {
    SetBucketRequest {
        name: bucket.into(),
        validators: Some(pb::ValidatorList { validators: list.iter().map(|s| s.to_string()).collect() }),
        ..Default::default()
    }
}

/// Writes `values` as concurrent siblings (no context).
async fn siblings(c: &Client, bucket: &str, key: &[u8], values: &[&[u8]]) {
    for v in values {
        c.put(bucket, key, v, &Context::none()).await.unwrap();
    }
}

#[tokio::test]
async fn cart_never_loses_an_added_item_under_concurrent_writers() {
    let server = Server::start().await.unwrap();
    let c = server.client().await;
    deploy_with(&c, plugins::CART, "cart", "1.0.0", false, &[r#"{"items":{"a":1}}"#, r#"{"items":{"b":2}}"#])
        .await
        .unwrap();
    bind(&c, resolver("carts", "cart@1.0.0")).await;

    // Eight shoppers add items to one cart at once, each reading the cart
    // and writing back its copy plus one item: a classic lost-update race.
    let mut tasks = Vec::new();
    for shopper in 0..8u32 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            for n in 0..6u32 {
                let read = c.get("carts", b"cart-1").await.unwrap();
                let mut cart: BTreeMap<String, u64> = match read.values().first() {
                    Some(v) => serde_json::from_slice::<Value>(v).unwrap()["items"]
                        .as_object()
                        .unwrap()
                        .iter()
                        .map(|(k, v)| (k.clone(), v.as_u64().unwrap()))
                        .collect(),
                    None => BTreeMap::new(),
                };
                cart.insert(format!("s{shopper}-item{n}"), 1);
                let body = serde_json::to_vec(&json!({ "items": cart })).unwrap();
                c.put("carts", b"cart-1", &body, &read.context).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let read = c.get("carts", b"cart-1").await.unwrap();
    assert_eq!(read.values().len(), 1, "the resolver merges to one cart");
    let cart: Value = serde_json::from_slice(read.values()[0]).unwrap();
    let items: BTreeSet<&str> = cart["items"].as_object().unwrap().keys().map(String::as_str).collect();
    for shopper in 0..8 {
        for n in 0..6 {
            let item = format!("s{shopper}-item{n}");
            assert!(items.contains(item.as_str()), "{item} was lost; cart is {cart}");
        }
    }
    if read.siblings.len() > 1 || read.resolved_by.is_some() {
        assert_eq!(read.resolved_by.as_deref(), Some("cart@1.0.0"));
    }
}

#[tokio::test]
async fn lww_picks_the_latest_and_counter_sums_across_siblings() {
    let server = Server::start().await.unwrap();
    let c = server.client().await;
    deploy(&c, plugins::LWW, "lww", "1.0.0").await.unwrap();
    deploy_with(&c, plugins::COUNTER, "counter", "1.0.0", false, &[r#"{"p":{"a":1}}"#, r#"{"p":{"b":2},"n":{"a":1}}"#])
        .await
        .unwrap();
    bind(&c, resolver("profiles", "lww@1.0.0")).await;
    bind(&c, resolver("counters", "counter@1.0.0")).await;

    c.put("profiles", b"ada", b"first", &Context::none()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    c.put("profiles", b"ada", b"second", &Context::none()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    c.put("profiles", b"ada", b"latest", &Context::none()).await.unwrap();
    let r = c.get("profiles", b"ada").await.unwrap();
    assert_eq!(r.values(), vec![&b"latest"[..]]);
    assert_eq!(r.resolved_by.as_deref(), Some("lww@1.0.0"));
    // The context covers every sibling: a write with it leaves one.
    let w = c.put("profiles", b"ada", b"after", &r.context).await.unwrap();
    assert_eq!(w.sibling_count, 1);

    // Two clients increment from the same base concurrently.
    let base = c.put("counters", b"hits", br#"{"p":{"base":5}}"#, &Context::none()).await.unwrap().context;
    c.put("counters", b"hits", br#"{"p":{"base":5,"web-1":3}}"#, &base).await.unwrap();
    c.put("counters", b"hits", br#"{"p":{"base":5,"web-2":2},"n":{"web-2":1}}"#, &base).await.unwrap();
    let r = c.get("counters", b"hits").await.unwrap();
    assert_eq!(r.resolved_by.as_deref(), Some("counter@1.0.0"));
    let v: Value = serde_json::from_slice(r.values()[0]).unwrap();
    let sum = |m: &Value| m.as_object().map_or(0, |o| o.values().map(|x| x.as_i64().unwrap()).sum::<i64>());
    assert_eq!(sum(&v["p"]) - sum(&v["n"]), 5 + 3 + 2 - 1, "{v}");

    // The write-back leaves one sibling for later reads.
    let mut one = false;
    for _ in 0..100 {
        let raw = pb::kv_client::KvClient::connect(format!("http://{}", server.addr))
            .await
            .unwrap()
            .get(pb::GetRequest { bucket: "counters".into(), key: b"hits".to_vec().into(), options: None })
            .await
            .unwrap()
            .into_inner();
        if raw.resolved_by.is_empty() && raw.siblings.len() == 1 {
            one = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(one, "the resolved counter was written back");
}

#[tokio::test]
async fn validators_reject_with_the_plugins_reason_and_write_nothing() {
    let server = Server::start().await.unwrap();
    let c = server.client().await;
    deploy(&c, plugins::JSON_SCHEMA, "json-schema", "1.0.0").await.unwrap();
    deploy(&c, plugins::MAX_SIZE, "max-size", "1.0.0").await.unwrap();
    bind(&c, validators("users", &["max-size@1.0.0", "json-schema@1.0.0"])).await;

    let ok = br#"{"name":"Ada","email":"ada@example.com"}"#;
    let w = c.put("users", b"u1", ok, &Context::none()).await.unwrap();
    assert_eq!(w.validated_by, vec!["max-size@1.0.0", "json-schema@1.0.0"]);

    let e = c.put("users", b"u2", br#"{"name":"Bob"}"#, &Context::none()).await.unwrap_err();
    let ClientError::InvalidArgument(msg) = &e else { panic!("expected INVALID_ARGUMENT, got {e}") };
    assert!(msg.contains("json-schema@1.0.0") && msg.contains("missing required field \"email\""), "{msg}");
    assert!(!c.get("users", b"u2").await.unwrap().found, "a rejected write wrote nothing");

    let big = format!(r#"{{"name":"{}","email":"x"}}"#, "n".repeat(2000));
    let e = c.put("users", b"u1", big.as_bytes(), &Context::none()).await.unwrap_err();
    assert!(e.to_string().contains("max-size@1.0.0") && e.to_string().contains("at most 1024"), "{e}");
    assert_eq!(c.get("users", b"u1").await.unwrap().values(), vec![&ok[..]], "u1 is unchanged");

    // Binding mistakes are refused.
    let e = c.set_bucket(validators("users", &["lww@9"])).await.unwrap_err();
    assert!(e.to_string().contains("lww@9 is not deployed"), "{e}");
    deploy(&c, plugins::LWW, "lww", "1.0.0").await.unwrap();
    let e = c.set_bucket(validators("users", &["lww@1.0.0"])).await.unwrap_err();
    assert!(e.to_string().contains("is a resolver, not a validator"), "{e}");
    let e = c.set_bucket(resolver("users", "max-size@1.0.0")).await.unwrap_err();
    assert!(e.to_string().contains("is a validator, not a resolver"), "{e}");
}

#[tokio::test]
async fn deploys_are_checked_and_survive_restarts() {
    let mut server = Server::start().await.unwrap();
    let c = server.client().await;

    // A core module and a component of the same plugin both deploy.
    let core = std::fs::read(plugins::LWW).unwrap();
    let component = concord::plugins::package::prepare(&core).unwrap().component;
    let r = c
        .admin()
        .deploy_plugin(pb::DeployPluginRequest {
            name: "lww-component".into(),
            version: "1".into(),
            wasm: component.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.plugin.unwrap().kind, pb::PluginKind::Resolver as i32);
    let first = deploy(&c, plugins::LWW, "lww", "1.0.0").await.unwrap().plugin.unwrap();
    assert_eq!(first.interface_version, "0.1.0");
    // Same bytes again: a no-op. Other bytes under the same version: refused.
    assert_eq!(deploy(&c, plugins::LWW, "lww", "1.0.0").await.unwrap().plugin.unwrap().sha256, first.sha256);
    let e = deploy(&c, plugins::CART, "lww", "1.0.0").await.unwrap_err();
    assert!(matches!(e, ClientError::FailedPrecondition(_)) && e.to_string().contains("different bytes"), "{e}");

    // Plugins that may not run are refused with the reason, and stored nowhere.
    let e = deploy(&c, plugins::WASI_RESOLVER, "dice", "1").await.unwrap_err();
    assert!(matches!(e, ClientError::InvalidArgument(_)) && e.to_string().contains("WASI"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.wasm");
    std::fs::write(&garbage, b"definitely not wasm").unwrap();
    let e = deploy(&c, garbage.to_str().unwrap(), "junk", "1").await.unwrap_err();
    assert!(e.to_string().contains("not a WebAssembly module"), "{e}");
    let e = deploy(&c, plugins::LWW, "bad name!", "1").await.unwrap_err();
    assert!(e.to_string().contains("plugin name"), "{e}");

    // A resolver that breaks the laws is refused unless forced.
    let e = deploy(&c, plugins::CONCAT_RESOLVER, "concat", "1").await.unwrap_err();
    assert!(e.to_string().contains("order-insensitive"), "{e}");
    let forced = deploy_with(&c, plugins::CONCAT_RESOLVER, "concat", "1", true, &[]).await.unwrap();
    assert!(!forced.warnings.is_empty());

    let listed = |c: Client| async move {
        let list = c.admin().list_plugins(pb::ListPluginsRequest {}).await.unwrap().into_inner().plugins;
        list.into_iter().map(|p| format!("{}@{}", p.name, p.version)).collect::<BTreeSet<_>>()
    };
    let before = listed(c.clone()).await;
    assert_eq!(before, ["concat@1", "lww-component@1", "lww@1.0.0"].map(String::from).into_iter().collect());

    bind(&c, resolver("p", "lww@1.0.0")).await;
    server.restart().await.unwrap();
    let c = server.client().await;
    assert_eq!(listed(c.clone()).await, before);
    siblings(&c, "p", b"k", &[b"a", b"b"]).await;
    assert_eq!(c.get("p", b"k").await.unwrap().resolved_by.as_deref(), Some("lww@1.0.0"));
}

#[tokio::test]
async fn resolvers_swap_under_load_without_a_failed_request() {
    // Reads resolve every time: write-back would collapse the siblings.
    let server = resolving_every_read().await;
    let c = server.client().await;
    deploy(&c, plugins::LWW, "lww", "1").await.unwrap();
    deploy(&c, plugins::LWW, "lww", "2").await.unwrap();
    bind(&c, resolver("hot", "lww@1")).await;
    for k in 0..20u32 {
        let key = format!("k{k}");
        siblings(&c, "hot", key.as_bytes(), &[b"x", b"y", b"z"]).await;
    }

    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let readers: Vec<_> = (0..6)
        .map(|i| {
            let (c, stop, reads, failures) = (c.clone(), stop.clone(), reads.clone(), failures.clone());
            tokio::spawn(async move {
                let mut n = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("k{}", (n + i) % 20);
                    n += 1;
                    match c.get("hot", key.as_bytes()).await {
                        Ok(r) if r.resolved_by.as_deref().is_some_and(|b| b.starts_with("lww@")) => {}
                        Ok(r) => panic!("read was not resolved: {r:?}"),
                        Err(e) => {
                            eprintln!("read failed: {e}");
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    reads.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for swap in 0..24 {
        let version = if swap % 2 == 0 { "lww@2" } else { "lww@1" };
        bind(&c, resolver("hot", version)).await;
        // Every read that starts after the change returns uses the new version.
        let r = c.get("hot", b"k0").await.unwrap();
        assert_eq!(r.resolved_by.as_deref(), Some(version), "swap {swap}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.await.unwrap();
    }
    assert!(reads.load(Ordering::Relaxed) > 100, "the readers ran");
    assert_eq!(failures.load(Ordering::Relaxed), 0, "no request failed during 24 swaps");
}

/// A node with write-back off and a metrics endpoint (its port returned),
/// plus `env`.
async fn metered(env: &[(&str, &str)]) -> (Server, u16) {
    let metrics_port = concord_tests::free_port();
    let mut vars = vec![("CONCORD_PLUGINS__WRITE_BACK_RESOLVED".to_owned(), "false".to_owned())];
    vars.extend(env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    let server = Server::start_with(ServerOptions {
        args: vec!["--metrics-listen".into(), format!("127.0.0.1:{metrics_port}")],
        env: vars,
        ..Default::default()
    })
    .await
    .unwrap();
    (server, metrics_port)
}

async fn metrics_text(port: u16) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn misbehaving_plugins_are_contained() {
    // A deadline short enough to keep the test quick, long enough for the
    // other misbehaviours to show on a loaded machine; and resolving every
    // read.
    let (server, metrics_port) =
        metered(&[("CONCORD_PLUGINS__DEADLINE_MS", "250"), ("CONCORD_PLUGINS__MEMO_MB", "0")]).await;
    let c = server.client().await;
    let bad_resolvers = [
        ("loop", plugins::LOOP_RESOLVER, "timeout"),
        ("bomb", plugins::BOMB_RESOLVER, "memory"),
        ("panic", plugins::PANIC_RESOLVER, "trap"),
        ("malformed", plugins::MALFORMED_RESOLVER, "malformed"),
        ("oversized", plugins::OVERSIZED_RESOLVER, "oversized"),
    ];
    for (name, path, _) in bad_resolvers {
        // They fail every generated case, so only a forced deploy takes them.
        deploy_with(&c, path, name, "1", true, &[]).await.unwrap();
        bind(&c, resolver(name, &format!("{name}@1"))).await;
        siblings(&c, name, b"k", &[b"one", b"two"]).await;
    }
    deploy(&c, plugins::LWW, "lww", "1").await.unwrap();
    bind(&c, resolver("good", "lww@1")).await;
    siblings(&c, "good", b"k", &[b"one", b"two"]).await;

    for (name, _, _) in bad_resolvers {
        for attempt in 0..6 {
            // Siblings come back unresolved, and nothing is lost.
            let r = c.get(name, b"k").await.unwrap_or_else(|e| panic!("{name} read {attempt} failed: {e}"));
            assert_eq!(r.resolved_by, None, "{name}");
            let got: BTreeSet<&[u8]> = r.values().into_iter().collect();
            assert_eq!(got, [&b"one"[..], b"two"].into_iter().collect(), "{name}");
            // Other buckets keep working in between.
            let good = c.get("good", b"k").await.unwrap();
            assert_eq!(good.resolved_by.as_deref(), Some("lww@1"));
            c.put("plain", format!("{name}{attempt}").as_bytes(), b"v", &Context::none()).await.unwrap();
        }
    }

    // Each kind of failure is counted by plugin, version and reason, and
    // the breakers tripped and show in the cluster status.
    let text = metrics_text(metrics_port).await;
    for (name, _, reason) in bad_resolvers {
        let needle = format!("concord_plugin_failures_total{{plugin=\"{name}\",version=\"1\",reason=\"{reason}\"}}");
        assert!(
            text.contains(&needle),
            "metrics lack {needle}:\n{}",
            text.lines().filter(|l| l.contains("plugin_failures")).collect::<Vec<_>>().join("\n")
        );
    }
    let status = c.cluster_status().await.unwrap();
    let tripped: BTreeSet<&str> = status.tripped_plugins.iter().map(|t| t.bucket.as_str()).collect();
    for (name, _, _) in bad_resolvers {
        assert!(tripped.contains(name), "breaker for {name} did not trip: {:?}", status.tripped_plugins);
    }

    // Validators: fail closed with a clear error by default, open on request.
    deploy(&c, plugins::PANIC_VALIDATOR, "panicky", "1").await.unwrap();
    deploy(&c, plugins::LOOP_VALIDATOR, "spinner", "1").await.unwrap();
    deploy(&c, plugins::UTF8_VALIDATOR, "garbled", "1").await.unwrap();
    for (plugin, reason) in [("panicky@1", "trap"), ("spinner@1", "timeout"), ("garbled@1", "malformed")] {
        let closed = format!("closed-{}", &plugin[..plugin.len() - 2]);
        bind(&c, validators(&closed, &[plugin])).await;
        let e = c.put(&closed, b"k", b"v", &Context::none()).await.unwrap_err();
        let msg = e.to_string();
        assert!(
            matches!(e, ClientError::InvalidArgument(_))
                && msg.contains(plugin)
                && msg.contains(reason)
                && msg.contains("validator_failure"),
            "{msg}"
        );
        assert!(!c.get(&closed, b"k").await.unwrap().found, "a fail-closed validator wrote nothing");

        let open = format!("open-{}", &plugin[..plugin.len() - 2]);
        c.set_bucket(SetBucketRequest {
            name: open.clone(),
            validators: Some(pb::ValidatorList { validators: vec![plugin.into()] }),
            validator_failure: Some(pb::ValidatorFailure::Accept as i32),
            ..Default::default()
        })
        .await
        .unwrap();
        c.put(&open, b"k", b"v", &Context::none()).await.unwrap();
        assert!(c.get(&open, b"k").await.unwrap().found, "a fail-open validator let the write through");
    }
    // Still healthy.
    c.put("plain", b"after", b"v", &Context::none()).await.unwrap();
    assert_eq!(c.get("good", b"k").await.unwrap().resolved_by.as_deref(), Some("lww@1"));
}

#[tokio::test]
async fn a_tripped_resolver_falls_back_to_the_version_that_worked() {
    let server = resolving_every_read().await;
    let c = server.client().await;
    deploy(&c, plugins::LWW, "policy", "1").await.unwrap();
    deploy_with(&c, plugins::PANIC_RESOLVER, "policy", "2", true, &[]).await.unwrap();
    bind(&c, resolver("b", "policy@1")).await;
    siblings(&c, "b", b"k", &[b"a", b"b"]).await;
    assert_eq!(c.get("b", b"k").await.unwrap().resolved_by.as_deref(), Some("policy@1"));
    // A bad rollout: v2 panics. After a few failures it is switched off and
    // reads are resolved by v1 again.
    bind(&c, resolver("b", "policy@2")).await;
    let mut by = Vec::new();
    for _ in 0..8 {
        by.push(c.get("b", b"k").await.unwrap().resolved_by);
    }
    assert_eq!(by[0], None, "v2 failed; siblings were kept");
    assert_eq!(by.last().unwrap().as_deref(), Some("policy@1"), "{by:?}");
    let status = c.cluster_status().await.unwrap();
    assert_eq!(status.tripped_plugins.len(), 1);
    assert_eq!(status.tripped_plugins[0].plugin, "policy@2");
    assert!(status.tripped_plugins[0].reason.contains("trap"), "{:?}", status.tripped_plugins);
}

#[tokio::test]
async fn sibling_budget_and_write_time_resolution_use_the_resolver() {
    let server = Server::start().await.unwrap();
    let c = server.client().await;
    deploy_with(&c, plugins::CART, "cart", "1", false, &[r#"{"items":{"a":1}}"#]).await.unwrap();
    c.set_bucket(SetBucketRequest {
        name: "tight".into(),
        max_siblings: Some(2),
        resolver: Some("cart@1".into()),
        ..Default::default()
    })
    .await
    .unwrap();
    siblings(&c, "tight", b"k", &[br#"{"items":{"a":1}}"#, br#"{"items":{"b":1}}"#]).await;
    // A third concurrent write would pass the budget: the resolver merges
    // the stored siblings and the new value into one.
    let w = c.put("tight", b"k", br#"{"items":{"c":1}}"#, &Context::none()).await.unwrap();
    assert_eq!(w.sibling_count, 1);
    assert_eq!(w.resolved_by.as_deref(), Some("cart@1"));
    let r = c.get("tight", b"k").await.unwrap();
    assert_eq!(r.values(), vec![&br#"{"items":{"a":1,"b":1,"c":1}}"#[..]]);

    c.set_bucket(SetBucketRequest {
        name: "eager".into(),
        resolver: Some("cart@1".into()),
        resolve_on: Some(pb::ResolveOn::Write as i32),
        ..Default::default()
    })
    .await
    .unwrap();
    c.put("eager", b"k", br#"{"items":{"x":1}}"#, &Context::none()).await.unwrap();
    let w = c.put("eager", b"k", br#"{"items":{"y":2}}"#, &Context::none()).await.unwrap();
    assert_eq!((w.sibling_count, w.resolved_by.as_deref()), (1, Some("cart@1")));
}

#[tokio::test]
async fn the_shadow_resolver_is_compared_but_never_applied() {
    let (server, metrics_port) = metered(&[]).await;
    let c = server.client().await;
    deploy(&c, plugins::LWW, "lww", "1").await.unwrap();
    deploy_with(&c, plugins::CONCAT_RESOLVER, "concat", "1", true, &[]).await.unwrap();
    c.set_bucket(SetBucketRequest {
        name: "s".into(),
        resolver: Some("lww@1".into()),
        shadow_resolver: Some("concat@1".into()),
        ..Default::default()
    })
    .await
    .unwrap();
    siblings(&c, "s", b"k", &[b"aa", b"bb"]).await;
    for _ in 0..5 {
        let r = c.get("s", b"k").await.unwrap();
        assert_eq!(r.resolved_by.as_deref(), Some("lww@1"), "the shadow is never applied");
        assert_eq!(r.values(), vec![&b"bb"[..]]);
    }
    let mut found = false;
    for _ in 0..50 {
        let text = metrics_text(metrics_port).await;
        if text.contains("concord_shadow_resolutions_total{bucket=\"s\",plugin=\"concat@1\",outcome=\"disagree\"} 5") {
            found = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(found, "five disagreements were counted");

    // The report keeps counts and quoted examples per bucket and shadow.
    let report = c.admin().shadow_report(pb::ShadowReportRequest { bucket: "s".into() }).await.unwrap().into_inner();
    assert_eq!(report.shadows.len(), 1, "{report:?}");
    let s = &report.shadows[0];
    assert_eq!((s.plugin.as_str(), s.agree, s.disagree, s.failed), ("concat@1", 0, 5, 0));
    assert!(!s.samples.is_empty() && s.samples.len() <= 5, "{s:?}");
    assert_eq!(s.samples[0].key, "\"k\"");
    assert_eq!(s.samples[0].active, "resolved \"bb\"");
    assert!(s.samples[0].shadow.starts_with("resolved \""), "{s:?}");

    // The CLI sums every node's counts and shows the examples.
    let out = std::process::Command::new(concord_tests::concord_bin())
        .args(["plugin", "shadow-report", "s", "--endpoint", &server.addr.to_string()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("concat@1: 5 resolutions: 0 agree"), "{text}");
    assert!(text.contains("active resolved \"bb\""), "{text}");

    // Promoting makes the shadow the active resolver and clears the shadow.
    let e = c.admin().promote_shadow(pb::PromoteShadowRequest { bucket: "none".into() }).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e}");
    let out = std::process::Command::new(concord_tests::concord_bin())
        .args(["plugin", "promote-shadow", "s", "--endpoint", &server.addr.to_string()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("bucket s now resolves with concat@1"), "{text}");
    let props = c.get_bucket("s").await.unwrap();
    assert_eq!((props.resolver.as_str(), props.shadow_resolver.as_str()), ("concat@1", ""));
    assert_eq!(c.get("s", b"k").await.unwrap().resolved_by.as_deref(), Some("concat@1"));
}

#[tokio::test]
async fn deploy_checks_stay_out_of_live_telemetry_and_identical_bytes_change_nothing() {
    let (server, metrics_port) = metered(&[]).await;
    let c = server.client().await;
    let first = deploy(&c, plugins::WIDE_RESOLVER, "wide", "1").await.unwrap();
    assert!(!first.unchanged);
    // The plugin's two warnings per call come back summarised in the reply,
    // not as a line per call in the node's log.
    assert!(first.check_log.len() <= 21, "{:?}", first.check_log);
    assert!(
        first.check_log.iter().any(|l| l.starts_with("(x") && l.contains("WARN: wide: every answer is 20000 bytes")),
        "{:?}",
        first.check_log
    );
    assert!(!server.log_text().contains("every answer is 20000 bytes"), "check log lines reached the node log");
    let text = metrics_text(metrics_port).await;
    let live = r#"concord_plugin_calls_total{plugin="wide",version="1",kind="resolver"}"#;
    assert_eq!(counter_value(&text, live), 0, "checks counted as live calls");
    assert!(counter_value(&text, r#"concord_plugin_check_calls_total{plugin="wide",version="1"}"#) > 100);

    // The same bytes again: nothing is checked, stored or logged.
    let again = deploy(&c, plugins::WIDE_RESOLVER, "wide", "1").await.unwrap();
    assert!(again.unchanged && again.check_log.is_empty(), "{again:?}");
    let after = metrics_text(metrics_port).await;
    let checks = r#"concord_plugin_check_calls_total{plugin="wide",version="1"}"#;
    assert_eq!(counter_value(&after, checks), counter_value(&text, checks));
    assert_eq!(server.log_text().matches("plugin deployed").count(), 1);
}

#[tokio::test]
async fn resolver_answers_are_checked_against_the_bucket_they_serve() {
    let server = Server::start().await.unwrap();
    let c = server.client().await;
    // Without a bucket, answers are checked against the most any bucket
    // allows, and the error says so.
    let e = deploy_with(&c, plugins::OVERSIZED_RESOLVER, "huge", "1", false, &["one"]).await.unwrap_err();
    assert!(e.to_string().contains("the most any bucket allows"), "{e}");
    // 20,000 bytes fit some bucket, so the deploy passes...
    deploy(&c, plugins::WIDE_RESOLVER, "wide", "1").await.unwrap();
    // ...but binding it to a bucket of the default 10 KiB is refused.
    let e = c.set_bucket(resolver("small", "wide@1")).await.unwrap_err();
    assert!(matches!(e, ClientError::InvalidArgument(_)), "{e}");
    assert!(e.to_string().contains("max_object_bytes of 10240"), "{e}");
    assert!(e.to_string().contains("bucket small"), "{e}");
    assert_eq!(c.get_bucket("small").await.unwrap().resolver, "", "nothing was bound");
    // A bucket that allows it binds it; shrinking that bucket is refused.
    c.set_bucket(SetBucketRequest {
        name: "roomy".into(),
        max_object_bytes: Some(32 << 10),
        resolver: Some("wide@1".into()),
        ..Default::default()
    })
    .await
    .unwrap();
    let e = c
        .set_bucket(SetBucketRequest { name: "roomy".into(), max_object_bytes: Some(10_000), ..Default::default() })
        .await
        .unwrap_err();
    assert!(e.to_string().contains("max_object_bytes of 10000"), "{e}");
    assert_eq!(c.get_bucket("roomy").await.unwrap().max_object_bytes, 32 << 10);
    // Naming a bucket at deploy checks against its limit then.
    let wasm = std::fs::read(plugins::WIDE_RESOLVER).unwrap();
    let req = pb::DeployPluginRequest {
        name: "wide".into(),
        version: "2".into(),
        wasm: wasm.into(),
        bucket: "small".into(),
        ..Default::default()
    };
    let e = c.admin().deploy_plugin(req).await.unwrap_err();
    assert!(e.message().contains("for bucket small") && e.message().contains("oversized"), "{e}");
}

#[tokio::test]
async fn a_read_says_why_its_siblings_were_not_resolved() {
    let server = resolving_every_read().await;
    let c = server.client().await;
    deploy_with(&c, plugins::PANIC_RESOLVER, "panic", "1", true, &[]).await.unwrap();
    bind(&c, resolver("b", "panic@1")).await;
    siblings(&c, "b", b"k", &[b"one", b"two"]).await;
    let r = c.get("b", b"k").await.unwrap();
    let why = r.unresolved.expect("a failed resolver is explained");
    assert_eq!((why.plugin.as_str(), why.reason.as_str(), why.breaker_open), ("panic@1", "trap", false));
    assert!(why.message.contains("unreachable"), "{why:?}");
    // After repeated failures the plugin is switched off, and reads say so.
    let mut last = None;
    for _ in 0..10 {
        last = c.get("b", b"k").await.unwrap().unresolved;
    }
    let last = last.unwrap();
    assert!(last.breaker_open, "{last:?}");
    assert_eq!(last.reason, "switched-off");
    assert!(!c.cluster_status().await.unwrap().tripped_plugins.is_empty());
    // Rebinding resets the breaker, and the cluster status shows it at once.
    bind(&c, resolver("b", "panic@1")).await;
    let status = c.cluster_status().await.unwrap();
    assert!(status.tripped_plugins.is_empty(), "{:?}", status.tripped_plugins);
    // A bucket without a resolver has nothing to explain.
    siblings(&c, "plain", b"k", &[b"one", b"two"]).await;
    assert_eq!(c.get("plain", b"k").await.unwrap().unresolved, None);
}

#[tokio::test]
async fn verify_passes_the_examples_and_catches_an_order_sensitive_resolver() {
    use std::process::Command;
    let run = |args: &[&str]| {
        let out = Command::new(concord_tests::concord_bin()).args(args).output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).to_string())
    };
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    for (plugin, samples) in [
        (plugins::LWW, None),
        (plugins::CART, Some(format!("{root}/plugins/cart/samples.json"))),
        (plugins::COUNTER, Some(format!("{root}/plugins/counter/samples.json"))),
    ] {
        let mut args = vec!["plugin", "verify", plugin, "--cases", "300"];
        if let Some(s) = &samples {
            args.extend(["--samples", s]);
        }
        let (ok, out) = run(&args);
        assert!(ok && out.starts_with("ok: 300 sibling sets"), "{plugin}: {out}");
    }
    let (ok, out) = run(&["plugin", "verify", plugins::CONCAT_RESOLVER]);
    assert!(!ok && out.contains("order-insensitive"), "{out}");

    // `plugin test` runs a fixture locally.
    let dir = tempfile::tempdir().unwrap();
    let fixture = dir.path().join("fixture.json");
    std::fs::write(&fixture, r#"{"siblings":[{"value":"{\"items\":{\"a\":1}}"},{"value":"{\"items\":{\"b\":2}}"}]}"#)
        .unwrap();
    let (ok, out) = run(&["plugin", "test", plugins::CART, "--siblings", fixture.to_str().unwrap()]);
    assert!(ok, "{out}");
    assert_eq!(out.trim(), r#"resolved: {"items":{"a":1,"b":2}}"#);
    let (ok, out) = run(&["plugin", "test", plugins::JSON_SCHEMA, "--value", r#"{"name":"x"}"#]);
    assert!(ok && out.contains("reject: missing required field \"email\""), "{out}");
    // The same value as base64 and from a file.
    let (ok, out) = run(&["plugin", "test", plugins::JSON_SCHEMA, "--value-base64", "eyJuYW1lIjoieCJ9"]);
    assert!(ok && out.contains("reject: missing required field \"email\""), "{out}");
    let value = dir.path().join("value.json");
    std::fs::write(&value, r#"{"name":"x"}"#).unwrap();
    let (ok, out) = run(&["plugin", "test", plugins::JSON_SCHEMA, "--value-file", value.to_str().unwrap()]);
    assert!(ok && out.contains("reject: missing required field \"email\""), "{out}");
    let (ok, _) = run(&["plugin", "test", plugins::JSON_SCHEMA, "--value-base64", "not base64!"]);
    assert!(!ok);
    // bench times a resolver on sibling sets of a given shape.
    let (ok, out) = run(&["plugin", "bench", plugins::LWW, "--siblings", "3", "--value-bytes", "100", "--calls", "5"]);
    assert!(ok && out.contains("3 x 100 B siblings, 5 calls") && out.contains("MiB per instance"), "{out}");
    let (ok, _) = run(&["plugin", "bench", plugins::JSON_SCHEMA]);
    assert!(!ok, "bench times resolvers only");
    // A plugin's log lines show, and a trap comes with its message.
    let out = Command::new(concord_tests::concord_bin())
        .args(["plugin", "test", plugins::PANIC_RESOLVER, "--siblings", fixture.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("log: ERROR: plugin panicked") && stderr.contains("deliberate panic"), "{stderr}");
    assert!(stderr.contains("failed (trap)") && stderr.contains("unreachable"), "{stderr}");
    let out = Command::new(concord_tests::concord_bin())
        .args(["plugin", "test", plugins::WIDE_RESOLVER, "--siblings", fixture.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.contains("log: WARN: wide: merging 2 siblings"), "{stderr}");

    // A seed replays the same sibling sets, and the report names it.
    let first = run(&["plugin", "verify", plugins::CONCAT_RESOLVER, "--seed", "7", "--cases", "50"]);
    let again = run(&["plugin", "verify", plugins::CONCAT_RESOLVER, "--seed", "7", "--cases", "50"]);
    assert_eq!(first, again);
    assert!(first.1.contains("--seed 7 replays"), "{}", first.1);
    // Without samples, verify says how little generated bytes prove.
    let out = Command::new(concord_tests::concord_bin())
        .args(["plugin", "verify", plugins::LWW, "--cases", "20", "--seed", "1"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.contains("warning: no --samples"), "{stderr}");
}

/// Deploys `lww@1`, binds it to `bucket`, and writes `first` and then
/// `second` to key `k` without a context: two siblings, `second` the later.
async fn lww_conflict(c: &Client, bucket: &str, first: &[u8], second: &[u8]) {
    deploy(c, plugins::LWW, "lww", "1").await.unwrap();
    bind(c, resolver(bucket, "lww@1")).await;
    c.put(bucket, b"k", first, &Context::none()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    c.put(bucket, b"k", second, &Context::none()).await.unwrap();
}

#[tokio::test]
async fn idle_plugins_leave_memory_and_come_back_on_the_next_call() {
    let server = Server::start_with(ServerOptions {
        env: vec![
            ("CONCORD_PLUGINS__UNLOAD_IDLE_SECS".into(), "1".into()),
            ("CONCORD_PLUGINS__WRITE_BACK_RESOLVED".into(), "false".into()),
            ("CONCORD_PLUGINS__MEMO_MB".into(), "0".into()),
        ],
        ..Default::default()
    })
    .await
    .unwrap();
    let c = server.client().await;
    lww_conflict(&c, "idle", b"old", b"new").await;
    assert_eq!(c.get("idle", b"k").await.unwrap().resolved_by.as_deref(), Some("lww@1"));

    // Unused for two sweeps, the compiled plugin is dropped...
    let unload_line = || server.log_text().lines().find(|l| l.contains("unloaded a plugin")).map(str::to_owned);
    let mut unloaded = None;
    for _ in 0..100 {
        unloaded = unload_line();
        if unloaded.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let line = unloaded.unwrap_or_else(|| panic!("no unload in the log:\n{}", server.log_text()));
    assert!(line.contains("lww@1"), "{line}");
    // ...and the next read loads it again and resolves as before.
    let r = c.get("idle", b"k").await.unwrap();
    assert_eq!(r.resolved_by.as_deref(), Some("lww@1"));
    assert_eq!(r.values(), vec![&b"new"[..]]);
}

/// The value of a counter in Prometheus text, 0 when absent.
fn counter_value(text: &str, series: &str) -> u64 {
    text.lines().find_map(|l| l.strip_prefix(series)?.trim().parse::<f64>().ok()).map_or(0, |v| v as u64)
}

#[tokio::test]
async fn a_resolution_is_computed_once_per_set_of_siblings() {
    let (server, metrics_port) = metered(&[]).await;
    let c = server.client().await;
    lww_conflict(&c, "memo", b"one", b"two").await;
    let calls = r#"concord_plugin_calls_total{plugin="lww",version="1",kind="resolver"}"#;
    let hits = r#"concord_plugin_memo_total{outcome="hit"}"#;
    let before = metrics_text(metrics_port).await;
    for _ in 0..5 {
        let r = c.get("memo", b"k").await.unwrap();
        assert_eq!(r.values(), vec![&b"two"[..]]);
        assert_eq!(r.resolved_by.as_deref(), Some("lww@1"));
    }
    let after = metrics_text(metrics_port).await;
    assert_eq!(counter_value(&after, calls) - counter_value(&before, calls), 1, "one plugin call for five reads");
    assert_eq!(counter_value(&after, hits) - counter_value(&before, hits), 4);

    // A new sibling is a new input: the plugin runs again.
    tokio::time::sleep(Duration::from_millis(5)).await;
    c.put("memo", b"k", b"three", &Context::none()).await.unwrap();
    let r = c.get("memo", b"k").await.unwrap();
    assert_eq!(r.values(), vec![&b"three"[..]]);
    let last = metrics_text(metrics_port).await;
    assert_eq!(counter_value(&last, calls) - counter_value(&before, calls), 2);
}

/// A node's plugin system alone, in memory, with `path` deployed as
/// `name@1`.
async fn plugin_system(config: PluginConfig, path: &str, name: &str) -> Arc<Plugins> {
    let node = Plugins::open(Arc::new(MemStore::new()), None, config).unwrap();
    let wasm = std::fs::read(path).unwrap();
    let request = DeployRequest { name: name.into(), version: Some("1".into()), bytes: wasm, ..Default::default() };
    node.deploy(request).await.unwrap();
    node
}

#[tokio::test]
async fn unloading_a_validator_gives_back_its_idle_instances() {
    let config = PluginConfig { max_instances: 8, deadline_ms: 10_000, ..Default::default() };
    let node = plugin_system(config, plugins::MAX_SIZE, "max-size").await;
    let props = BucketProps { validators: vec!["max-size@1".parse().unwrap()], ..Default::default() };
    node.validate("b", &props, b"k", b"v".to_vec()).await.unwrap();
    assert_eq!(node.runtime().idle_instances(), 1, "the validator keeps its instance for the next write");

    // The first sweep finds it used, the second unloads it.
    assert!(node.registry().unload_idle().is_empty());
    assert_eq!(node.registry().unload_idle().len(), 1);
    assert_eq!(node.runtime().idle_instances(), 0, "the unloaded plugin's idle instance is given back");
    // Loaded again on the next write, it idles again.
    node.validate("b", &props, b"k", b"v".to_vec()).await.unwrap();
    assert_eq!(node.runtime().idle_instances(), 1);
}

#[tokio::test]
async fn a_plugin_moved_off_request_threads_stays_off_when_loaded_again() {
    let config = PluginConfig { deadline_ms: 20, ..Default::default() };
    let node = plugin_system(config, plugins::LOOP_VALIDATOR, "spin").await;
    let spin: PluginRef = "spin@1".parse().unwrap();
    assert!(!node.registry().loaded_now(&spin).unwrap().offloaded());
    let props = BucketProps { validators: vec![spin.clone()], ..Default::default() };
    node.validate("b", &props, b"k", b"v".to_vec()).await.unwrap_err();
    assert!(node.registry().loaded_now(&spin).unwrap().offloaded(), "a timed-out plugin leaves request threads");

    node.registry().unload_idle();
    assert_eq!(node.registry().unload_idle(), vec![spin.clone()]);
    assert!(node.registry().loaded_now(&spin).is_none());
    let registry_get = {
        let node = Arc::clone(&node);
        let spin = spin.clone();
        tokio::task::spawn_blocking(move || node.registry().get(&spin).map(|l| l.offloaded()))
    };
    assert!(registry_get.await.unwrap().unwrap(), "loaded again, it starts off request threads");
}

#[tokio::test]
async fn a_plugin_version_with_other_bytes_on_a_peer_is_reported_not_fetched() {
    let node = plugin_system(PluginConfig { deadline_ms: 10_000, ..Default::default() }, plugins::LWW, "lww").await;
    // The peer's manifest: the same name@version, other bytes, plus a
    // plugin this node lacks.
    let mut manifest: Value = serde_json::from_slice(&node.registry().export()).unwrap();
    let mut theirs = manifest["plugins"][0].clone();
    theirs["sha256"] = json!("0".repeat(64));
    let mut extra = theirs.clone();
    extra["name"] = json!("other");
    manifest["plugins"] = json!([theirs, extra]);
    let missing = node.registry().missing(&serde_json::to_vec(&manifest).unwrap()).unwrap();
    let names: Vec<&str> = missing.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["other"], "only the plugin this node lacks is fetched");
    let conflicts: Vec<String> = node.registry().conflicts().iter().map(|r| r.to_string()).collect();
    assert_eq!(conflicts, ["lww@1"]);
}

/// `concord plugin new` writes crates that build offline, outside the
/// repository, pass their own unit tests, and give a deployable plugin.
#[test]
fn new_plugin_crates_build_offline_test_natively_and_run() {
    use std::process::Command;
    let dir = tempfile::tempdir().unwrap();
    let concord = concord_tests::concord_bin();
    // One target folder for both crates (and reruns): the SDK's
    // dependencies compile once.
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/scaffold-test");
    let cargo = |crate_dir: &Path, args: &[&str]| {
        let out = Command::new(env!("CARGO"))
            .args(args)
            .current_dir(crate_dir)
            .env("CARGO_NET_OFFLINE", "true")
            .env("CARGO_TARGET_DIR", &target)
            .output()
            .unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "cargo {args:?} in {}:\n{text}", crate_dir.display());
        text
    };
    let run = |args: &[&str]| {
        let out = Command::new(&concord).args(args).current_dir(dir.path()).output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    };
    for (name, kind, lib) in [("my-merge", "resolver", "my_merge"), ("tidy", "validator", "tidy")] {
        let (ok, out) = run(&["plugin", "new", name, "--kind", kind]);
        assert!(ok, "{out}");
        let root = dir.path().join(name);
        let tests = cargo(&root, &["test", "--lib"]);
        assert!(tests.contains("test result: ok. 2 passed"), "{tests}");
        cargo(&root, &["build", "--release", "--target", "wasm32-unknown-unknown"]);
        let wasm = target.join(format!("wasm32-unknown-unknown/release/{lib}.wasm"));
        let wasm = wasm.to_str().unwrap();
        let fixture = root.join("fixture.json");
        let samples = root.join("samples.json");
        if kind == "resolver" {
            let (ok, out) = run(&["plugin", "test", wasm, "--siblings", fixture.to_str().unwrap()]);
            assert!(ok && out.contains("resolved: pear"), "{out}");
            let (ok, out) = run(&["plugin", "verify", wasm, "--samples", samples.to_str().unwrap(), "--cases", "100"]);
            assert!(ok && out.starts_with("ok: 100 sibling sets"), "{out}");
        } else {
            let (ok, out) = run(&["plugin", "test", wasm, "--value", " hello "]);
            assert!(ok && out.contains("replace: hello"), "{out}");
        }
    }
    // The same name twice, or a name that is not one, is refused.
    let (ok, out) = run(&["plugin", "new", "tidy", "--kind", "validator"]);
    assert!(!ok && out.contains("already exists"), "{out}");
    let (ok, out) = run(&["plugin", "new", "Bad Name", "--kind", "resolver"]);
    assert!(!ok && out.contains("not a usable plugin name"), "{out}");
}

#[tokio::test]
async fn a_plugin_can_be_deployed_with_a_memory_cap_of_its_own() {
    let server = resolving_every_read().await;
    let c = server.client().await;
    let deploy_capped = |version: &str, memory_mb: u32| {
        let req = pb::DeployPluginRequest {
            name: "bomb".into(),
            version: version.into(),
            wasm: std::fs::read(plugins::BOMB_RESOLVER).unwrap().into(),
            force: true,
            memory_mb,
            ..Default::default()
        };
        let c = c.clone();
        async move { c.admin().deploy_plugin(req).await }
    };
    let e = deploy_capped("0", 100_000).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("plugins.max_memory_mb"), "{e}");
    let deployed = deploy_capped("1", 8).await.unwrap().into_inner();
    assert_eq!(deployed.plugin.unwrap().memory_mb, 8);
    bind(&c, resolver("b", "bomb@1")).await;
    siblings(&c, "b", b"k", &[b"one", b"two"]).await;
    let why = c.get("b", b"k").await.unwrap().unresolved.expect("the bomb fails");
    assert_eq!(why.reason, "memory", "{why:?}");
    assert!(why.message.contains("memory cap of 8 MiB"), "{why:?}");
}
