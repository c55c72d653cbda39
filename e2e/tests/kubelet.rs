//! The kubelet simulator against a fake plugin on real unix sockets in a temp dir.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{FakeOptions, FakePlugin};
use drakit_e2e::kubelet::{
    ClaimRef, DraVersion, Health, HealthVersion, KubeletError, KubeletSim, KubeletSimConfig,
    RegistrationEvent,
};

const DRIVER: &str = "net.drakit.dev";
const WAIT: Duration = Duration::from_secs(20);

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    fn registry(&self) -> std::path::PathBuf {
        self.dir.path().join("plugins_registry")
    }
    fn plugins(&self) -> std::path::PathBuf {
        self.dir.path().join("plugins")
    }
    async fn kubelet(&self) -> KubeletSim {
        KubeletSim::start(KubeletSimConfig::new(self.registry()))
            .await
            .unwrap()
    }
    async fn plugin(&self, opts: FakeOptions) -> FakePlugin {
        FakePlugin::start(&self.registry(), &self.plugins(), opts).await
    }
}

#[tokio::test]
async fn registration_handshake() {
    let env = Env::new();
    let kubelet = env.kubelet().await;
    let plugin = env.plugin(FakeOptions::new(DRIVER)).await;

    let reg = kubelet.wait_for_driver(DRIVER, WAIT).await.unwrap();
    assert_eq!(reg.driver, DRIVER);
    assert_eq!(reg.version, DraVersion::V1);
    assert_eq!(reg.endpoint, plugin.endpoint);
    assert_eq!(reg.registration_socket, plugin.registration_socket);
    assert_eq!(
        reg.supported_versions,
        vec!["v1.DRAPlugin".to_owned(), "v1beta1.DRAPlugin".to_owned()]
    );
    // The plugin hears of it once registered.
    let n = plugin.notification().await;
    assert!(n.plugin_registered, "{n:?}");
    assert!(n.error.is_empty());
    assert_eq!(kubelet.registered().len(), 1);
}

#[tokio::test]
async fn version_negotiation_takes_first_supported() {
    let env = Env::new();
    let kubelet = env.kubelet().await;
    let _a = env
        .plugin(FakeOptions::new("a.drakit.dev").versions(&["v1beta1.DRAPlugin", "v1.DRAPlugin"]))
        .await;
    let _b = env
        .plugin(FakeOptions::new("b.drakit.dev").versions(&["1.0.0", "v1.DRAPlugin"]))
        .await;
    let a = kubelet.wait_for_driver("a.drakit.dev", WAIT).await.unwrap();
    let b = kubelet.wait_for_driver("b.drakit.dev", WAIT).await.unwrap();
    assert_eq!(a.version, DraVersion::V1beta1);
    assert_eq!(b.version, DraVersion::V1);

    // A kubelet that only speaks v1beta1 (1.32/1.33) picks v1beta1 from a plugin listing v1 first.
    let env2 = Env::new();
    let mut config = KubeletSimConfig::new(env2.registry());
    config.supported_versions = vec![DraVersion::V1beta1];
    let old_kubelet = KubeletSim::start(config).await.unwrap();
    let _c = env2.plugin(FakeOptions::new(DRIVER)).await;
    let c = old_kubelet.wait_for_driver(DRIVER, WAIT).await.unwrap();
    assert_eq!(c.version, DraVersion::V1beta1);
}

