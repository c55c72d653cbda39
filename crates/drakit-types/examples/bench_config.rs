//! Measures claim-config work on the prepare path: decoding one config of each kind, merging a
//! class and a claim config for one request, canonical re-encoding, and the runtime-spec policy
//! check (default policy).
//!
//! ```text
//! cargo run --release -p drakit-types --example bench_config -- [N]
//! ```
//! Default N = 20000 iterations per case. Prints p50/p99 per operation in microseconds.

use std::time::{Duration, Instant};

use drakit_types::config::{
    ClaimConfig, ClaimRef, ConfigEntry, ConfigSource, RuntimeSpecFragment, decode_parameters,
    merge_for_request,
};
use drakit_types::policy::{Policy, check};

fn stats(name: &str, mut d: Vec<Duration>) {
    d.sort();
    let p = |q: f64| {
        let i = ((d.len() as f64 - 1.0) * q).round() as usize;
        d.get(i).map_or(0.0, |x| x.as_secs_f64() * 1e6)
    };
    println!(
        "{name:<40} p50 {:>8.2} us   p99 {:>8.2} us",
        p(0.5),
        p(0.99)
    );
}

fn time<F: FnMut()>(n: usize, mut f: F) -> Vec<Duration> {
    (0..n)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect()
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20_000);
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/configs");
    let claim = ClaimRef::new("ns", "claim", "uid");
    for f in [
        "netdev-macvlan-full.json",
        "cni-bridge.json",
        "cpu.json",
        "runtime-full.json",
    ] {
        let raw = match std::fs::read(dir.join(f)) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("skipped {f}: {e}");
                continue;
            }
        };
        if let Err(e) = decode_parameters(&claim, 0, ConfigSource::FromClaim, &raw) {
            eprintln!("{f} does not decode: {e}");
            return;
        }
        stats(
            &format!("decode {f} ({} B)", raw.len()),
            time(n, || {
                let _ = std::hint::black_box(decode_parameters(
                    &claim,
                    0,
                    ConfigSource::FromClaim,
                    std::hint::black_box(&raw),
                ));
            }),
        );
        if let Ok(c) = ClaimConfig::from_json(&raw) {
            stats(
                &format!("encode {f}"),
                time(n, || {
                    let _ = std::hint::black_box(c.to_json());
                }),
            );
        }
    }

    let class = br#"{"apiVersion":"drakit.dev/v1alpha1","kind":"NetdevConfig","netdev":{"kind":"macvlan","parent":"eth0","mode":"bridge","mtu":9000}}"#;
    let own = br#"{"apiVersion":"drakit.dev/v1alpha1","kind":"NetdevConfig","netdev":{"kind":"macvlan","interfaceName":"data0","addresses":["10.0.0.2/24"]}}"#;
    let none: Vec<String> = vec![];
    let reqs = vec!["nic".to_string()];
    let entries = [
        ConfigEntry {
            source: ConfigSource::FromClass,
            driver: "net.drakit.dev",
            requests: &none,
            parameters: class,
        },
        ConfigEntry {
            source: ConfigSource::FromClaim,
            driver: "net.drakit.dev",
            requests: &reqs,
            parameters: own,
        },
    ];
    match merge_for_request(&claim, "net.drakit.dev", "nic", &entries) {
        Ok(Some(_)) => {}
        other => {
            eprintln!("merge did not produce a config: {other:?}");
            return;
        }
    }
    stats(
        "merge class+claim netdev for a request",
        time(n, || {
            let _ =
                std::hint::black_box(merge_for_request(&claim, "net.drakit.dev", "nic", &entries));
        }),
    );

    let frag = br#"{"linux":{"resources":{"unified":{"io.max":"259:0 rbps=2097152","memory.high":"268435456","pids.max":"100"}}}}"#;
    let policy = Policy::default();
    match RuntimeSpecFragment::from_json(frag) {
        Ok(f) => {
            stats(
                "policy check (default, 3 unified keys)",
                time(n, || {
                    let _ = std::hint::black_box(check(&policy, "ns", &f));
                }),
            );
        }
        Err(e) => eprintln!("fragment does not decode: {e}"),
    }
}
