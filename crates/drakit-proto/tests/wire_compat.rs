//! Compares the project's `.proto` files with the upstream reference copies in `../shared/specs`.
//!
//! Both sides are parsed with protox into descriptors. For every upstream message, enum and service
//! the project's copy must have the same fully-qualified name and, member by member, the same field
//! names, numbers, types, labels, presence (proto3 `optional`) and map shapes, the same enum values
//! and the same methods with the same request/response types and streaming flags. Anything extra or
//! missing on either side is reported too. All differences are collected and reported at once.

use prost_types::{
    DescriptorProto, EnumDescriptorProto, FileDescriptorProto, FileDescriptorSet,
    ServiceDescriptorProto,
};
use std::collections::BTreeMap;
use std::path::PathBuf;

fn shared() -> Option<PathBuf> {
    let p = std::env::var_os("DRAKIT_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| drakit_proto::proto_root().join("../../shared"));
    p.join("specs").is_dir().then_some(p)
}

fn compile(includes: &[PathBuf], file: &str) -> FileDescriptorSet {
    let mut c = protox::Compiler::new(includes)
        .unwrap_or_else(|e| panic!("include paths {includes:?}: {e}"));
    c.include_imports(true);
    c.open_file(file)
        .unwrap_or_else(|e| panic!("compiling {file} with {includes:?}: {e}"));
    c.file_descriptor_set()
}

/// Flattened view of everything a file declares, keyed by fully-qualified name.
#[derive(Default)]
struct Decls {
    messages: BTreeMap<String, DescriptorProto>,
    enums: BTreeMap<String, EnumDescriptorProto>,
    services: BTreeMap<String, ServiceDescriptorProto>,
}

fn collect(set: &FileDescriptorSet, file_suffix: &str) -> Decls {
    let file: &FileDescriptorProto = set
        .file
        .iter()
        .find(|f| f.name().ends_with(file_suffix))
        .unwrap_or_else(|| panic!("{file_suffix} not in descriptor set"));
    let pkg = file.package();
    let prefix = if pkg.is_empty() {
        String::from(".")
    } else {
        format!(".{pkg}.")
    };
    let mut d = Decls::default();
    fn walk_msg(prefix: &str, m: &DescriptorProto, d: &mut Decls) {
        let name = format!("{prefix}{}", m.name());
        for n in &m.nested_type {
            walk_msg(&format!("{name}."), n, d);
        }
        for e in &m.enum_type {
            d.enums.insert(format!("{name}.{}", e.name()), e.clone());
        }
        d.messages.insert(name, m.clone());
    }
    for m in &file.message_type {
        walk_msg(&prefix, m, &mut d);
    }
    for e in &file.enum_type {
        d.enums.insert(format!("{prefix}{}", e.name()), e.clone());
    }
    for s in &file.service {
        d.services
            .insert(format!("{prefix}{}", s.name()), s.clone());
    }
    d
}

/// Type names compared after mapping the reference's package onto ours where they legitimately differ
/// (the ttrpc-rust reference declares `grpc.Status`; ours is `google.rpc.Status`).
fn diff(
    ours: &Decls,
    theirs: &Decls,
    what: &str,
    rename: &dyn Fn(&str) -> String,
    out: &mut Vec<String>,
) {
    for (name, t) in &theirs.messages {
        let key = rename(name);
        let Some(o) = ours.messages.get(&key) else {
            out.push(format!("{what}: message {name} missing"));
            continue;
        };
        let of: BTreeMap<i32, _> = o.field.iter().map(|f| (f.number(), f)).collect();
        let tf: BTreeMap<i32, _> = t.field.iter().map(|f| (f.number(), f)).collect();
        for (num, tfield) in &tf {
            let Some(ofield) = of.get(num) else {
                out.push(format!(
                    "{what}: {name} field {num} ({}) missing",
                    tfield.name()
                ));
                continue;
            };
            let checks = [
                ("name", ofield.name().to_string(), tfield.name().to_string()),
                (
                    "type",
                    format!("{:?}", ofield.r#type()),
                    format!("{:?}", tfield.r#type()),
                ),
                (
                    "label",
                    format!("{:?}", ofield.label()),
                    format!("{:?}", tfield.label()),
                ),
                (
                    "type_name",
                    ofield.type_name().to_string(),
                    rename(tfield.type_name()),
                ),
                (
                    "proto3_optional",
                    ofield.proto3_optional().to_string(),
                    tfield.proto3_optional().to_string(),
                ),
                (
                    "oneof",
                    ofield.oneof_index.is_some().to_string(),
                    tfield.oneof_index.is_some().to_string(),
                ),
            ];
            for (k, a, b) in checks {
                if a != b {
                    out.push(format!(
                        "{what}: {name} field {num} {k}: ours {a:?}, upstream {b:?}"
                    ));
                }
            }
        }
        for (num, ofield) in &of {
            if !tf.contains_key(num) {
                out.push(format!(
                    "{what}: {name} has extra field {num} ({})",
                    ofield.name()
                ));
            }
        }
        let om = o.options.as_ref().map(|x| x.map_entry()).unwrap_or(false);
        let tm = t.options.as_ref().map(|x| x.map_entry()).unwrap_or(false);
        if om != tm {
            out.push(format!("{what}: {name} map_entry ours {om}, upstream {tm}"));
        }
    }
    for name in ours.messages.keys() {
        if !theirs.messages.keys().any(|t| &rename(t) == name) {
            out.push(format!("{what}: extra message {name}"));
        }
    }
    for (name, t) in &theirs.enums {
        let Some(o) = ours.enums.get(&rename(name)) else {
            out.push(format!("{what}: enum {name} missing"));
            continue;
        };
        let ov: BTreeMap<i32, &str> = o.value.iter().map(|v| (v.number(), v.name())).collect();
        let tv: BTreeMap<i32, &str> = t.value.iter().map(|v| (v.number(), v.name())).collect();
        if ov != tv {
            out.push(format!(
                "{what}: enum {name} values ours {ov:?}, upstream {tv:?}"
            ));
        }
    }
    for name in ours.enums.keys() {
        if !theirs.enums.keys().any(|t| &rename(t) == name) {
            out.push(format!("{what}: extra enum {name}"));
        }
    }
    for (name, t) in &theirs.services {
        let Some(o) = ours.services.get(&rename(name)) else {
            out.push(format!("{what}: service {name} missing"));
            continue;
        };
        let sig =
            |s: &ServiceDescriptorProto, r: &dyn Fn(&str) -> String| -> BTreeMap<String, String> {
                s.method
                    .iter()
                    .map(|m| {
                        (
                            m.name().to_string(),
                            format!(
                                "{}{} -> {}{}",
                                if m.client_streaming() { "stream " } else { "" },
                                r(m.input_type()),
                                if m.server_streaming() { "stream " } else { "" },
                                r(m.output_type())
                            ),
                        )
                    })
                    .collect()
            };
        let (os, ts) = (sig(o, &|s| s.to_string()), sig(t, rename));
        if os != ts {
            out.push(format!(
                "{what}: service {name} methods ours {os:?}, upstream {ts:?}"
            ));
        }
    }
    for name in ours.services.keys() {
        if !theirs.services.keys().any(|t| &rename(t) == name) {
            out.push(format!("{what}: extra service {name}"));
        }
    }
}

struct Case {
    ours: &'static str,
    upstream_dir: &'static str,
    upstream_file: &'static str,
    /// Extra include dirs (relative to specs/) the upstream file needs.
    upstream_includes: &'static [&'static str],
    /// Whether upstream may have fewer fields than ours (an older release: ours must be a superset
    /// that keeps every upstream field identical).
    older_release: bool,
}

const K8S: &str = "k8s/staging/src/k8s.io/kubelet/pkg/apis";
const K8S_134: &str = "k8s/release-1.34/staging/src/k8s.io/kubelet/pkg/apis";

const CASES: &[Case] = &[
    Case {
        ours: "k8s/dra/v1/api.proto",
        upstream_dir: K8S,
        upstream_file: "dra/v1/api.proto",
        upstream_includes: &[],
        older_release: false,
    },
    Case {
        ours: "k8s/dra/v1beta1/api.proto",
        upstream_dir: K8S,
        upstream_file: "dra/v1beta1/api.proto",
        upstream_includes: &[],
        older_release: false,
    },
    Case {
        ours: "k8s/dra-health/v1alpha1/api.proto",
        upstream_dir: K8S,
        upstream_file: "dra-health/v1alpha1/api.proto",
        upstream_includes: &[],
        older_release: false,
    },
    Case {
        ours: "k8s/dra-health/v1/api.proto",
        upstream_dir: K8S,
        upstream_file: "dra-health/v1/api.proto",
        upstream_includes: &[],
        older_release: false,
    },
    Case {
        ours: "k8s/pluginregistration/v1/api.proto",
        upstream_dir: K8S,
        upstream_file: "pluginregistration/v1/api.proto",
        upstream_includes: &[],
        older_release: false,
    },
    Case {
        ours: "k8s/dra/v1/api.proto",
        upstream_dir: K8S_134,
        upstream_file: "dra/v1/api.proto",
        upstream_includes: &["gogo"],
        older_release: true,
    },
    Case {
        ours: "k8s/dra/v1beta1/api.proto",
        upstream_dir: K8S_134,
        upstream_file: "dra/v1beta1/api.proto",
        upstream_includes: &["gogo"],
        older_release: true,
    },
    Case {
        ours: "nri/api.proto",
        upstream_dir: "nri/pkg/api",
        upstream_file: "api.proto",
        upstream_includes: &[],
        older_release: false,
    },
];

#[test]
fn project_protos_match_upstream_wire_contracts() {
    let Some(shared) = shared() else {
        eprintln!(
            "skipped: ../shared/specs not found (set DRAKIT_SHARED); wire compatibility NOT checked"
        );
        return;
    };
    let specs = shared.join("specs");
    let ours_root = drakit_proto::proto_root();
    let mut problems = Vec::new();
    for case in CASES {
        let ours = collect(
            &compile(std::slice::from_ref(&ours_root), case.ours),
            case.ours,
        );
        let mut inc = vec![specs.join(case.upstream_dir)];
        inc.extend(case.upstream_includes.iter().map(|i| specs.join(i)));
        let theirs = collect(&compile(&inc, case.upstream_file), case.upstream_file);
        let what = format!(
            "{} vs {}/{}",
            case.ours, case.upstream_dir, case.upstream_file
        );
        let mut found = Vec::new();
        diff(&ours, &theirs, &what, &|s| s.to_string(), &mut found);
        if case.older_release {
            // An older release may lack fields and messages that were added later; nothing else.
            found.retain(|p| !p.contains("has extra field") && !p.contains("extra message"));
        }
        problems.extend(found);
    }
    assert!(
        problems.is_empty(),
        "wire-incompatible differences:\n{}",
        problems.join("\n")
    );
}

/// The ttrpc envelope: upstream `request.proto` imports `google/rpc/status.proto`, which is not in
/// the reference set; ttrpc-rust's self-contained copy declares the same messages in package `grpc`.
#[test]
fn ttrpc_envelope_matches_upstream() {
    let Some(shared) = shared() else {
        eprintln!(
            "skipped: ../shared/specs not found (set DRAKIT_SHARED); ttrpc envelope NOT checked"
        );
        return;
    };
    let specs = shared.join("specs");
    let ours_root = drakit_proto::proto_root();
    let ours_set = compile(std::slice::from_ref(&ours_root), "ttrpc/request.proto");
    let ours = collect(&ours_set, "ttrpc/request.proto");
    // Upstream ttrpc request.proto, resolving its google/rpc/status.proto import from our copy.
    let theirs = collect(
        &compile(&[specs.join("ttrpc"), ours_root.clone()], "request.proto"),
        "request.proto",
    );
    let mut problems = Vec::new();
    diff(
        &ours,
        &theirs,
        "ttrpc/request.proto",
        &|s| s.to_string(),
        &mut problems,
    );

    // google.rpc.Status against ttrpc-rust's grpc.Status (same numbers and types).
    let our_status = collect(&ours_set, "google/rpc/status.proto");
    let rust_set = compile(&[specs.join("ttrpc-rust/src")], "ttrpc.proto");
    let rust = collect(&rust_set, "ttrpc.proto");
    let theirs_status = Decls {
        messages: rust
            .messages
            .into_iter()
            .filter(|(k, _)| k == ".grpc.Status")
            .collect(),
        ..Decls::default()
    };
    assert_eq!(
        theirs_status.messages.len(),
        1,
        "grpc.Status not found in ttrpc-rust"
    );
    let rename = |s: &str| {
        s.replace(".grpc.Status", ".google.rpc.Status")
            .replace(".grpc.Any", ".google.protobuf.Any")
    };
    let mut status_problems = Vec::new();
    diff(
        &our_status,
        &theirs_status,
        "google/rpc/status.proto",
        &rename,
        &mut status_problems,
    );
    // ttrpc-rust types `code` as its `Code` enum where googleapis says int32: both are a varint on
    // the wire, so exactly that difference is accepted, nothing else.
    let expected = [
        "google/rpc/status.proto: .grpc.Status field 1 type: ours \"Int32\", upstream \"Enum\"",
        "google/rpc/status.proto: .grpc.Status field 1 type_name: ours \"\", upstream \".grpc.Code\"",
    ];
    status_problems.retain(|p| !expected.contains(&p.as_str()));
    problems.extend(status_problems);
    assert!(
        problems.is_empty(),
        "wire-incompatible differences:\n{}",
        problems.join("\n")
    );
}

/// The comparison itself must be able to fail: a renumbered field is reported.
#[test]
fn comparison_detects_a_renumbered_field() {
    let dir = tempfile_dir();
    std::fs::write(
        dir.join("a.proto"),
        "syntax = \"proto3\"; package p; message M { string a = 1; repeated int64 b = 2; }",
    )
    .unwrap();
    std::fs::create_dir_all(dir.join("b")).unwrap();
    std::fs::write(
        dir.join("b/a.proto"),
        "syntax = \"proto3\"; package p; message M { string a = 1; repeated int64 b = 3; optional string c = 4; }",
    )
    .unwrap();
    let ours = collect(&compile(std::slice::from_ref(&dir), "a.proto"), "a.proto");
    let theirs = collect(&compile(&[dir.join("b")], "a.proto"), "a.proto");
    let mut problems = Vec::new();
    diff(&ours, &theirs, "t", &|s| s.to_string(), &mut problems);
    assert!(
        problems.iter().any(|p| p.contains("field 3 (b) missing")),
        "{problems:?}"
    );
    assert!(
        problems.iter().any(|p| p.contains("extra field 2")),
        "{problems:?}"
    );
    assert!(
        problems.iter().any(|p| p.contains("field 4 (c) missing")),
        "{problems:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempfile_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("drakit-proto-test-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}