#[tokio::test]
async fn rejections_are_notified_and_not_registered() {
    let env = Env::new();
    let kubelet = env.kubelet().await;

    let bad_version = env
        .plugin(FakeOptions::new("v2.drakit.dev").versions(&["v2.DRAPlugin"]))
        .await;
    let mut wrong_type = FakeOptions::new("csi.drakit.dev");
    wrong_type.plugin_type = "CSIPlugin".to_owned();
    let wrong_type = env.plugin(wrong_type).await;
    let mut no_endpoint = FakeOptions::new("gone.drakit.dev");
    no_endpoint.endpoint_override = Some("/nonexistent/drakit-e2e/dra.sock".to_owned());
    let no_endpoint = env.plugin(no_endpoint).await;

    let err = kubelet
        .wait_for_rejection("v2.drakit.dev-reg.sock", WAIT)
        .await
        .unwrap();
    assert!(err.contains("none of the supported versions"), "{err}");
    let err = kubelet
        .wait_for_rejection("csi.drakit.dev-reg.sock", WAIT)
        .await
        .unwrap();
    assert!(err.contains("CSIPlugin"), "{err}");
    let err = kubelet
        .wait_for_rejection("gone.drakit.dev-reg.sock", WAIT)
        .await
        .unwrap();
    assert!(err.contains("/nonexistent/drakit-e2e/dra.sock"), "{err}");

    assert!(kubelet.registered().is_empty());
    for p in [&bad_version, &wrong_type, &no_endpoint] {
        let n = p.notification().await;
        assert!(!n.plugin_registered, "{}: {n:?}", p.driver);
        assert!(!n.error.is_empty());
    }
    assert!(matches!(
        kubelet.prepare("v2.drakit.dev", &[]).await,
        Err(KubeletError::NotRegistered { .. })
    ));
}

#[tokio::test]
async fn hidden_sockets_are_ignored() {
    let env = Env::new();
    let mut hidden = FakeOptions::new("hidden.drakit.dev");
    hidden.registration_name = ".hidden-reg.sock".to_owned();
    let _hidden = env.plugin(hidden).await;
    // Created after the hidden one: any scan that sees it has seen the hidden one too.
    let _visible = env.plugin(FakeOptions::new(DRIVER)).await;
    let kubelet = env.kubelet().await;
    kubelet.wait_for_driver(DRIVER, WAIT).await.unwrap();
    assert!(kubelet.driver("hidden.drakit.dev").is_none());
    assert!(
        kubelet
            .events()
            .iter()
            .all(|e| !format!("{e:?}").contains("hidden")),
        "{:?}",
        kubelet.events()
    );
}

fn claims() -> Vec<ClaimRef> {
    vec![
        ClaimRef::new("default", "good", "uid-good"),
        ClaimRef::new("default", "bad-config", "uid-bad"),
        ClaimRef::new("ns2", "shared-nic", "uid-shared"),
    ]
}

#[tokio::test]
async fn prepare_and_unprepare_over_both_versions() {
    let env = Env::new();
    let kubelet = env.kubelet().await;
    let plugin = env.plugin(FakeOptions::new(DRIVER)).await;
    kubelet.wait_for_driver(DRIVER, WAIT).await.unwrap();

    for version in [None, Some(DraVersion::V1), Some(DraVersion::V1beta1)] {
        let results = kubelet
            .prepare_with(DRIVER, &claims(), version)
            .await
            .unwrap();
        assert_eq!(results.len(), 3, "{version:?}");
        let good = results["uid-good"].as_ref().unwrap();
        assert_eq!(good.len(), 1);
        assert_eq!(good[0].device_name, "dev-good");
        assert_eq!(good[0].pool_name, "pool-1");
        assert_eq!(good[0].request_names, vec!["req".to_owned()]);
        assert_eq!(
            good[0].cdi_device_ids,
            vec!["drakit.dev/fake=uid-good".to_owned()]
        );
        let err = results["uid-bad"].as_ref().unwrap_err();
        assert!(err.contains("refused"), "{err}");
        let shared = results["uid-shared"].as_ref().unwrap();
        match version {
            Some(DraVersion::V1beta1) => assert_eq!(shared[0].share_id, None),
            _ => assert_eq!(shared[0].share_id.as_deref(), Some("share-uid-shared")),
        }

        let un = kubelet
            .unprepare_with(DRIVER, &claims(), version)
            .await
            .unwrap();
        assert_eq!(un["uid-good"], Ok(()));
        assert!(un["uid-bad"].is_err());
        assert_eq!(un["uid-shared"], Ok(()));
    }
    let calls: Vec<_> = plugin
        .seen()
        .calls
        .iter()
        .map(|(v, m, _)| (*v, *m))
        .collect();
    assert_eq!(
        calls,
        vec![
            ("v1", "prepare"),
            ("v1", "unprepare"),
            ("v1", "prepare"),
            ("v1", "unprepare"),
            ("v1beta1", "prepare"),
            ("v1beta1", "unprepare"),
        ]
    );
    assert_eq!(
        plugin.seen().calls[0].2,
        vec![
            "good".to_owned(),
            "bad-config".to_owned(),
            "shared-nic".to_owned()
        ]
    );
}

