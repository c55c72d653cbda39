//! Errors of the claim-configuration API: every one says which claim, which config entry and
//! which field it is about.

use std::fmt;

/// Where a config entry came from, as in `status.allocation.devices.config[].source`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ConfigSource {
    /// Set on the DeviceClass (`FromClass`); applied before any claim config.
    FromClass,
    /// Set on the ResourceClaim itself (`FromClaim`).
    FromClaim,
}

impl ConfigSource {
    /// The Kubernetes spelling (`FromClass` / `FromClaim`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FromClass => "FromClass",
            Self::FromClaim => "FromClaim",
        }
    }

    /// Parses the Kubernetes spelling.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "FromClass" => Some(Self::FromClass),
            "FromClaim" => Some(Self::FromClaim),
            _ => None,
        }
    }
}

impl fmt::Display for ConfigSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The claim a config belongs to (for messages; the UID is kept for logs and checks).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct ClaimRef {
    /// Namespace of the ResourceClaim.
    pub namespace: String,
    /// Name of the ResourceClaim.
    pub name: String,
    /// UID of the ResourceClaim.
    pub uid: String,
}

impl ClaimRef {
    /// Builds a reference from its three parts.
    pub fn new(
        namespace: impl Into<String>,
        name: impl Into<String>,
        uid: impl Into<String>,
    ) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            uid: uid.into(),
        }
    }
}

impl fmt::Display for ClaimRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "claim {}/{}", self.namespace, self.name)
    }
}

/// One config entry: its index in the claim's allocation config list and its source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EntryRef {
    /// Index in `status.allocation.devices.config` (or whatever list the caller passed).
    pub index: usize,
    /// Class or claim.
    pub source: ConfigSource,
}

impl fmt::Display for EntryRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "config[{}] ({})", self.index, self.source)
    }
}

/// Which config text an error is about.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Origin {
    /// No context given (e.g. a backend re-decoding a validated config).
    #[default]
    Unknown,
    /// One config entry of a claim.
    Entry(EntryRef),
    /// The merge of several entries, for one request.
    Merged {
        /// The request the configs were merged for.
        request: String,
        /// The entries, in merge order.
        entries: Vec<EntryRef>,
    },
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unknown => Ok(()),
            Self::Entry(e) => write!(f, "{e}"),
            Self::Merged { request, entries } => {
                write!(f, "request {request:?} (merged ")?;
                for (i, e) in entries.iter().enumerate() {
                    if i > 0 {
                        f.write_str(" + ")?;
                    }
                    write!(f, "{e}")?;
                }
                f.write_str(")")
            }
        }
    }
}

/// Why a config was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Reason {
    /// The raw parameters exceed the API server's limit.
    #[error("parameters are {len} bytes, more than the limit of {max} bytes")]
    TooLarge {
        /// Size of the input.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The bytes are not UTF-8.
    #[error("parameters are not valid UTF-8 (first bad byte at offset {offset})")]
    InvalidUtf8 {
        /// Offset of the first invalid byte.
        offset: usize,
    },
    /// The text is not JSON.
    #[error("invalid JSON: {0}")]
    Syntax(String),
    /// An object repeats a key.
    #[error("duplicate key {0:?}")]
    DuplicateKey(String),
    /// The top level is not an object.
    #[error("parameters must be a JSON object, found {0}")]
    NotAnObject(&'static str),
    /// `apiVersion` is missing.
    #[error("apiVersion is required (expected {expected:?})")]
    MissingApiVersion {
        /// The supported apiVersion.
        expected: &'static str,
    },
    /// `apiVersion` names another API.
    #[error("apiVersion {found} is not supported (expected {expected:?})")]
    WrongApiVersion {
        /// What the config said (JSON text).
        found: String,
        /// The supported apiVersion.
        expected: &'static str,
    },
    /// Neither `kind` nor the legacy `type` is present.
    #[error("kind is required (one of {0})")]
    MissingKind(&'static str),
    /// `kind` (or `type`) names no known kind.
    #[error("unknown kind {found} (expected one of {expected})")]
    UnknownKind {
        /// What the config said (JSON text).
        found: String,
        /// The known kinds.
        expected: &'static str,
    },
    /// A field is not known at this place.
    #[error("unknown field {0:?}")]
    UnknownField(String),
    /// A structural decode error (type mismatch, unknown field, missing field, ...).
    #[error("{0}")]
    Decode(String),
    /// A field is set that does not apply to the chosen kind.
    #[error("{field} is not valid for kind {kind}")]
    NotForKind {
        /// The field name.
        field: &'static str,
        /// The chosen kind.
        kind: String,
    },
    /// A semantic rule is broken.
    #[error("{0}")]
    Invalid(String),
    /// One request received configs of different kinds.
    #[error(
        "{first} is a {first_kind} but {second} is a {second_kind}; one request takes configs of one kind only"
    )]
    KindConflict {
        /// The first entry.
        first: EntryRef,
        /// Its kind.
        first_kind: &'static str,
        /// The entry that disagrees.
        second: EntryRef,
        /// Its kind.
        second_kind: &'static str,
    },
}

/// The parts of a [`ConfigError`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrorDetail {
    /// The claim, when the caller gave it.
    pub claim: Option<ClaimRef>,
    /// Which config text.
    pub origin: Origin,
    /// Field path inside the parameters object (`netdev.addresses[1]`); empty for the whole object.
    pub path: String,
    /// Why.
    pub reason: Reason,
}

/// A refused claim config: the claim, the config entry, the field path and the reason (boxed,
/// so `Result<_, ConfigError>` stays one pointer wide; fields are reachable through `Deref`).
///
/// Displays as `claim ns/name: config[1] (FromClaim) netdev.mtu: 70000 is above the maximum 65535`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(Box<ConfigErrorDetail>);

impl std::ops::Deref for ConfigError {
    type Target = ConfigErrorDetail;
    fn deref(&self) -> &ConfigErrorDetail {
        &self.0
    }
}

impl std::ops::DerefMut for ConfigError {
    fn deref_mut(&mut self) -> &mut ConfigErrorDetail {
        &mut self.0
    }
}

impl ConfigError {
    /// An error without claim context (added later with [`ConfigError::with_context`]).
    pub fn new(path: impl Into<String>, reason: Reason) -> Self {
        Self(Box::new(ConfigErrorDetail {
            claim: None,
            origin: Origin::Unknown,
            path: path.into(),
            reason,
        }))
    }

    /// Adds the claim and origin (keeps ones already set).
    #[must_use]
    pub fn with_context(mut self, claim: Option<&ClaimRef>, origin: &Origin) -> Self {
        if self.claim.is_none() {
            self.claim = claim.cloned();
        }
        if self.origin == Origin::Unknown {
            self.origin = origin.clone();
        }
        self
    }

    /// The field path (`""` for the whole parameters object).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The reason.
    pub fn reason(&self) -> &Reason {
        &self.reason
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(c) = &self.claim {
            write!(f, "{c}: ")?;
        }
        if self.origin != Origin::Unknown {
            write!(f, "{} ", self.origin)?;
        }
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        write!(f, "{}", self.reason)
    }
}

impl std::error::Error for ConfigError {}

/// Builds `parent.key` / `key`.
pub(crate) fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

/// Builds `parent[i]`.
pub(crate) fn index(parent: &str, i: usize) -> String {
    format!("{parent}[{i}]")
}

/// Shorthand for a semantic error.
pub(crate) fn invalid(path: impl Into<String>, msg: impl Into<String>) -> ConfigError {
    ConfigError::new(path, Reason::Invalid(msg.into()))
}
