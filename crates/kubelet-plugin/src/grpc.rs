//! The kubelet-facing gRPC services: plugin registration, DRA v1 + v1beta1, DRA health
//! v1alpha1 + v1. Thin adapters: the work is in [`crate::driver::Driver`].

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use drakit_proto::dra::{v1, v1beta1};
use drakit_proto::health::{v1 as hv1, v1alpha1 as hv1alpha1};
use drakit_proto::pluginregistration as reg;
use futures::Stream;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

use crate::claims::ClaimRef;
use crate::driver::{DeviceHealth, Driver};

/// What the kubelet told us about a registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrationOutcome {
    pub driver: String,
    pub registered: bool,
    pub error: String,
}

/// `pluginregistration.Registration` for one driver.
#[derive(Debug, Clone)]
pub struct RegistrationService {
    pub driver: String,
    pub endpoint: String,
    pub outcomes: mpsc::UnboundedSender<RegistrationOutcome>,
    /// Set once the kubelet has asked for `GetInfo` (of any driver).
    pub asked: Arc<tokio::sync::watch::Sender<bool>>,
}

#[tonic::async_trait]
impl reg::registration_server::Registration for RegistrationService {
    async fn get_info(
        &self,
        _: Request<reg::InfoRequest>,
    ) -> Result<Response<reg::PluginInfo>, Status> {
        self.asked.send_if_modified(|a| !std::mem::replace(a, true));
        Ok(Response::new(reg::PluginInfo {
            r#type: reg::DRA_PLUGIN_TYPE.to_owned(),
            name: self.driver.clone(),
            endpoint: self.endpoint.clone(),
            supported_versions: vec![
                v1::SUPPORTED_VERSION.to_owned(),
                v1beta1::SUPPORTED_VERSION.to_owned(),
            ],
        }))
    }

    async fn notify_registration_status(
        &self,
        req: Request<reg::RegistrationStatus>,
    ) -> Result<Response<reg::RegistrationStatusResponse>, Status> {
        let s = req.into_inner();
        if s.plugin_registered {
            tracing::info!(driver = %self.driver, "registered with the kubelet");
        } else {
            tracing::error!(driver = %self.driver, error = %s.error, "the kubelet rejected the registration");
        }
        let _ = self.outcomes.send(RegistrationOutcome {
            driver: self.driver.clone(),
            registered: s.plugin_registered,
            error: s.error,
        });
        Ok(Response::new(reg::RegistrationStatusResponse {}))
    }
}

/// DRA v1 and v1beta1 for one driver.
#[derive(Debug, Clone)]
pub struct DraService {
    pub driver: Arc<Driver>,
}

fn refs<'a>(claims: impl Iterator<Item = (&'a str, &'a str, &'a str)>) -> Vec<ClaimRef> {
    claims
        .map(|(ns, name, uid)| ClaimRef {
            namespace: ns.to_owned(),
            name: name.to_owned(),
            uid: uid.to_owned(),
        })
        .collect()
}

#[tonic::async_trait]
impl v1::dra_plugin_server::DraPlugin for DraService {
    async fn node_prepare_resources(
        &self,
        req: Request<v1::NodePrepareResourcesRequest>,
    ) -> Result<Response<v1::NodePrepareResourcesResponse>, Status> {
        let r = req.into_inner();
        let claims = refs(
            r.claims
                .iter()
                .map(|c| (c.namespace.as_str(), c.name.as_str(), c.uid.as_str())),
        );
        let results = self.driver.prepare(&claims).await;
        let mut out = HashMap::with_capacity(results.len());
        for (uid, res) in results {
            let resp = match res {
                Ok(devs) => v1::NodePrepareResourceResponse {
                    devices: devs
                        .into_iter()
                        .map(|d| v1::Device {
                            request_names: d.requests,
                            pool_name: d.pool,
                            device_name: d.device,
                            cdi_device_ids: d.cdi_device_ids,
                            share_id: d.share_id,
                        })
                        .collect(),
                    error: String::new(),
                },
                Err(e) => v1::NodePrepareResourceResponse {
                    devices: Vec::new(),
                    error: e,
                },
            };
            out.insert(uid, resp);
        }
        Ok(Response::new(v1::NodePrepareResourcesResponse {
            claims: out,
        }))
    }

    async fn node_unprepare_resources(
        &self,
        req: Request<v1::NodeUnprepareResourcesRequest>,
    ) -> Result<Response<v1::NodeUnprepareResourcesResponse>, Status> {
        let r = req.into_inner();
        let claims = refs(
            r.claims
                .iter()
                .map(|c| (c.namespace.as_str(), c.name.as_str(), c.uid.as_str())),
        );
        let results = self.driver.unprepare(&claims).await;
        let claims = results
            .into_iter()
            .map(|(uid, r)| {
                (
                    uid,
                    v1::NodeUnprepareResourceResponse {
                        error: r.err().unwrap_or_default(),
                    },
                )
            })
            .collect();
        Ok(Response::new(v1::NodeUnprepareResourcesResponse { claims }))
    }
}