#[tokio::test]
async fn claims_left_out_of_a_response_are_errors() {
    let env = Env::new();
    let kubelet = env.kubelet().await;
    let _p = env.plugin(FakeOptions::new(DRIVER)).await;
    kubelet.wait_for_driver(DRIVER, WAIT).await.unwrap();
    let claims = [
        ClaimRef::new("default", "good", "uid-good"),
        ClaimRef::new("default", "omitted", "uid-omitted"),
    ];
    for version in [DraVersion::V1, DraVersion::V1beta1] {
        let r = kubelet
            .prepare_with(DRIVER, &claims, Some(version))
            .await
            .unwrap();
        assert!(r["uid-good"].is_ok());
        let err = r["uid-omitted"].as_ref().unwrap_err();
        assert!(
            err.contains("NodePrepareResources left out claim default/omitted"),
            "{err}"
        );
        let u = kubelet
            .unprepare_with(DRIVER, &claims, Some(version))
            .await
            .unwrap();
        assert!(u["uid-good"].is_ok());
        assert!(
            u["uid-omitted"]
                .as_ref()
                .unwrap_err()
                .contains("NodeUnprepareResources left out")
        );
    }
}

#[tokio::test]
async fn version_not_advertised_is_refused() {
    let env = Env::new();
    let kubelet = env.kubelet().await;
    let _p = env
        .plugin(FakeOptions::new(DRIVER).versions(&["v1beta1.DRAPlugin"]))
        .await;
    kubelet.wait_for_driver(DRIVER, WAIT).await.unwrap();
    let err = kubelet
        .prepare_with(DRIVER, &claims(), Some(DraVersion::V1))
        .await
        .unwrap_err();
    assert!(
        matches!(err, KubeletError::VersionUnavailable { .. }),
        "{err}"
    );
    // The negotiated one works.
    let ok = kubelet.prepare(DRIVER, &claims()).await.unwrap();
    assert_eq!(ok.len(), 3);
}

