//! A kube client that may still be under construction. Building one costs tens of
//! milliseconds (TLS roots), so the binary registers with the kubelet first and lets claim
//! reads, slices and status wait for the client.

use tokio::sync::watch;

/// Shared handle to a kube client that becomes available once.
#[derive(Clone)]
pub struct LazyClient {
    rx: watch::Receiver<Option<kube::Client>>,
}

/// The setter of a [`LazyClient`].
pub struct ClientSetter {
    tx: watch::Sender<Option<kube::Client>>,
}

impl std::fmt::Debug for ClientSetter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientSetter")
    }
}

impl std::fmt::Debug for LazyClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazyClient")
            .field("ready", &self.rx.borrow().is_some())
            .finish()
    }
}

impl LazyClient {
    /// A pending client and its setter.
    pub fn pending() -> (Self, ClientSetter) {
        let (tx, rx) = watch::channel(None);
        (Self { rx }, ClientSetter { tx })
    }

    /// An already built client.
    pub fn ready(client: kube::Client) -> Self {
        let (tx, rx) = watch::channel(Some(client));
        drop(tx);
        Self { rx }
    }

    /// Waits for the client; `None` if its setter was dropped without setting one.
    pub async fn get(&self) -> Option<kube::Client> {
        if let Some(c) = self.rx.borrow().as_ref() {
            return Some(c.clone());
        }
        let mut rx = self.rx.clone();
        let r = rx.wait_for(Option::is_some).await;
        r.ok().and_then(|c| c.clone())
    }
}

impl ClientSetter {
    pub fn set(self, client: kube::Client) {
        self.tx.send_replace(Some(client));
    }
}
