//! Writes the JSON Schema of every config kind and the claim-config reference into a directory.
//! `cargo xtask render` runs it for `manifests/schemas/`:
//!
//! ```text
//! cargo run -p drakit-types --features schema --example export_schemas -- <out-dir>
//! ```
//! Output: `<Kind>.json` per kind, `index.json` (kind -> file), `REFERENCE.md`.

use std::fmt::Write as _;
use std::path::PathBuf;

use drakit_types::config::schema::kind_schemas;
use serde_json::{Value, json};

/// Examples shown in the reference (each is checked to decode by the tests of this crate).
const EXAMPLES: &[(&str, &str)] = &[
    (
        "NetdevConfig",
        include_str!("../tests/data/configs/netdev-macvlan-full.json"),
    ),
    (
        "CniConfig",
        include_str!("../tests/data/configs/cni-bridge.json"),
    ),
    (
        "RdmaConfig",
        include_str!("../tests/data/configs/rdma.json"),
    ),
    ("CpuConfig", include_str!("../tests/data/configs/cpu.json")),
    (
        "RuntimeSpecEditConfig",
        include_str!("../tests/data/configs/runtime-full.json"),
    ),
];

fn resolve<'a>(root: &'a Value, v: &'a Value) -> &'a Value {
    match v["$ref"].as_str().and_then(|r| r.strip_prefix("#/$defs/")) {
        Some(name) => resolve(root, &root["$defs"][name]),
        None => v,
    }
}

/// The non-null alternative of an `Option` (anyOf/oneOf with null, or type [x, "null"]).
fn strip_null<'a>(root: &'a Value, v: &'a Value) -> &'a Value {
    let v = resolve(root, v);
    for key in ["anyOf", "oneOf"] {
        if let Some(alts) = v[key].as_array() {
            let non_null: Vec<&Value> = alts.iter().filter(|a| a["type"] != "null").collect();
            if non_null.len() == 1 && alts.len() == 2 {
                return resolve(root, non_null[0]);
            }
        }
    }
    v
}

fn type_of(root: &Value, v: &Value) -> String {
    let v = strip_null(root, v);
    if let Some(c) = v.get("const") {
        return format!("`{c}`");
    }
    if let Some(e) = v["enum"].as_array() {
        return e
            .iter()
            .map(|x| format!("`{x}`"))
            .collect::<Vec<_>>()
            .join(" \\| ");
    }
    if let Some(alts) = v["oneOf"].as_array().or_else(|| v["anyOf"].as_array()) {
        let parts: Vec<String> = alts.iter().map(|a| type_of(root, a)).collect();
        return parts.join(" \\| ");
    }
    match &v["type"] {
        Value::String(t) if t == "array" => format!("list of {}", type_of(root, &v["items"])),
        Value::String(t) if t == "object" && v["additionalProperties"].is_object() => {
            format!("map of {}", type_of(root, &v["additionalProperties"]))
        }
        Value::String(t) => t.clone(),
        Value::Array(ts) => ts
            .iter()
            .filter(|t| *t != "null")
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(" \\| "),
        _ => v
            .get("title")
            .and_then(Value::as_str)
            .unwrap_or("any")
            .to_string(),
    }
}

fn bounds(root: &Value, v: &Value) -> String {
    let v = strip_null(root, v);
    let mut out = Vec::new();
    for (k, label) in [
        ("minimum", "≥"),
        ("maximum", "≤"),
        ("minLength", "min length"),
        ("maxLength", "max length"),
        ("maxItems", "max items"),
        ("maxProperties", "max entries"),
    ] {
        if let Some(n) = v.get(k) {
            out.push(format!("{label} {n}"));
        }
    }
    if let Some(p) = v["pattern"].as_str() {
        out.push(format!("pattern `{}`", p.replace('|', "\\|")));
    }
    out.join(", ")
}

fn walk(root: &Value, obj: &Value, prefix: &str, depth: usize, rows: &mut Vec<String>) {
    let obj = strip_null(root, obj);
    let required: Vec<&str> = obj["required"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let Some(props) = obj["properties"].as_object() else {
        return;
    };
    for (name, p) in props {
        let path = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}.{name}")
        };
        let desc = p["description"]
            .as_str()
            .or_else(|| strip_null(root, p)["description"].as_str())
            .unwrap_or("")
            .replace('\n', " ")
            .replace('|', "\\|");
        let default = p
            .get("default")
            .map(|d| format!("`{d}`"))
            .unwrap_or_default();
        rows.push(format!(
            "| `{path}` | {} | {} | {default} | {} | {desc} |",
            type_of(root, p),
            if required.contains(&name.as_str()) {
                "yes"
            } else {
                ""
            },
            bounds(root, p),
        ));
        if depth < 4 {
            let inner = strip_null(root, p);
            if inner["type"] == "object" && inner["properties"].is_object() {
                walk(root, inner, &path, depth + 1, rows);
            } else if inner["type"] == "array" {
                let item = strip_null(root, &inner["items"]);
                if item["properties"].is_object() {
                    walk(root, item, &format!("{path}[]"), depth + 1, rows);
                }
            }
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out: PathBuf = std::env::args()
        .nth(1)
        .ok_or("usage: export_schemas <out-dir>")?
        .into();
    std::fs::create_dir_all(&out)?;
    let mut index = serde_json::Map::new();
    let mut md = String::from(
        "# Claim-config reference (`drakit.dev/v1alpha1`)\n\n\
         Generated from the drakit-types config types and their doc comments by `cargo xtask render`;\n\
         do not edit. Each kind is the `parameters` of an `opaque` config of a ResourceClaim, a\n\
         ResourceClaimTemplate or a DeviceClass, addressed to the driver named below. The JSON Schemas\n\
         beside this file (`<Kind>.json`) describe the same shapes for editors; the node (and the\n\
         admission webhook) decode strictly: unknown fields are errors, and semantic checks the schema\n\
         cannot express (MAC multicast bit, prefix host bits, cgroup key rules, the runtime-spec admin\n\
         policy) apply too. Configs from the DeviceClass are merged first, then the claim's; later wins.\n\n",
    );
    for (kind, schema) in kind_schemas() {
        let file = format!("{kind}.json");
        std::fs::write(
            out.join(&file),
            serde_json::to_string_pretty(&schema)? + "\n",
        )?;
        index.insert(kind.to_string(), json!(file));
        let _ = writeln!(
            md,
            "## {kind}\n\n{}\n",
            schema["description"].as_str().unwrap_or("")
        );
        md.push_str("| field | type | required | default | bounds | description |\n|---|---|---|---|---|---|\n");
        let mut rows = Vec::new();
        walk(&schema, &schema, "", 0, &mut rows);
        for r in rows {
            md.push_str(&r);
            md.push('\n');
        }
        if let Some((_, ex)) = EXAMPLES.iter().find(|(k, _)| *k == kind) {
            let v: Value = serde_json::from_str(ex)?;
            let _ = writeln!(
                md,
                "\nExample (as `opaque.parameters`):\n\n```yaml\n{}```\n",
                serde_yaml::to_string(&v)?
            );
        } else {
            md.push('\n');
        }
    }
    std::fs::write(
        out.join("index.json"),
        serde_json::to_string_pretty(&Value::Object(index))? + "\n",
    )?;
    std::fs::write(out.join("REFERENCE.md"), md)?;
    Ok(())
}