#[tokio::test]
async fn calls_carry_the_deadline() {
    let env = Env::new();
    let mut config = KubeletSimConfig::new(env.registry());
    config.call_timeout = Duration::from_millis(300);
    let kubelet = KubeletSim::start(config).await.unwrap();
    let _p = env.plugin(FakeOptions::new(DRIVER)).await;
    kubelet.wait_for_driver(DRIVER, WAIT).await.unwrap();
    let err = kubelet
        .prepare(
            DRIVER,
            &[ClaimRef::new("default", "slow-claim", "uid-slow")],
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            KubeletError::Timeout {
                method: "NodePrepareResources",
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn removing_the_socket_deregisters() {
    let env = Env::new();
    let kubelet = env.kubelet().await;
    let mut plugin = env.plugin(FakeOptions::new(DRIVER)).await;
    kubelet.wait_for_driver(DRIVER, WAIT).await.unwrap();
    plugin.remove_registration();
    kubelet.wait_for_driver_gone(DRIVER, WAIT).await.unwrap();
    assert!(
        kubelet
            .events()
            .iter()
            .any(|e| matches!(e, RegistrationEvent::Deregistered(p) if p.driver == DRIVER))
    );
    assert!(matches!(
        kubelet.prepare(DRIVER, &claims()).await,
        Err(KubeletError::NotRegistered { .. })
    ));
}

#[tokio::test]
async fn newest_instance_wins_during_a_rolling_update() {
    let env = Env::new();
    let kubelet = env.kubelet().await;
    let mut old = FakeOptions::new(DRIVER);
    old.registration_name = format!("{DRIVER}-pod-old-reg.sock");
    old.endpoint_name = "dra-pod-old.sock".to_owned();
    let old = env.plugin(old).await;
    let first = kubelet.wait_for_driver(DRIVER, WAIT).await.unwrap();
    assert_eq!(first.endpoint, old.endpoint);

    let mut new = FakeOptions::new(DRIVER);
    new.registration_name = format!("{DRIVER}-pod-new-reg.sock");
    new.endpoint_name = "dra-pod-new.sock".to_owned();
    let mut new = env.plugin(new).await;
    let new_endpoint = new.endpoint.clone();
    kubelet
        .wait_for_event(
            WAIT,
            |e| matches!(e, RegistrationEvent::Registered(p) if p.endpoint == new_endpoint),
        )
        .await
        .unwrap();
    assert_eq!(kubelet.driver(DRIVER).unwrap().endpoint, new.endpoint);
    kubelet.prepare(DRIVER, &claims()).await.unwrap();
    assert_eq!(new.seen().calls.len(), 1);
    assert_eq!(old.seen().calls.len(), 0);

    // The new pod goes away: calls fall back to the old instance.
    new.stop_endpoint();
    new.remove_registration();
    let old_endpoint = old.endpoint.clone();
    kubelet
        .wait_for_event(
            WAIT,
            |e| matches!(e, RegistrationEvent::Deregistered(p) if p.endpoint != old_endpoint),
        )
        .await
        .unwrap();
    assert_eq!(kubelet.driver(DRIVER).unwrap().endpoint, old.endpoint);
    kubelet.prepare(DRIVER, &claims()).await.unwrap();
    assert_eq!(old.seen().calls.len(), 1);
}

#[tokio::test]
async fn health_streams_over_both_versions() {
    let env = Env::new();
    let kubelet = env.kubelet().await;
    let plugin = env.plugin(FakeOptions::new(DRIVER)).await;
    kubelet.wait_for_driver(DRIVER, WAIT).await.unwrap();

    let alpha = kubelet
        .watch_health(DRIVER, HealthVersion::V1alpha1)
        .await
        .unwrap();
    let v1 = kubelet
        .watch_health(DRIVER, HealthVersion::V1)
        .await
        .unwrap();
    assert_eq!(
        plugin.send_health(&[("pool-1", "eth1", 1), ("pool-1", "eth2", 2)]),
        2
    );
    assert_eq!(plugin.send_health(&[("pool-1", "eth2", 1)]), 2);

    let got = alpha.wait_for_updates(2, WAIT).await.unwrap();
    assert_eq!(got[0].devices.len(), 2);
    assert_eq!(got[0].devices[0].device_name, "eth1");
    assert_eq!(got[0].devices[0].health, Health::Healthy);
    assert_eq!(got[0].devices[1].health, Health::Unhealthy);
    assert_eq!(got[0].devices[0].health_check_timeout_seconds, 30);
    assert_eq!(got[1].devices[0].health, Health::Healthy);

    let got = v1
        .wait_for(WAIT, |u| {
            u.devices
                .iter()
                .any(|d| d.device_name == "eth2" && d.health == Health::Healthy)
        })
        .await
        .unwrap();
    assert_eq!(got.devices[0].message, "fake v1");
    assert!(v1.ended().is_none());
}

fn test_slice(
    name: &str,
    node: &str,
    driver: &str,
) -> k8s_openapi::api::resource::v1::ResourceSlice {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceSlice",
        "metadata": { "name": name },
        "spec": {
            "driver": driver, "nodeName": node,
            "pool": { "name": node, "generation": 1, "resourceSliceCount": 1 },
            "devices": [{ "name": "dev0" }]
        }
    }))
    .unwrap()
}

fn slice_names(api: &drakit_e2e::apiserver::ApiServerSim) -> Vec<String> {
    api.slices()
        .into_iter()
        .map(|s| s.metadata.name.unwrap())
        .collect()
}

