//! Micro-benchmarks of the plugin runtime: compiling, loading from the
//! artifact cache, resolver calls (fresh instance each, as in production)
//! and validator calls (reused instance). Results are in docs/BENCHMARKS.md.
//!
//!     cargo bench -p concord-tests --bench plugins

use std::sync::Arc;
use std::time::Duration;

use concord::causal::{Content, Dot, Sibling};
use concord::plugins::{Loaded, PluginConfig, Runtime, package, registry};
use concord_tests::plugins;
use criterion::{Criterion, criterion_group, criterion_main};

fn load(runtime: &Arc<Runtime>, path: &str) -> Loaded {
    let prepared = package::prepare(&std::fs::read(path).unwrap()).unwrap();
    let (component, _) = runtime.compile(&prepared.component, None).unwrap();
    let info = concord::plugins::PluginInfo {
        name: "bench".into(),
        version: "1".into(),
        sha256: registry::sha256_hex(&prepared.component),
        kind: prepared.kind,
        size_bytes: prepared.component.len() as u64,
        interface_version: prepared.interface_version,
        deployed_at_ms: 0,
        seq: 0,
        memory_mb: 0,
    };
    Loaded::new(Arc::clone(runtime), info, &component).unwrap()
}

fn sibling(i: usize, value: Vec<u8>) -> Sibling {
    Sibling {
        dot: Dot { actor: i as u64 + 1, counter: 1 },
        content: Content::Value(value),
        written_at_ms: 1_000 + i as u64,
        writer: String::new(),
    }
}

/// `count` siblings of about `bytes` bytes each: opaque bytes for lww.
fn opaque(count: usize, bytes: usize) -> Vec<Sibling> {
    (0..count).map(|i| sibling(i, vec![b'a' + i as u8; bytes])).collect()
}

/// `count` JSON carts of about `bytes` bytes each, overlapping in part.
fn carts(count: usize, bytes: usize) -> Vec<Sibling> {
    (0..count)
        .map(|i| {
            let mut items = Vec::new();
            let mut len = 12;
            let mut n = i * 7;
            while len < bytes {
                let item = format!("\"item-{n:06}\":{}", n % 5 + 1);
                len += item.len() + 1;
                items.push(item);
                n += 1;
            }
            sibling(i, format!("{{\"items\":{{{}}}}}", items.join(",")).into_bytes())
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let runtime = Runtime::new(PluginConfig::default()).unwrap();

    let mut g = c.benchmark_group("compile");
    g.sample_size(10).measurement_time(Duration::from_secs(5));
    for (name, path) in [("lww", plugins::LWW), ("cart", plugins::CART)] {
        let component = package::prepare(&std::fs::read(path).unwrap()).unwrap().component;
        g.bench_function(name, |b| b.iter(|| runtime.compile(&component, None).unwrap()));
    }
    g.finish();

    let cache = tempfile::tempdir().unwrap();
    let mut g = c.benchmark_group("load_cached");
    for (name, path) in [("lww", plugins::LWW), ("cart", plugins::CART)] {
        let component = package::prepare(&std::fs::read(path).unwrap()).unwrap().component;
        runtime.compile(&component, Some(cache.path())).unwrap();
        g.bench_function(name, |b| {
            b.iter(|| {
                let (_, cached) = runtime.compile(&component, Some(cache.path())).unwrap();
                assert!(cached);
            })
        });
    }
    g.finish();

    let lww = load(&runtime, plugins::LWW);
    let cart = load(&runtime, plugins::CART);
    let mut g = c.benchmark_group("resolve");
    for (label, loaded, siblings) in [
        ("lww/2x1KiB", &lww, opaque(2, 1024)),
        ("lww/10x10KiB", &lww, opaque(10, 10 * 1024)),
        ("cart/2x1KiB", &cart, carts(2, 1024)),
        ("cart/10x10KiB", &cart, carts(10, 10 * 1024)),
    ] {
        g.bench_function(label, |b| {
            b.iter(|| {
                let slot = Arc::clone(runtime.slots()).try_acquire_owned().unwrap();
                loaded.resolve(slot, "bench", b"key", &siblings, 1 << 20, concord::plugins::Mode::Request).unwrap()
            })
        });
    }
    g.finish();

    let max_size = load(&runtime, plugins::MAX_SIZE);
    let schema = load(&runtime, plugins::JSON_SCHEMA);
    let value_1k = vec![b'v'; 1000];
    let user = br#"{"name":"Ada Lovelace","email":"ada@example.com","age":36,"tags":["math","engines"]}"#.to_vec();
    let mut g = c.benchmark_group("validate");
    for (label, loaded, value) in [("max-size/1KiB", &max_size, &value_1k), ("json-schema/user", &schema, &user)] {
        g.bench_function(label, |b| {
            b.iter(|| {
                let slots = runtime.slots();
                loaded
                    .validate(
                        || Arc::clone(slots).try_acquire_owned().ok(),
                        "bench",
                        b"key",
                        value,
                        1 << 20,
                        concord::plugins::Mode::Request,
                    )
                    .unwrap()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
