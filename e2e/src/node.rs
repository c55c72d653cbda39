//! One simulated node: the API server stand-in and the kubelet simulator wired together under a
//! root directory, with the kubelet's directory layout, a kubeconfig and the Node object seeded.
//!
//! ```no_run
//! # async fn demo(tmp: &std::path::Path) -> Result<(), drakit_e2e::node::NodeError> {
//! use drakit_e2e::node::{NodeHarness, NodeHarnessConfig};
//! let node = NodeHarness::start(NodeHarnessConfig::new(tmp, "node-1")).await?;
//! // start the daemon under test with:
//! //   --kubeconfig node.kubeconfig  --registry-dir node.registry_dir  --plugins-dir node.plugins_dir
//! node.kubelet.wait_for_driver("net.drakit.dev", std::time::Duration::from_secs(30)).await?;
//! # Ok(()) }
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::apiserver::{self, ApiServerError, ApiServerSim};
use crate::kubelet::{ApiServerLink, KubeletError, KubeletSim, KubeletSimConfig};

/// Errors of starting a node harness.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("creating {path}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    ApiServer(#[from] ApiServerError),
    #[error(transparent)]
    Kubelet(#[from] KubeletError),
}

/// How to lay out the node.
#[derive(Debug, Clone)]
pub struct NodeHarnessConfig {
    /// Everything lives under here (use a fresh temp dir).
    pub root: PathBuf,
    pub node_name: String,
    /// The kubelet's ResourceSlice clean-up delay after a driver leaves (kubelet: 30 s).
    pub slice_wipe_delay: Duration,
}

impl NodeHarnessConfig {
    pub fn new(root: impl Into<PathBuf>, node_name: impl Into<String>) -> Self {
        Self {
            root: root.into(),
            node_name: node_name.into(),
            slice_wipe_delay: Duration::from_secs(30),
        }
    }
}

/// A running simulated node.
#[derive(Debug)]
pub struct NodeHarness {
    pub api: ApiServerSim,
    /// Started last, so its start-up slice wipe and registry scan see the finished layout.
    pub kubelet: KubeletSim,
    pub node_name: String,
    /// `<root>/var/lib/kubelet/plugins_registry`
    pub registry_dir: PathBuf,
    /// `<root>/var/lib/kubelet/plugins` (DRA sockets go in `<plugins_dir>/<driver>/dra.sock`)
    pub plugins_dir: PathBuf,
    /// `<root>/kubeconfig`, pointing at the stand-in.
    pub kubeconfig: PathBuf,
    pub root: PathBuf,
    slice_wipe_delay: Duration,
}

fn kubelet_config(
    registry_dir: &Path,
    api: &ApiServerSim,
    node_name: &str,
    wipe_delay: Duration,
) -> KubeletSimConfig {
    let mut config = KubeletSimConfig::new(registry_dir);
    let mut link = ApiServerLink::new(api.url(), node_name);
    link.wipe_delay = wipe_delay;
    config.api_server = Some(link);
    config
}

fn mkdir(path: &Path) -> Result<(), NodeError> {
    std::fs::create_dir_all(path).map_err(|source| NodeError::Dir {
        path: path.to_path_buf(),
        source,
    })
}

impl NodeHarness {
    pub async fn start(config: NodeHarnessConfig) -> Result<Self, NodeError> {
        let kubelet_dir = config.root.join("var/lib/kubelet");
        let registry_dir = kubelet_dir.join("plugins_registry");
        let plugins_dir = kubelet_dir.join("plugins");
        mkdir(&registry_dir)?;
        mkdir(&plugins_dir)?;
        let api = ApiServerSim::start().await?;
        api.insert_node(&apiserver::node(&config.node_name))?;
        let kubeconfig = config.root.join("kubeconfig");
        api.write_kubeconfig(&kubeconfig)?;
        let kubelet = KubeletSim::start(kubelet_config(
            &registry_dir,
            &api,
            &config.node_name,
            config.slice_wipe_delay,
        ))
        .await?;
        Ok(Self {
            api,
            kubelet,
            node_name: config.node_name,
            registry_dir,
            plugins_dir,
            kubeconfig,
            root: config.root,
            slice_wipe_delay: config.slice_wipe_delay,
        })
    }

    /// Replaces the kubelet simulator with a fresh one, as a kubelet restart: registrations are
    /// redone from the sockets present and the node's slices are wiped again.
    pub async fn restart_kubelet(&mut self) -> Result<(), NodeError> {
        let config = kubelet_config(
            &self.registry_dir,
            &self.api,
            &self.node_name,
            self.slice_wipe_delay,
        );
        // The old one stops watching before the new one scans.
        self.kubelet.stop();
        self.kubelet = KubeletSim::start(config).await?;
        Ok(())
    }

    /// Everything a person looks at when a node test fails: kubelet events and registrations,
    /// the API request log and the stored objects.
    pub fn dump(&self) -> String {
        let mut out = format!(
            "=== node {} (root {})\n",
            self.node_name,
            self.root.display()
        );
        out.push_str(&self.kubelet.dump());
        out.push_str(&self.api.dump());
        out
    }
}