#[tokio::test]
async fn kubelet_wipes_node_slices_at_start_and_after_a_driver_leaves() {
    use drakit_e2e::apiserver::ApiServerSim;
    use drakit_e2e::kubelet::ApiServerLink;

    let api = ApiServerSim::start().await.unwrap();
    api.insert_slice(&test_slice("n1-net", "node-1", DRIVER))
        .unwrap();
    api.insert_slice(&test_slice("n1-cpu", "node-1", "cpu.drakit.dev"))
        .unwrap();
    api.insert_slice(&test_slice("n2-net", "node-2", DRIVER))
        .unwrap();

    let env = Env::new();
    let mut config = KubeletSimConfig::new(env.registry());
    let mut link = ApiServerLink::new(api.url(), "node-1");
    link.wipe_delay = Duration::from_millis(50);
    config.api_server = Some(link);
    let kubelet = KubeletSim::start(config).await.unwrap();

    // At start: every slice of node-1 goes, node-2's stays.
    let ev = kubelet
        .wait_for_event(WAIT, |e| {
            matches!(e, RegistrationEvent::SlicesWiped { driver: None, .. })
        })
        .await
        .unwrap();
    assert_eq!(
        ev,
        RegistrationEvent::SlicesWiped {
            driver: None,
            result: Ok(200)
        }
    );
    assert_eq!(slice_names(&api), ["n2-net"]);
    let wipe = &api.requests_matching("DELETE", "/resourceslices")[0];
    assert_eq!(wipe.param("fieldSelector"), Some("spec.nodeName=node-1"));

    // The plugin publishes, then its last instance leaves: its slices go after the delay,
    // the other driver's stay.
    let mut plugin = env.plugin(FakeOptions::new(DRIVER)).await;
    kubelet.wait_for_driver(DRIVER, WAIT).await.unwrap();
    api.insert_slice(&test_slice("n1-net", "node-1", DRIVER))
        .unwrap();
    api.insert_slice(&test_slice("n1-cpu", "node-1", "cpu.drakit.dev"))
        .unwrap();
    plugin.remove_registration();
    let ev = kubelet
        .wait_for_event(
            WAIT,
            |e| matches!(e, RegistrationEvent::SlicesWiped { driver: Some(d), .. } if d == DRIVER),
        )
        .await
        .unwrap();
    assert!(
        matches!(
            ev,
            RegistrationEvent::SlicesWiped {
                result: Ok(200),
                ..
            }
        ),
        "{ev:?}"
    );
    assert_eq!(slice_names(&api), ["n1-cpu", "n2-net"]);
    let wipes = api.requests_matching("DELETE", "/resourceslices");
    assert_eq!(
        wipes[1].param("fieldSelector"),
        Some(format!("spec.nodeName=node-1,spec.driver={DRIVER}").as_str())
    );
}

#[tokio::test]
async fn a_socket_that_does_not_answer_yet_is_retried() {
    let env = Env::new();
    let mut config = KubeletSimConfig::new(env.registry());
    config.registration_timeout = Duration::from_millis(200);
    let kubelet = KubeletSim::start(config).await.unwrap();

    // The registration socket exists (bound, not accepting) before the plugin serves on it.
    let endpoint_dir = env.plugins().join(DRIVER);
    std::fs::create_dir_all(&endpoint_dir).unwrap();
    let plugin = env
        .plugin({
            let mut o = FakeOptions::new(DRIVER);
            // The fake's own registration socket gets another name; the test serves the real one.
            o.registration_name = ".fake-reg.sock".to_owned();
            o
        })
        .await;
    let reg_path = env.registry().join(format!("{DRIVER}-reg.sock"));
    let std_listener = std::os::unix::net::UnixListener::bind(&reg_path).unwrap();
    kubelet
        .wait_for_event(WAIT, |e| matches!(e, RegistrationEvent::Failed { registration_socket, .. } if *registration_socket == reg_path))
        .await
        .unwrap();
    assert!(kubelet.driver(DRIVER).is_none());

    // Now serve registration on that very socket (same inode): the retry registers it.
    std_listener.set_nonblocking(true).unwrap();
    let listener = tokio::net::UnixListener::from_std(std_listener).unwrap();
    let endpoint = plugin.endpoint.display().to_string();
    let router = tonic::transport::Server::builder().add_service(
        drakit_proto::pluginregistration::registration_server::RegistrationServer::new(Forward {
            endpoint,
        }),
    );
    let server = tokio::spawn(
        router.serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener)),
    );
    let reg = kubelet.wait_for_driver(DRIVER, WAIT).await.unwrap();
    assert_eq!(reg.registration_socket, reg_path);
    server.abort();
}

