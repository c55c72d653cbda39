//! Inputs the fuzz targets in `fuzz/` found, kept as ordinary tests so `cargo test` guards the
//! fix without cargo-fuzz. Each test names the target and what it found.

use drakit_types::config::{
    ClaimRef, ConfigEntry, ConfigSource, decode_parameters, merge_for_request,
};

fn claim() -> ClaimRef {
    ClaimRef::new("fuzz-ns", "fuzz-claim", "0b1c4d2e-uid")
}

/// config_decode: a lone entry went through the merge patch, which drops `null` members, so an
/// unknown key set to null passed `merge_for_request` while `decode_parameters` refused it.
#[test]
fn config_decode_lone_entry_with_unknown_null_key() {
    for raw in [
        br#"{"apiVersion":"drakit.dev/v1alpha1","kind":"CpuConfig","bogus":null}"#.as_slice(),
        br#"{"apiVersion":"drakit.dev/v1alpha1","kind":"NetdevConfig","netdev":{"kind":"dummy","bogus":null}}"#,
    ] {
        let direct = decode_parameters(&claim(), 0, ConfigSource::FromClaim, raw).unwrap_err();
        assert!(direct.path().ends_with("bogus"), "{direct}");
        assert!(direct.to_string().contains("unknown field"), "{direct}");
        let requests = Vec::new();
        let entries = [ConfigEntry {
            source: ConfigSource::FromClaim,
            driver: "net.drakit.dev",
            requests: &requests,
            parameters: raw,
        }];
        let merged =
            merge_for_request(&claim(), "net.drakit.dev", "nic", &entries).expect_err("refused");
        assert_eq!(merged.path(), direct.path());
        assert_eq!(merged.reason(), direct.reason());
        assert!(
            merged.to_string().contains("claim fuzz-ns/fuzz-claim"),
            "{merged}"
        );
    }
}
