//! JSON plumbing shared by the config decoder and the admin policy: a strict parser that refuses
//! duplicate object keys (serde_json keeps the last one silently, which would let a second key
//! hide behind the first from a reviewer), RFC 7386 merge patch, and the "which input keys did a
//! typed decode drop" diff used to find unknown fields in oci-spec types.

use std::cell::RefCell;
use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use super::error::{ConfigError, Reason, index, join};

/// Name of a JSON value's type, for messages.
pub(crate) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Parses UTF-8 JSON text into a [`Value`], refusing duplicate keys in any object.
///
/// Nesting is bounded by serde_json's recursion limit (128), so deep input cannot overflow the
/// stack here or in the recursive walks that follow.
pub fn parse_strict(text: &str) -> Result<Value, ConfigError> {
    let dup = RefCell::new(None);
    let mut de = serde_json::Deserializer::from_str(text);
    let seed = StrictSeed {
        path: String::new(),
        dup: &dup,
    };
    let parsed = seed.deserialize(&mut de).and_then(|v| de.end().map(|()| v));
    match parsed {
        Ok(v) => Ok(v),
        Err(e) => {
            if let Some((path, key)) = dup.into_inner() {
                Err(ConfigError::new(path, Reason::DuplicateKey(key)))
            } else {
                Err(ConfigError::new("", Reason::Syntax(e.to_string())))
            }
        }
    }
}

/// Parses raw bytes: UTF-8 check then [`parse_strict`].
pub fn parse_strict_bytes(bytes: &[u8]) -> Result<Value, ConfigError> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        ConfigError::new(
            "",
            Reason::InvalidUtf8 {
                offset: e.valid_up_to(),
            },
        )
    })?;
    parse_strict(text)
}

struct StrictSeed<'a> {
    path: String,
    dup: &'a RefCell<Option<(String, String)>>,
}

impl<'de> DeserializeSeed<'de> for StrictSeed<'_> {
    type Value = Value;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrictSeed<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        // Non-finite numbers cannot come from JSON text; map them to null defensively.
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        loop {
            let seed = StrictSeed {
                path: index(&self.path, out.len()),
                dup: self.dup,
            };
            match seq.next_element_seed(seed)? {
                Some(v) => out.push(v),
                None => break,
            }
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                *self.dup.borrow_mut() = Some((self.path.clone(), key.clone()));
                return Err(de::Error::custom(format_args!("duplicate key {key:?}")));
            }
            let seed = StrictSeed {
                path: join(&self.path, &key),
                dup: self.dup,
            };
            let v = map.next_value_seed(seed)?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

/// RFC 7386 JSON merge patch: `patch`'s keys override `target`'s, objects merge recursively,
/// `null` deletes a key, arrays and scalars replace.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            if let Value::Object(t) = target {
                for (k, v) in p {
                    if v.is_null() {
                        t.remove(k);
                    } else {
                        merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                    }
                }
            }
        }
        other => *target = other.clone(),
    }
}

/// What a lenient typed decode did to its input (see [`first_mismatch`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Mismatch {
    /// A key of the input is missing from the re-encoded value: an unknown field.
    Dropped(String),
    /// The re-encoded value has an object where the input had something else (serde derive
    /// accepts a struct written as a JSON array, positionally).
    NotObject(String, &'static str),
}

/// Compares a decoder's input with the re-encoded result and reports the first difference
/// that means the decoder was lenient: a key it dropped (depth first, in key order), or an
/// object it built from a non-object. Keys whose input value is `null` count as "unset".
pub(crate) fn first_mismatch(input: &Value, decoded: &Value, path: &str) -> Option<Mismatch> {
    match (input, decoded) {
        (Value::Object(i), Value::Object(d)) => {
            for (k, iv) in i {
                let p = join(path, k);
                match d.get(k) {
                    None if iv.is_null() => {}
                    None => return Some(Mismatch::Dropped(p)),
                    Some(dv) => {
                        if let Some(found) = first_mismatch(iv, dv, &p) {
                            return Some(found);
                        }
                    }
                }
            }
            None
        }
        (other, Value::Object(_)) => Some(Mismatch::NotObject(path.to_string(), type_name(other))),
        (Value::Array(i), Value::Array(d)) => i
            .iter()
            .zip(d.iter())
            .enumerate()
            .find_map(|(n, (iv, dv))| first_mismatch(iv, dv, &index(path, n))),
        _ => None,
    }
}

