//! Field and label selectors, as list, watch and delete-collection take them.

use std::collections::BTreeMap;

use serde_json::Value;

use super::resource::Resource;

#[derive(Debug, Clone, PartialEq, Eq)]
enum FieldOp {
    Eq,
    NotEq,
}

/// `spec.nodeName=node-1,spec.driver!=x`
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct FieldSelector {
    terms: Vec<(String, FieldOp, String)>,
}

impl FieldSelector {
    pub(crate) fn parse(s: &str, resource: Resource) -> Result<Self, String> {
        let mut terms = Vec::new();
        for term in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (field, op, value) = if let Some((f, v)) = term.split_once("!=") {
                (f, FieldOp::NotEq, v)
            } else if let Some((f, v)) = term.split_once("==") {
                (f, FieldOp::Eq, v)
            } else if let Some((f, v)) = term.split_once('=') {
                (f, FieldOp::Eq, v)
            } else {
                return Err(format!(
                    "invalid selector: {term:?}; can't understand {term:?}"
                ));
            };
            let field = field.trim();
            if !resource.selectable_fields().contains(&field) {
                return Err(format!(
                    "field label not supported: {field} (for {})",
                    resource.qualified()
                ));
            }
            terms.push((field.to_owned(), op, value.trim().to_owned()));
        }
        Ok(Self { terms })
    }

    pub(crate) fn matches(&self, obj: &Value) -> bool {
        self.terms.iter().all(|(field, op, want)| {
            let mut cur = obj;
            for part in field.split('.') {
                cur = cur.get(part).unwrap_or(&Value::Null);
            }
            let have = match cur {
                Value::String(s) => s.clone(),
                Value::Null => String::new(),
                other => other.to_string(),
            };
            (have == *want) == (*op == FieldOp::Eq)
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum LabelReq {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// `app=x,tier!=y,env in (a,b),!legacy`
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct LabelSelector {
    reqs: Vec<LabelReq>,
}

/// Splits on commas that are not inside parentheses.
fn split_top_level(s: &str) -> Result<Vec<&str>, String> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth < 0 {
                    return Err(format!("unbalanced parentheses in {s:?}"));
                }
            }
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(format!("unbalanced parentheses in {s:?}"));
    }
    out.push(&s[start..]);
    Ok(out)
}

fn set_values(rest: &str, term: &str) -> Result<Vec<String>, String> {
    let inner = rest
        .trim()
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| format!("invalid label selector term {term:?}: expected (v1,v2)"))?;
    Ok(inner
        .split(',')
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .collect())
}

fn check_key(k: &str, term: &str) -> Result<String, String> {
    let k = k.trim();
    if k.is_empty() || k.contains(char::is_whitespace) {
        return Err(format!("invalid label selector term {term:?}"));
    }
    Ok(k.to_owned())
}

impl LabelSelector {
    pub(crate) fn parse(s: &str) -> Result<Self, String> {
        let mut reqs = Vec::new();
        for term in split_top_level(s)?
            .into_iter()
            .map(str::trim)
            .filter(|t| !t.is_empty())
        {
            let req = if let Some(k) = term.strip_prefix('!') {
                LabelReq::NotExists(check_key(k, term)?)
            } else if let Some((k, v)) = term.split_once("!=") {
                LabelReq::NotEq(check_key(k, term)?, v.trim().to_owned())
            } else if let Some((k, v)) = term.split_once("==") {
                LabelReq::Eq(check_key(k, term)?, v.trim().to_owned())
            } else if let Some((k, v)) = term.split_once('=') {
                LabelReq::Eq(check_key(k, term)?, v.trim().to_owned())
            } else if let Some((k, rest)) = term.split_once(" notin ") {
                LabelReq::NotIn(check_key(k, term)?, set_values(rest, term)?)
            } else if let Some((k, rest)) = term.split_once(" in ") {
                LabelReq::In(check_key(k, term)?, set_values(rest, term)?)
            } else {
                LabelReq::Exists(check_key(term, term)?)
            };
            reqs.push(req);
        }
        Ok(Self { reqs })
    }

    pub(crate) fn matches(&self, obj: &Value) -> bool {
        let labels: BTreeMap<&str, &str> = obj
            .pointer("/metadata/labels")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| v.as_str().map(|v| (k.as_str(), v)))
                    .collect()
            })
            .unwrap_or_default();
        self.reqs.iter().all(|r| match r {
            LabelReq::Eq(k, v) => labels.get(k.as_str()) == Some(&v.as_str()),
            LabelReq::NotEq(k, v) => labels.get(k.as_str()) != Some(&v.as_str()),
            LabelReq::In(k, vs) => labels
                .get(k.as_str())
                .is_some_and(|have| vs.iter().any(|v| v == have)),
            LabelReq::NotIn(k, vs) => labels
                .get(k.as_str())
                .is_none_or(|have| !vs.iter().any(|v| v == have)),
            LabelReq::Exists(k) => labels.contains_key(k.as_str()),
            LabelReq::NotExists(k) => !labels.contains_key(k.as_str()),
        })
    }
}

/// Both selectors of a request.
#[derive(Debug, Clone, Default)]
pub(crate) struct Selectors {
    pub field: FieldSelector,
    pub label: LabelSelector,
}

impl Selectors {
    pub(crate) fn matches(&self, obj: &Value) -> bool {
        self.field.matches(obj) && self.label.matches(obj)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn field_selector_on_slices() {
        let s = FieldSelector::parse(
            "spec.nodeName=node-1,spec.driver=net.drakit.dev",
            Resource::ResourceSlices,
        )
        .unwrap();
        let yes = json!({"spec": {"nodeName": "node-1", "driver": "net.drakit.dev"}});
        let no = json!({"spec": {"nodeName": "node-2", "driver": "net.drakit.dev"}});
        assert!(s.matches(&yes));
        assert!(!s.matches(&no));
        let ne = FieldSelector::parse("spec.nodeName!=node-1", Resource::ResourceSlices).unwrap();
        assert!(ne.matches(&no) && !ne.matches(&yes));
        assert!(FieldSelector::parse("spec.bogus=1", Resource::ResourceSlices).is_err());
        assert!(FieldSelector::parse("nonsense", Resource::ResourceSlices).is_err());
    }

    #[test]
    fn label_selector_forms() {
        let obj = json!({"metadata": {"labels": {"app": "x", "env": "prod"}}});
        for (sel, want) in [
            ("app=x", true),
            ("app==x", true),
            ("app!=x", false),
            ("app", true),
            ("!app", false),
            ("!missing", true),
            ("env in (dev, prod)", true),
            ("env notin (dev,prod)", false),
            ("missing notin (a)", true),
            ("app=x,env in (dev)", false),
            ("", true),
        ] {
            assert_eq!(
                LabelSelector::parse(sel).unwrap().matches(&obj),
                want,
                "{sel}"
            );
        }
        assert!(LabelSelector::parse("env in (a").is_err());
    }
}
