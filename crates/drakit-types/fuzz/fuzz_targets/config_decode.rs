//! Arbitrary bytes into the claim-config decoder and the multi-config merge.
//!
//! Input: one or more config entries separated by NUL bytes (a JSON text never contains a raw
//! NUL). The first byte of each entry after the first says where it came from and which
//! requests it names; the rest is the raw `opaque.parameters`.
//!
//! Checked, besides "no panic":
//! - every error names the claim and the config entry (or the merged request);
//! - an accepted config re-encodes to canonical JSON that decodes to the same config, and
//!   re-encoding that gives the same bytes;
//! - one applicable entry gives the same answer from `merge_for_request` as from
//!   `decode_parameters` (a lone entry is decoded as is);
//! - a bare runtime-spec fragment that decodes round-trips the same way.

#![no_main]

use drakit_types::config::{
    ClaimConfig, ClaimRef, ConfigEntry, ConfigSource, RuntimeSpecFragment, decode_parameters,
    merge_for_request,
};
use libfuzzer_sys::fuzz_target;

const DRIVER: &str = "net.drakit.dev";
const REQUEST: &str = "nic/sub";

fn claim() -> ClaimRef {
    ClaimRef::new("fuzz-ns", "fuzz-claim", "0b1c4d2e-uid")
}

/// Canonical JSON must decode back to the same config and re-encode to the same bytes.
fn round_trip(cfg: &ClaimConfig) {
    cfg.validate()
        .unwrap_or_else(|e| panic!("a decoded config fails its own validation: {e}"));
    let json = cfg.to_json().expect("a decoded config must encode");
    let again = ClaimConfig::from_json(&json).unwrap_or_else(|e| {
        panic!(
            "canonical JSON of a decoded config is refused: {e}\njson: {}",
            String::from_utf8_lossy(&json)
        )
    });
    assert_eq!(&again, cfg, "decode(encode(config)) differs");
    assert_eq!(
        again.to_json().expect("encode"),
        json,
        "canonical JSON is not stable"
    );
}

fn requests_for(selector: u8) -> Vec<String> {
    match selector % 5 {
        0 => Vec::new(),
        1 => vec!["nic".into()],
        2 => vec!["nic/sub".into()],
        3 => vec!["other".into()],
        _ => vec!["other".into(), "nic".into()],
    }
}

fuzz_target!(|data: &[u8]| {
    let claim = claim();
    let mut parts = data.split(|b| *b == 0);
    let first = parts.next().unwrap_or_default();

    // 1. One entry, straight through the decoder.
    let single = decode_parameters(&claim, 3, ConfigSource::FromClaim, first);
    match &single {
        Ok(cfg) => round_trip(cfg),
        Err(e) => {
            let msg = e.to_string();
            assert!(
                msg.contains("claim fuzz-ns/fuzz-claim") && msg.contains("config[3] (FromClaim)"),
                "error does not name the claim and the entry: {msg}"
            );
        }
    }

    // 2. The same entry alone through the merge: the same answer.
    let requests = Vec::new();
    let lone = [ConfigEntry {
        source: ConfigSource::FromClaim,
        driver: DRIVER,
        requests: &requests,
        parameters: first,
    }];
    let merged = merge_for_request(&claim, DRIVER, REQUEST, &lone);
    match (&single, &merged) {
        (Ok(a), Ok(Some(b))) => assert_eq!(a, b, "lone entry: merge and decode disagree"),
        (Err(_), Err(_)) => {}
        (a, b) => panic!("lone entry: decode gave {a:?} but merge gave {b:?}"),
    }

    // 3. Several entries: class/claim order, request matching, kind conflicts, merge patch.
    let rest: Vec<(ConfigSource, &str, Vec<String>, &[u8])> = parts
        .take(6)
        .map(|p| {
            let (sel, body) = p.split_first().map_or((0, p), |(s, b)| (*s, b));
            let source = if sel & 1 == 0 {
                ConfigSource::FromClass
            } else {
                ConfigSource::FromClaim
            };
            let driver = if sel & 0x80 == 0 { DRIVER } else { "other.dev" };
            (source, driver, requests_for(sel >> 1), body)
        })
        .collect();
    if !rest.is_empty() {
        let mut entries = vec![ConfigEntry {
            source: ConfigSource::FromClaim,
            driver: DRIVER,
            requests: &requests,
            parameters: first,
        }];
        entries.extend(rest.iter().map(|(source, driver, req, body)| ConfigEntry {
            source: *source,
            driver,
            requests: req,
            parameters: body,
        }));
        match merge_for_request(&claim, DRIVER, REQUEST, &entries) {
            Ok(Some(cfg)) => round_trip(&cfg),
            Ok(None) => panic!("the first entry always applies, yet nothing was merged"),
            Err(e) => {
                let msg = e.to_string();
                assert!(
                    msg.contains("claim fuzz-ns/fuzz-claim"),
                    "merge error does not name the claim: {msg}"
                );
            }
        }
    }

    // 4. A bare runtime-spec fragment (what the NRI sidecar decodes from the CDI env value).
    if let Ok(f) = RuntimeSpecFragment::from_json(first) {
        let json = f.to_json().expect("a decoded fragment must encode");
        let again = RuntimeSpecFragment::from_json(&json).unwrap_or_else(|e| {
            panic!(
                "canonical JSON of a decoded fragment is refused: {e}\njson: {}",
                String::from_utf8_lossy(&json)
            )
        });
        assert_eq!(again, f, "fragment: decode(encode(fragment)) differs");
    }
});