/// Rebuilds a value with every object's keys in sorted order, whatever the map type (serde_json
/// keeps insertion order when its `preserve_order` feature is on somewhere in the build, and
/// oci-spec fills `HashMap`s), so encodings are byte-for-byte reproducible.
pub fn sorted(v: Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut entries: Vec<(String, Value)> = m.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect())
        }
        Value::Array(a) => Value::Array(a.into_iter().map(sorted).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_keys_are_found_with_their_path() {
        let e = parse_strict(r#"{"a":{"b":[{"c":1,"c":2}]}}"#).unwrap_err();
        assert_eq!(e.path, "a.b[0]");
        assert_eq!(e.reason, Reason::DuplicateKey("c".into()));
        let e = parse_strict(r#"{"a":1,"a":1}"#).unwrap_err();
        assert_eq!(e.path, "");
        // An escaped spelling of the same key is the same key.
        let e = parse_strict(r#"{"ab":1,"a\u0062":1}"#).unwrap_err();
        assert_eq!(e.reason, Reason::DuplicateKey("ab".into()));
    }

    #[test]
    fn syntax_errors_and_trailing_garbage() {
        assert!(matches!(
            parse_strict("{").unwrap_err().reason,
            Reason::Syntax(_)
        ));
        assert!(matches!(
            parse_strict("{} x").unwrap_err().reason,
            Reason::Syntax(_)
        ));
        let deep = "[".repeat(5000);
        assert!(matches!(
            parse_strict(&deep).unwrap_err().reason,
            Reason::Syntax(_)
        ));
        assert!(matches!(
            parse_strict_bytes(b"{\"a\":\"\xff\"}").unwrap_err().reason,
            Reason::InvalidUtf8 { offset: 6 }
        ));
    }

    #[test]
    fn merge_patch_follows_rfc7386() {
        let mut t: Value = serde_json::json!({"a":{"b":1,"c":[1,2]},"d":1});
        merge_patch(
            &mut t,
            &serde_json::json!({"a":{"b":null,"c":[3],"e":{"f":1}},"d":"x"}),
        );
        assert_eq!(t, serde_json::json!({"a":{"c":[3],"e":{"f":1}},"d":"x"}));
    }

    #[test]
    fn dropped_keys() {
        let i = serde_json::json!({"a":{"b":1,"x":2},"n":null,"l":[{"k":1},{"z":1}]});
        let d = serde_json::json!({"a":{"b":1},"l":[{"k":1},{}]});
        assert_eq!(
            first_mismatch(&i, &d, "spec"),
            Some(Mismatch::Dropped("spec.a.x".into()))
        );
        let d2 = serde_json::json!({"a":{"b":1,"x":2},"l":[{"k":1},{}]});
        assert_eq!(
            first_mismatch(&i, &d2, ""),
            Some(Mismatch::Dropped("l[1].z".into()))
        );
        let i = serde_json::json!({"s":[]});
        let d = serde_json::json!({"s":{}});
        assert_eq!(
            first_mismatch(&i, &d, ""),
            Some(Mismatch::NotObject("s".into(), "an array"))
        );
    }

    #[test]
    fn sorted_orders_keys() {
        let mut m = Map::new();
        m.insert("b".into(), Value::from(1));
        m.insert("a".into(), serde_json::json!([{"d":1,"c":2}]));
        let s = serde_json::to_string(&sorted(Value::Object(m))).unwrap();
        assert_eq!(s, r#"{"a":[{"c":2,"d":1}],"b":1}"#);
    }
}