#[tonic::async_trait]
impl v1beta1::dra_plugin_server::DraPlugin for DraService {
    async fn node_prepare_resources(
        &self,
        req: Request<v1beta1::NodePrepareResourcesRequest>,
    ) -> Result<Response<v1beta1::NodePrepareResourcesResponse>, Status> {
        let r = req.into_inner();
        let claims = refs(
            r.claims
                .iter()
                .map(|c| (c.namespace.as_str(), c.name.as_str(), c.uid.as_str())),
        );
        let results = self.driver.prepare(&claims).await;
        let mut out = HashMap::with_capacity(results.len());
        for (uid, res) in results {
            let resp = match res {
                Ok(devs) => v1beta1::NodePrepareResourceResponse {
                    devices: devs
                        .into_iter()
                        .map(|d| v1beta1::Device {
                            request_names: d.requests,
                            pool_name: d.pool,
                            device_name: d.device,
                            cdi_device_ids: d.cdi_device_ids,
                        })
                        .collect(),
                    error: String::new(),
                },
                Err(e) => v1beta1::NodePrepareResourceResponse {
                    devices: Vec::new(),
                    error: e,
                },
            };
            out.insert(uid, resp);
        }
        Ok(Response::new(v1beta1::NodePrepareResourcesResponse {
            claims: out,
        }))
    }

    async fn node_unprepare_resources(
        &self,
        req: Request<v1beta1::NodeUnprepareResourcesRequest>,
    ) -> Result<Response<v1beta1::NodeUnprepareResourcesResponse>, Status> {
        let r = req.into_inner();
        let claims = refs(
            r.claims
                .iter()
                .map(|c| (c.namespace.as_str(), c.name.as_str(), c.uid.as_str())),
        );
        let results = self.driver.unprepare(&claims).await;
        let claims = results
            .into_iter()
            .map(|(uid, r)| {
                (
                    uid,
                    v1beta1::NodeUnprepareResourceResponse {
                        error: r.err().unwrap_or_default(),
                    },
                )
            })
            .collect();
        Ok(Response::new(v1beta1::NodeUnprepareResourcesResponse {
            claims,
        }))
    }
}

/// DRA health (v1alpha1 and v1) for one driver: the full list on connect, on every change and
/// every `resend` interval.
#[derive(Debug, Clone)]
pub struct HealthService {
    pub driver: Arc<Driver>,
    pub resend: Duration,
    /// Turns true at shutdown: open streams end, so the server's graceful drain does not wait
    /// for the kubelet to hang up.
    pub stop: tokio::sync::watch::Receiver<bool>,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

fn health_stream<T: Send + 'static>(
    svc: &HealthService,
    convert: fn(&[DeviceHealth], i64) -> T,
) -> BoxStream<T> {
    let mut rx = svc.driver.health();
    let mut stop = svc.stop.clone();
    let resend = svc.resend;
    let timeout = resend.as_secs().max(1) as i64 * 3;
    let s = async_stream(move |tx: mpsc::Sender<Result<T, Status>>| async move {
        let mut tick = tokio::time::interval(resend);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let list = rx.borrow_and_update().clone();
            if tx.send(Ok(convert(&list, timeout))).await.is_err() {
                return;
            }
            tokio::select! {
                changed = rx.changed() => if changed.is_err() { return },
                _ = tick.tick() => {}
                () = tx.closed() => return,
                _ = stop.wait_for(|v| *v) => return,
            }
        }
    });
    Box::pin(s)
}

/// A channel-backed stream fed by a spawned task (no extra crate).
fn async_stream<T: Send + 'static, F, Fut>(f: F) -> tokio_stream::wrappers::ReceiverStream<T>
where
    F: FnOnce(mpsc::Sender<T>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(f(tx));
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

fn to_v1alpha1(list: &[DeviceHealth], timeout: i64) -> hv1alpha1::NodeWatchResourcesResponse {
    hv1alpha1::NodeWatchResourcesResponse {
        devices: list
            .iter()
            .map(|d| hv1alpha1::DeviceHealth {
                device: Some(hv1alpha1::DeviceIdentifier {
                    pool_name: d.pool.clone(),
                    device_name: d.device.clone(),
                }),
                health: d.health as i32,
                last_updated_time: d.updated,
                health_check_timeout_seconds: timeout,
                message: d.message.clone(),
            })
            .collect(),
    }
}

fn to_v1(list: &[DeviceHealth], timeout: i64) -> hv1::NodeWatchResourcesResponse {
    hv1::NodeWatchResourcesResponse {
        devices: list
            .iter()
            .map(|d| hv1::DeviceHealth {
                device: Some(hv1::DeviceIdentifier {
                    pool_name: d.pool.clone(),
                    device_name: d.device.clone(),
                }),
                health: d.health as i32,
                last_updated_time: d.updated,
                health_check_timeout_seconds: timeout,
                message: d.message.clone(),
            })
            .collect(),
    }
}

#[tonic::async_trait]
impl hv1alpha1::dra_resource_health_server::DraResourceHealth for HealthService {
    type NodeWatchResourcesStream = BoxStream<hv1alpha1::NodeWatchResourcesResponse>;
    async fn node_watch_resources(
        &self,
        _: Request<hv1alpha1::NodeWatchResourcesRequest>,
    ) -> Result<Response<Self::NodeWatchResourcesStream>, Status> {
        Ok(Response::new(health_stream(self, to_v1alpha1)))
    }
}

#[tonic::async_trait]
impl hv1::dra_resource_health_server::DraResourceHealth for HealthService {
    type NodeWatchResourcesStream = BoxStream<hv1::NodeWatchResourcesResponse>;
    async fn node_watch_resources(
        &self,
        _: Request<hv1::NodeWatchResourcesRequest>,
    ) -> Result<Response<Self::NodeWatchResourcesStream>, Status> {
        Ok(Response::new(health_stream(self, to_v1)))
    }
}
