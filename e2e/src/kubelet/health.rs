//! The DRAResourceHealth stream (NodeWatchResources), v1alpha1 or v1, collected into a list.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use drakit_proto::health::{v1, v1alpha1};
use futures::StreamExt;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

use super::{HealthVersion, KubeletError, RegisteredPlugin};
use crate::wait::Changes;

/// A device's health as the plugin reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Unknown,
    Healthy,
    Unhealthy,
    /// A value outside the enum (kept, not guessed at).
    Other(i32),
}

impl Health {
    fn from_wire(v: i32) -> Self {
        match v {
            0 => Self::Unknown,
            1 => Self::Healthy,
            2 => Self::Unhealthy,
            other => Self::Other(other),
        }
    }
}

/// One entry of a NodeWatchResourcesResponse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceHealthReport {
    /// Empty when the plugin left `device` unset.
    pub pool_name: String,
    pub device_name: String,
    pub health: Health,
    pub last_updated_time: i64,
    pub health_check_timeout_seconds: i64,
    pub message: String,
}

/// One NodeWatchResourcesResponse and when it arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthUpdate {
    pub received: SystemTime,
    pub devices: Vec<DeviceHealthReport>,
}

#[derive(Debug, Default)]
struct Collected {
    updates: Vec<HealthUpdate>,
    /// Set once the stream ends: `Ok` for a clean end, `Err` with the status otherwise.
    ended: Option<Result<(), String>>,
}

#[derive(Debug, Default)]
struct Inner {
    collected: Mutex<Collected>,
    changes: Changes,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Collected> {
        self.collected.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// An open health stream; dropping it cancels the stream.
#[derive(Debug)]
pub struct HealthWatch {
    driver: String,
    inner: Arc<Inner>,
    reader: JoinHandle<()>,
}

impl Drop for HealthWatch {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl HealthWatch {
    /// Every update received so far, oldest first.
    pub fn updates(&self) -> Vec<HealthUpdate> {
        self.inner.lock().updates.clone()
    }

    /// `None` while the stream is open; then `Ok(())` for a clean end or `Err(status text)`.
    pub fn ended(&self) -> Option<Result<(), String>> {
        self.inner.lock().ended.clone()
    }

    /// Waits until at least `count` updates have arrived and returns them all.
    pub async fn wait_for_updates(
        &self,
        count: usize,
        timeout: Duration,
    ) -> Result<Vec<HealthUpdate>, KubeletError> {
        self.inner
            .changes
            .wait_for(timeout, || {
                let c = self.inner.lock();
                (c.updates.len() >= count).then(|| c.updates.clone())
            })
            .await
            .ok_or_else(|| KubeletError::WaitTimeout {
                what: format!("{count} health updates from {}", self.driver),
                after: timeout,
            })
    }

    /// Waits for the first update (past or future) that `matches` accepts.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        mut matches: impl FnMut(&HealthUpdate) -> bool,
    ) -> Result<HealthUpdate, KubeletError> {
        self.inner
            .changes
            .wait_for(timeout, || {
                self.inner
                    .lock()
                    .updates
                    .iter()
                    .find(|u| matches(u))
                    .cloned()
            })
            .await
            .ok_or_else(|| KubeletError::WaitTimeout {
                what: format!("a matching health update from {}", self.driver),
                after: timeout,
            })
    }
}

fn report(
    device: Option<(String, String)>,
    health: i32,
    last_updated_time: i64,
    health_check_timeout_seconds: i64,
    message: String,
) -> DeviceHealthReport {
    let (pool_name, device_name) = device.unwrap_or_default();
    DeviceHealthReport {
        pool_name,
        device_name,
        health: Health::from_wire(health),
        last_updated_time,
        health_check_timeout_seconds,
        message,
    }
}

pub(super) async fn open(
    plugin: &RegisteredPlugin,
    channel: Channel,
    version: HealthVersion,
    timeout: Duration,
) -> Result<HealthWatch, KubeletError> {
    const METHOD: &str = "NodeWatchResources";
    let rpc_err = |status: tonic::Status| KubeletError::Rpc {
        driver: plugin.driver.clone(),
        endpoint: plugin.endpoint.clone(),
        method: METHOD,
        status: Box::new(status),
    };
    let timed_out = || KubeletError::Timeout {
        driver: plugin.driver.clone(),
        method: METHOD,
        after: timeout,
    };
    // Both versions are mapped onto one stream of version-neutral updates.
    let stream: futures::stream::BoxStream<
        'static,
        Result<Vec<DeviceHealthReport>, tonic::Status>,
    > = match version {
        HealthVersion::V1alpha1 => {
            let mut client =
                v1alpha1::dra_resource_health_client::DraResourceHealthClient::new(channel);
            let call = client.node_watch_resources(v1alpha1::NodeWatchResourcesRequest {});
            let stream = tokio::time::timeout(timeout, call)
                .await
                .map_err(|_| timed_out())?
                .map_err(rpc_err)?
                .into_inner();
            stream
                .map(|r| {
                    r.map(|resp| {
                        resp.devices
                            .into_iter()
                            .map(|d| {
                                report(
                                    d.device.map(|i| (i.pool_name, i.device_name)),
                                    d.health,
                                    d.last_updated_time,
                                    d.health_check_timeout_seconds,
                                    d.message,
                                )
                            })
                            .collect()
                    })
                })
                .boxed()
        }
        HealthVersion::V1 => {
            let mut client = v1::dra_resource_health_client::DraResourceHealthClient::new(channel);
            let call = client.node_watch_resources(v1::NodeWatchResourcesRequest {});
            let stream = tokio::time::timeout(timeout, call)
                .await
                .map_err(|_| timed_out())?
                .map_err(rpc_err)?
                .into_inner();
            stream
                .map(|r| {
                    r.map(|resp| {
                        resp.devices
                            .into_iter()
                            .map(|d| {
                                report(
                                    d.device.map(|i| (i.pool_name, i.device_name)),
                                    d.health,
                                    d.last_updated_time,
                                    d.health_check_timeout_seconds,
                                    d.message,
                                )
                            })
                            .collect()
                    })
                })
                .boxed()
        }
    };
    let inner = Arc::new(Inner::default());
    let reader = tokio::spawn(collect(stream, inner.clone()));
    Ok(HealthWatch {
        driver: plugin.driver.clone(),
        inner,
        reader,
    })
}

async fn collect(
    mut stream: futures::stream::BoxStream<'static, Result<Vec<DeviceHealthReport>, tonic::Status>>,
    inner: Arc<Inner>,
) {
    let end = loop {
        match stream.next().await {
            Some(Ok(devices)) => {
                inner.lock().updates.push(HealthUpdate {
                    received: SystemTime::now(),
                    devices,
                });
                inner.changes.bump();
            }
            Some(Err(status)) => break Err(status.to_string()),
            None => break Ok(()),
        }
    };
    inner.lock().ended = Some(end);
    inner.changes.bump();
}
