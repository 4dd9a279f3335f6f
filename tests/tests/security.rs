//! TLS between clients and nodes and between nodes, and client tokens
//! with roles, on real nodes.

use std::net::SocketAddr;
use std::time::Duration;

use concord_client::{Client, ClientError, ConnectOptions, Context};
use concord_proto::v1 as pb;
use concord_tests::{LocalCluster, Server, ServerOptions, free_port};
use tonic::Code;

/// Writes a throwaway CA and node certificate into `dir`.
fn certificates(dir: &std::path::Path) -> concord::security::tls::DevCertificates {
    concord::security::tls::write_dev_certificates(dir).unwrap()
}

fn use_tls(c: &mut concord::Config, certs: &concord::security::tls::DevCertificates) {
    c.security.tls_cert = Some(certs.cert.clone());
    c.security.tls_key = Some(certs.key.clone());
    c.security.tls_ca = Some(certs.ca.clone());
}

async fn tls_client(addr: SocketAddr, ca: &std::path::Path) -> Result<Client, ClientError> {
    let options = ConnectOptions { tls_ca_pem: Some(std::fs::read(ca).unwrap()), ..Default::default() };
    Client::connect_with(&addr.to_string(), &options).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_serves_clients_with_the_ca_and_keeps_strangers_out() {
    let tmp = tempfile::tempdir().unwrap();
    let certs = certificates(&tmp.path().join("tls"));
    let cluster = LocalCluster::start_with(3, |_, c| use_tls(c, &certs)).await.unwrap();

    // With the CA: reads and writes work through any node, replicated
    // between nodes over mutually authenticated TLS.
    let c = tls_client(cluster.addrs[0], &certs.ca).await.unwrap();
    let put = c.put("b", b"k", b"v", &Context::none()).await.unwrap();
    assert!(put.acked_by.len() >= 2, "replicas acknowledged over TLS: {:?}", put.acked_by);
    let c2 = tls_client(cluster.addrs[2], &certs.ca).await.unwrap();
    assert_eq!(c2.get("b", b"k").await.unwrap().values(), vec![&b"v"[..]]);

    // In plain text, nothing gets through.
    let plain = match Client::connect(&cluster.addrs[0].to_string()).await {
        Err(e) => e.to_string(),
        Ok(c) => c.get("b", b"k").await.unwrap_err().to_string(),
    };
    assert!(!plain.is_empty());
    // With another CA, the node's certificate is not trusted.
    let other = certificates(&tmp.path().join("other"));
    let refused = match tls_client(cluster.addrs[0], &other.ca).await {
        Err(e) => e.to_string(),
        Ok(c) => c.get("b", b"k").await.unwrap_err().to_string(),
    };
    assert!(refused.to_lowercase().contains("certificate") || refused.contains("connect"), "{refused}");

    // A TLS client without a node certificate or the cluster's credential
    // cannot make replica calls.
    let channel = tonic::transport::Endpoint::from_shared(format!("https://{}", cluster.addrs[0]))
        .unwrap()
        .tls_config(
            tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(std::fs::read(&certs.ca).unwrap())),
        )
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut internal = pb::internal_client::InternalClient::new(channel);
    let e = internal.fetch_metadata(pb::FetchMetadataRequest {}).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");

    // A node whose certificate another CA signed cannot join: it gets no
    // secret and no ring, and the cluster stays at three.
    let stranger_dir = tmp.path().join("stranger");
    let mut config = concord::Config {
        listen: SocketAddr::from(([127, 0, 0, 1], free_port())),
        data_dir: stranger_dir,
        node_id: Some("stranger".into()),
        seeds: cluster.addrs.iter().map(ToString::to_string).collect(),
        gossip_interval_ms: 100,
        ..Default::default()
    };
    use_tls(&mut config, &other);
    let stranger = concord::Node::start(config).await.unwrap();
    // Several gossip rounds and key fetches later, nothing has changed.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < deadline {
        assert!(stranger.cluster().keys().is_empty(), "the stranger got the cluster secret");
        assert!(!stranger.cluster().ring().is_member("n0"), "the stranger got the ring");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for i in 0..3 {
        assert!(!cluster.node(i).cluster().ring().is_member("stranger"), "node {i} took the stranger in");
    }
    stranger.shutdown().await.unwrap();
    cluster.shutdown().await;
}

