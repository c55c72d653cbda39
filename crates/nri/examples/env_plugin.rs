//! A minimal NRI plugin: adds `HELLO_FROM_NRI=1` to every container and logs pod starts.
//!
//! ```text
//! cargo run -p nri --example env_plugin -- [socket]      # default /var/run/nri/nri.sock
//! ```
//! When the runtime launches it (NRI_PLUGIN_SOCKET set, or a file name like `10-env`), the name,
//! index and socket come from there instead.

use drakit_proto::nri::{Container, CreateContainerResponse, PodSandbox};
use nri::{Adjustment, Event, EventMask, HookResult, Plugin, Stub, StubConfig};

struct EnvPlugin;

impl Plugin for EnvPlugin {
    fn events(&self) -> EventMask {
        EventMask::of(Event::CreateContainer) | Event::RunPodSandbox
    }

    async fn run_pod_sandbox(&self, pod: &PodSandbox) -> HookResult {
        println!("pod {}/{} started", pod.namespace, pod.name);
        Ok(())
    }

    async fn create_container(
        &self,
        pod: &PodSandbox,
        c: &Container,
    ) -> HookResult<CreateContainerResponse> {
        println!("adjusting container {} of pod {}", c.name, pod.name);
        let mut a = Adjustment::new();
        a.add_env("HELLO_FROM_NRI", "1");
        Ok(a.into())
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> nri::Result<()> {
    let mut cfg = StubConfig::from_env(Some("env"), Some("90"))?;
    if let Some(path) = std::env::args().nth(1) {
        cfg = cfg.with_socket(path);
    }
    let stub = Stub::new(EnvPlugin, cfg);
    let handle = stub.handle();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        handle.shutdown();
    });
    stub.run().await
}