/// A registration service that advertises `endpoint`.
struct Forward {
    endpoint: String,
}

#[tonic::async_trait]
impl drakit_proto::pluginregistration::registration_server::Registration for Forward {
    async fn get_info(
        &self,
        _: tonic::Request<drakit_proto::pluginregistration::InfoRequest>,
    ) -> Result<tonic::Response<drakit_proto::pluginregistration::PluginInfo>, tonic::Status> {
        Ok(tonic::Response::new(
            drakit_proto::pluginregistration::PluginInfo {
                r#type: "DRAPlugin".to_owned(),
                name: DRIVER.to_owned(),
                endpoint: self.endpoint.clone(),
                supported_versions: vec!["v1.DRAPlugin".to_owned()],
            },
        ))
    }

    async fn notify_registration_status(
        &self,
        _: tonic::Request<drakit_proto::pluginregistration::RegistrationStatus>,
    ) -> Result<
        tonic::Response<drakit_proto::pluginregistration::RegistrationStatusResponse>,
        tonic::Status,
    > {
        Ok(tonic::Response::new(
            drakit_proto::pluginregistration::RegistrationStatusResponse {},
        ))
    }
}

#[tokio::test]
async fn re_registering_within_the_delay_cancels_the_wipe() {
    use drakit_e2e::apiserver::ApiServerSim;
    use drakit_e2e::kubelet::ApiServerLink;
    const CLOCK: &str = "clock.drakit.dev";

    let api = ApiServerSim::start().await.unwrap();
    let env = Env::new();
    let mut config = KubeletSimConfig::new(env.registry());
    let mut link = ApiServerLink::new(api.url(), "node-1");
    link.wipe_delay = Duration::from_secs(1);
    config.api_server = Some(link);
    let kubelet = KubeletSim::start(config).await.unwrap();

    let mut first = env.plugin(FakeOptions::new(DRIVER)).await;
    let mut clock = env.plugin(FakeOptions::new(CLOCK)).await;
    kubelet.wait_for_driver(DRIVER, WAIT).await.unwrap();
    kubelet.wait_for_driver(CLOCK, WAIT).await.unwrap();

    // DRIVER leaves first, then CLOCK: CLOCK's wipe is due after DRIVER's would be.
    first.stop_endpoint();
    first.remove_registration();
    kubelet.wait_for_driver_gone(DRIVER, WAIT).await.unwrap();
    clock.remove_registration();
    kubelet.wait_for_driver_gone(CLOCK, WAIT).await.unwrap();
    // DRIVER is back well within the delay: its wipe is off.
    let _second = env.plugin(FakeOptions::new(DRIVER)).await;
    kubelet.wait_for_driver(DRIVER, WAIT).await.unwrap();
    api.insert_slice(&test_slice("n1-net", "node-1", DRIVER))
        .unwrap();

    kubelet
        .wait_for_event(
            WAIT,
            |e| matches!(e, RegistrationEvent::SlicesWiped { driver: Some(d), .. } if d == CLOCK),
        )
        .await
        .unwrap();
    let driver_wipes = kubelet
        .events()
        .into_iter()
        .filter(
            |e| matches!(e, RegistrationEvent::SlicesWiped { driver: Some(d), .. } if d == DRIVER),
        )
        .count();
    assert_eq!(driver_wipes, 0, "{:?}", kubelet.events());
    assert_eq!(slice_names(&api), ["n1-net"]);
}
