//! The resource types the stand-in serves.

/// A resource type served by the stand-in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Resource {
    /// core/v1 `nodes` (cluster-scoped).
    Nodes,
    /// resource.k8s.io/v1 `resourceclaims` (namespaced, `status` subresource).
    ResourceClaims,
    /// resource.k8s.io/v1 `resourceslices` (cluster-scoped).
    ResourceSlices,
}

impl Resource {
    pub const ALL: [Resource; 3] = [Self::Nodes, Self::ResourceClaims, Self::ResourceSlices];

    pub fn plural(self) -> &'static str {
        match self {
            Self::Nodes => "nodes",
            Self::ResourceClaims => "resourceclaims",
            Self::ResourceSlices => "resourceslices",
        }
    }

    pub fn kind(self) -> &'static str {
        match self {
            Self::Nodes => "Node",
            Self::ResourceClaims => "ResourceClaim",
            Self::ResourceSlices => "ResourceSlice",
        }
    }

    pub fn group(self) -> &'static str {
        match self {
            Self::Nodes => "",
            Self::ResourceClaims | Self::ResourceSlices => "resource.k8s.io",
        }
    }

    pub(crate) fn group_or_core(self) -> &'static str {
        match self.group() {
            "" => "core",
            g => g,
        }
    }

    pub fn api_version(self) -> &'static str {
        match self {
            Self::Nodes => "v1",
            Self::ResourceClaims | Self::ResourceSlices => "resource.k8s.io/v1",
        }
    }

    pub fn namespaced(self) -> bool {
        matches!(self, Self::ResourceClaims)
    }

    /// `nodes` or `resourceslices.resource.k8s.io`, as in the server's messages.
    pub fn qualified(self) -> String {
        match self.group() {
            "" => self.plural().to_owned(),
            g => format!("{}.{g}", self.plural()),
        }
    }

    pub(crate) fn from_kind(api_version: &str, kind: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|r| r.api_version() == api_version && r.kind() == kind)
    }

    /// The fields a `fieldSelector` may name for this resource.
    pub(crate) fn selectable_fields(self) -> &'static [&'static str] {
        match self {
            Self::Nodes => &["metadata.name", "spec.unschedulable"],
            Self::ResourceClaims => &["metadata.name", "metadata.namespace"],
            Self::ResourceSlices => &[
                "metadata.name",
                "spec.nodeName",
                "spec.driver",
                "spec.pool.name",
            ],
        }
    }
}
