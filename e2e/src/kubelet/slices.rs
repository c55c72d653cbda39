//! The kubelet's ResourceSlice clean-up: at start it deletes every slice of its node, and some time
//! after a driver's last instance went away it deletes that driver's slices of the node (unless the
//! driver registered again meanwhile). Done over plain HTTP against the API server stand-in (or any
//! API server reachable without TLS or auth), as `DELETE` on the collection with a field selector.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Where the kubelet simulator finds the API server, and for which node it cleans up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiServerLink {
    /// `http://host:port` (no TLS, no auth: the stand-in).
    pub url: String,
    pub node_name: String,
    /// How long after a driver's last instance is gone its slices are deleted (kubelet: 30 s).
    pub wipe_delay: Duration,
}

impl ApiServerLink {
    pub fn new(url: impl Into<String>, node_name: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            node_name: node_name.into(),
            wipe_delay: Duration::from_secs(30),
        }
    }
}

fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The request path that deletes the node's slices (of one driver, or of all).
pub(crate) fn wipe_path(node: &str, driver: Option<&str>) -> String {
    let mut selector = format!("spec.nodeName={node}");
    if let Some(d) = driver {
        selector.push_str(&format!(",spec.driver={d}"));
    }
    format!(
        "/apis/resource.k8s.io/v1/resourceslices?fieldSelector={}",
        encode(&selector)
    )
}

/// Sends the DELETE and returns the HTTP status, or a description of what went wrong.
pub(crate) async fn wipe(link: &ApiServerLink, driver: Option<&str>) -> Result<u16, String> {
    let authority = link
        .url
        .strip_prefix("http://")
        .ok_or_else(|| format!("API server URL {:?} is not http://", link.url))?
        .trim_end_matches('/');
    let path = wipe_path(&link.node_name, driver);
    let exchange = async {
        let mut stream = TcpStream::connect(authority).await?;
        let request = format!(
            "DELETE {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: drakit-e2e-kubelet-sim\r\nAccept: application/json\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        Ok::<_, std::io::Error>(response)
    };
    let response = tokio::time::timeout(Duration::from_secs(30), exchange)
        .await
        .map_err(|_| format!("DELETE {path}: no answer within 30s"))?
        .map_err(|e| format!("DELETE {path}: {e}"))?;
    let status_line = response.split(|b| *b == b'\n').next().unwrap_or_default();
    String::from_utf8_lossy(status_line)
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("DELETE {path}: malformed response"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(
            wipe_path("node-1", Some("net.drakit.dev")),
            "/apis/resource.k8s.io/v1/resourceslices?fieldSelector=spec.nodeName%3Dnode-1%2Cspec.driver%3Dnet.drakit.dev"
        );
        assert_eq!(
            wipe_path("node-1", None),
            "/apis/resource.k8s.io/v1/resourceslices?fieldSelector=spec.nodeName%3Dnode-1"
        );
    }
}
