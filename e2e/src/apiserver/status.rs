//! `meta/v1 Status` error bodies with the reasons and codes the real API server uses.

use serde_json::{Value, json};

use super::resource::Resource;

/// A failed request: the HTTP code and the Status object sent back.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ApiError {
    pub code: u16,
    pub body: Value,
    pub retry_after: Option<u64>,
}

/// One `details.causes[]` entry of an Invalid status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Cause {
    pub field: String,
    pub message: String,
    /// `FieldValueInvalid`, `FieldValueRequired`, `FieldValueDuplicate`, `FieldValueTooLong`, ...
    pub reason: &'static str,
}

impl Cause {
    pub(crate) fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
            reason: "FieldValueInvalid",
        }
    }

    pub(crate) fn required(field: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: "Required value".to_owned(),
            reason: "FieldValueRequired",
        }
    }

    pub(crate) fn too_many(field: impl Into<String>, have: usize, max: usize) -> Self {
        Self {
            field: field.into(),
            message: format!("Too many: {have}: must have at most {max} items"),
            reason: "FieldValueTooMany",
        }
    }

    pub(crate) fn duplicate(field: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: format!("Duplicate value: {:?}", value.into()),
            reason: "FieldValueDuplicate",
        }
    }
}

fn status(code: u16, reason: &str, message: String, details: Option<Value>) -> Value {
    let mut v = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    });
    if let (Some(details), Some(obj)) = (details, v.as_object_mut()) {
        obj.insert("details".to_owned(), details);
    }
    v
}

fn details(resource: Resource, name: &str) -> Value {
    let mut d = json!({ "name": name, "kind": resource.plural() });
    if !resource.group().is_empty()
        && let Some(obj) = d.as_object_mut()
    {
        obj.insert("group".to_owned(), json!(resource.group()));
    }
    d
}

impl ApiError {
    pub(crate) fn new(code: u16, reason: &str, message: impl Into<String>) -> Self {
        Self {
            code,
            body: status(code, reason, message.into(), None),
            retry_after: None,
        }
    }

    pub(crate) fn not_found(resource: Resource, name: &str) -> Self {
        Self {
            code: 404,
            body: status(
                404,
                "NotFound",
                format!("{} {name:?} not found", resource.qualified()),
                Some(details(resource, name)),
            ),
            retry_after: None,
        }
    }

    pub(crate) fn path_not_found() -> Self {
        Self::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    }

    pub(crate) fn already_exists(resource: Resource, name: &str) -> Self {
        Self {
            code: 409,
            body: status(
                409,
                "AlreadyExists",
                format!("{} {name:?} already exists", resource.qualified()),
                Some(details(resource, name)),
            ),
            retry_after: None,
        }
    }

    pub(crate) fn conflict(resource: Resource, name: &str, why: impl std::fmt::Display) -> Self {
        Self {
            code: 409,
            body: status(
                409,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {} {name:?}: {why}",
                    resource.qualified()
                ),
                Some(details(resource, name)),
            ),
            retry_after: None,
        }
    }

    /// A server-side apply conflict with another field manager.
    pub(crate) fn apply_conflict(
        resource: Resource,
        name: &str,
        manager: &str,
        fields: &[String],
    ) -> Self {
        let causes: Vec<Value> = fields
            .iter()
            .map(|f| {
                json!({
                    "reason": "FieldManagerConflict",
                    "message": format!("conflict with {manager:?}"),
                    "field": f,
                })
            })
            .collect();
        let mut d = details(resource, name);
        if let Some(obj) = d.as_object_mut() {
            obj.insert("causes".to_owned(), Value::Array(causes));
        }
        Self {
            code: 409,
            body: status(
                409,
                "Conflict",
                format!(
                    "Apply failed with {} conflict{}: conflict with {manager:?}: {}",
                    fields.len(),
                    if fields.len() == 1 { "" } else { "s" },
                    fields.join(", ")
                ),
                Some(d),
            ),
            retry_after: None,
        }
    }

    pub(crate) fn invalid(resource: Resource, name: &str, causes: &[Cause]) -> Self {
        let summary: Vec<String> = causes
            .iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect();
        let mut d = details(resource, name);
        if let Some(obj) = d.as_object_mut() {
            obj.insert("kind".to_owned(), json!(resource.kind()));
            obj.insert(
                "causes".to_owned(),
                Value::Array(
                    causes
                        .iter()
                        .map(
                            |c| json!({"reason": c.reason, "message": c.message, "field": c.field}),
                        )
                        .collect(),
                ),
            );
        }
        Self {
            code: 422,
            body: status(
                422,
                "Invalid",
                format!(
                    "{}.{} {name:?} is invalid: {}",
                    resource.kind(),
                    resource.group_or_core(),
                    summary.join(", ")
                ),
                Some(d),
            ),
            retry_after: None,
        }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    pub(crate) fn method_not_allowed(method: &str) -> Self {
        Self::new(
            405,
            "MethodNotAllowed",
            format!("the server does not allow this method on the requested resource ({method})"),
        )
    }

    pub(crate) fn unsupported_media_type(ct: &str) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/apply-patch+yaml, application/merge-patch+json, application/strategic-merge-patch+json (got {ct:?})"
            ),
        )
    }

    /// An injected fault: 429 is TooManyRequests, 503 ServiceUnavailable, 504 Timeout, others
    /// InternalError; `retry_after` is sent as the Retry-After header and in the details.
    pub(crate) fn injected(code: u16, retry_after: Option<u64>, message: &str) -> Self {
        let reason = match code {
            429 => "TooManyRequests",
            503 => "ServiceUnavailable",
            504 => "Timeout",
            409 => "Conflict",
            404 => "NotFound",
            _ => "InternalError",
        };
        let details = retry_after.map(|s| json!({ "retryAfterSeconds": s }));
        Self {
            code,
            body: status(code, reason, message.to_owned(), details),
            retry_after,
        }
    }
}