/// Starts a node whose configuration has one token per role set, and
/// returns it with the tokens: (reader, writer, admin).
async fn node_with_tokens() -> (Server, String, String, String) {
    use concord::security::{Role, new_token};
    let (reader, r) = new_token("reader", vec![Role::Read]);
    let (writer, w) = new_token("app", vec![Role::Read, Role::Write]);
    let (admin, a) = new_token("ops", vec![Role::Admin]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("concord.toml");
    let mut text = String::new();
    for t in [r, w, a] {
        let roles: Vec<String> = t.roles.iter().map(|r| format!("\"{}\"", format!("{r:?}").to_lowercase())).collect();
        text.push_str(&format!(
            "[[security.tokens]]\nname = \"{}\"\nroles = [{}]\nsha256 = \"{}\"\n",
            t.name,
            roles.join(", "),
            t.sha256
        ));
    }
    std::fs::write(&file, text).unwrap();
    let server = Server::start_with(ServerOptions {
        args: vec!["--config".into(), file.display().to_string()],
        ..Default::default()
    })
    .await
    .unwrap();
    // The config file must outlive the start only.
    drop(dir);
    (server, reader, writer, admin)
}

async fn client_with(server: &Server, token: Option<&str>) -> Client {
    let options = ConnectOptions { token: token.map(str::to_owned), ..Default::default() };
    Client::connect_with(&server.addr.to_string(), &options).await.unwrap()
}

fn code_of(r: Result<impl Sized, ClientError>) -> Option<Code> {
    r.err().map(|e| match e {
        ClientError::Other { code, .. } => code,
        ClientError::InvalidArgument(_) => Code::InvalidArgument,
        ClientError::Unavailable(_) => Code::Unavailable,
        e => panic!("unexpected error {e}"),
    })
}

#[tokio::test]
async fn tokens_and_roles_decide_every_call() {
    let (server, reader, writer, admin) = node_with_tokens().await;
    let anonymous = client_with(&server, None).await;
    let wrong = client_with(&server, Some("cct_0000")).await;
    let r = client_with(&server, Some(&reader)).await;
    let w = client_with(&server, Some(&writer)).await;
    let a = client_with(&server, Some(&admin)).await;
    use Code::{PermissionDenied as Denied, Unauthenticated as Unauth};

    // Kv.
    for c in [&anonymous, &wrong] {
        assert_eq!(code_of(c.get("b", b"k").await), Some(Unauth));
        assert_eq!(code_of(c.put("b", b"k", b"v", &Context::none()).await), Some(Unauth));
        assert_eq!(code_of(c.delete("b", b"k", &Context::none()).await), Some(Unauth));
        assert_eq!(code_of(c.cluster_status().await), Some(Unauth));
    }
    assert_eq!(code_of(w.put("b", b"k", b"v", &Context::none()).await), None);
    assert_eq!(code_of(r.get("b", b"k").await), None);
    assert_eq!(code_of(r.put("b", b"k", b"v", &Context::none()).await), Some(Denied));
    assert_eq!(code_of(r.delete("b", b"k", &Context::none()).await), Some(Denied));
    assert_eq!(code_of(a.get("b", b"k").await), Some(Denied));
    assert_eq!(code_of(a.put("b", b"k", b"v", &Context::none()).await), Some(Denied));
    // Route: any token, none refused.
    let route = |token: Option<&str>| {
        let addr = server.addr;
        let bearer = token.map(|t| format!("Bearer {t}"));
        async move {
            let channel =
                tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
            let mut kv = pb::kv_client::KvClient::new(channel);
            let mut req = tonic::Request::new(pb::RouteRequest {});
            if let Some(b) = bearer {
                req.metadata_mut().insert("authorization", b.parse().unwrap());
            }
            kv.route(req).await.err().map(|s| s.code())
        }
    };
    assert_eq!(route(None).await, Some(Unauth));
    assert_eq!(route(Some("cct_0000")).await, Some(Unauth));
    for token in [&reader, &writer, &admin] {
        assert_eq!(route(Some(token)).await, None);
    }

    // Every Admin call: only the admin token.
    let set = pb::SetBucketRequest { name: "b".into(), ..Default::default() };
    for (who, c, expect) in [("reader", &r, Some(Denied)), ("writer", &w, Some(Denied)), ("admin", &a, None)] {
        let mut adm = c.admin();
        let codes = [
            ("ClusterStatus", adm.cluster_status(pb::ClusterStatusRequest {}).await.err().map(|s| s.code())),
            ("SetBucket", adm.set_bucket(set.clone()).await.err().map(|s| s.code())),
            ("GetBucket", adm.get_bucket(pb::GetBucketRequest { name: "b".into() }).await.err().map(|s| s.code())),
            ("ListBuckets", adm.list_buckets(pb::ListBucketsRequest {}).await.err().map(|s| s.code())),
            ("ListPlugins", adm.list_plugins(pb::ListPluginsRequest {}).await.err().map(|s| s.code())),
            ("ClusterSecret", adm.cluster_secret(pb::ClusterSecretRequest {}).await.err().map(|s| s.code())),
        ];
        for (rpc, got) in codes {
            assert_eq!(got, expect, "{who} calling {rpc}");
        }
        // Calls that change the cluster: refused before they run for the
        // others; for the admin they reach the handler (which refuses the
        // bad arguments), proving the guard let them through.
        let join = adm.join(pb::JoinRequest { seed: String::new(), discard_data: false }).await.unwrap_err();
        let deploy = adm.deploy_plugin(pb::DeployPluginRequest::default()).await.unwrap_err();
        let leave = adm.leave(pb::LeaveRequest { node_id: "nobody".into() }).await;
        let shadow = adm.shadow_report(pb::ShadowReportRequest::default()).await;
        let promote = adm.promote_shadow(pb::PromoteShadowRequest::default()).await.unwrap_err();
        let rotate = adm.rotate_secret(pb::RotateSecretRequest { grace_secs: 10 * 365 * 86_400 }).await.unwrap_err();
        for (rpc, status) in
            [("Join", join), ("DeployPlugin", deploy), ("PromoteShadow", promote), ("RotateSecret", rotate)]
        {
            match expect {
                Some(code) => assert_eq!(status.code(), code, "{who} calling {rpc}"),
                None => assert_eq!(status.code(), Code::InvalidArgument, "{who} calling {rpc}: {status:?}"),
            }
        }
        for (rpc, status) in [("Leave", leave.err()), ("ShadowReport", shadow.err())] {
            match expect {
                Some(code) => assert_eq!(status.map(|s| s.code()), Some(code), "{who} calling {rpc}"),
                None => assert!(status.is_none_or(|s| !matches!(s.code(), Denied | Unauth)), "{who} calling {rpc}"),
            }
        }
    }

    // Health and reflection stay open.
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr)).unwrap().connect().await.unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.unwrap();

    // The CLI passes --token (and CONCORD_TOKEN).
    let cli = |args: &[&str], token: Option<&str>| {
        let mut cmd = std::process::Command::new(concord_tests::concord_bin());
        cmd.args(args).arg("--endpoint").arg(server.addr.to_string()).env_remove("CONCORD_TOKEN");
        if let Some(t) = token {
            cmd.env("CONCORD_TOKEN", t);
        }
        cmd.output().unwrap()
    };
    let out = cli(&["get", "b", "k"], None);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bearer token"), "{}", String::from_utf8_lossy(&out.stderr));
    let out = cli(&["get", "b", "k"], Some(&reader));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = cli(&["put", "b", "k", "v"], Some(&reader));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("needs the write role"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
