//! One scenario per reconcile path, against the tower-test mock of the API
//! server and a real control plane whose state is checked after each step.

use super::*;
use crate::fixtures::{context, mock_client, ApiServer, ControlPlane};
use http::{Method, StatusCode};
use serde_json::{json, Value};

const NS: &str = "sdwan";
const SITE_PATH: &str = "/apis/patronus.io/v1/namespaces/sdwan/sites/us-east";
const PEER_PATH: &str = "/apis/patronus.io/v1/namespaces/sdwan/peers/aws-vpc";
const POLICY_PATH: &str = "/apis/patronus.io/v1/namespaces/sdwan/policies/video";

fn site_json(generation: i64, region: &str, finalizer: bool) -> Value {
    let mut site = json!({
        "apiVersion": "patronus.io/v1", "kind": "Site",
        "metadata": {
            "name": "us-east", "namespace": NS, "uid": "uid-site-1",
            "generation": generation, "resourceVersion": "10",
            "labels": {"tier": "production"}
        },
        "spec": {
            "siteId": "us-east-1", "region": region,
            "tunnelEndpoint": {"address": "203.0.113.10", "port": 51820}
        }
    });
    if finalizer {
        site["metadata"]["finalizers"] = json!([FINALIZER]);
    }
    site
}

fn peer_json() -> Value {
    json!({
        "apiVersion": "patronus.io/v1", "kind": "Peer",
        "metadata": {
            "name": "aws-vpc", "namespace": NS, "uid": "uid-peer-1",
            "generation": 1, "finalizers": [FINALIZER]
        },
        "spec": {
            "siteId": "us-east-1",
            "endpoint": {"address": "198.51.100.7", "port": 51820},
            "wireguard": {"publicKey": "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo="},
            "compression": true, "bfdEnabled": false,
            "endpoints": [
                {"name": "inet", "address": "198.51.100.7", "port": 51820},
                {"name": "lte", "address": "203.0.113.9", "port": 51820}
            ],
            "slaProbes": true
        }
    })
}

fn policy_json(category: &str) -> Value {
    json!({
        "apiVersion": "patronus.io/v1", "kind": "Policy",
        "metadata": {
            "name": "video", "namespace": NS, "uid": "uid-policy-1",
            "generation": 3, "finalizers": [FINALIZER]
        },
        "spec": {
            "siteSelector": {"matchLabels": {"tier": "production"}},
            "rules": [{
                "action": "route", "priority": 100,
                "conditions": [{"type": "category", "value": category}],
                "pathSelection": {"strategy": "lowest-latency", "thresholds": {"maxLatencyMs": 80.0}},
                "qosClass": "Streaming"
            }]
        }
    })
}

fn obj<K: DeserializeOwned>(v: &Value) -> Arc<K> {
    Arc::new(serde_json::from_value(v.clone()).unwrap())
}

/// The Site controller's cache, holding `sites`.
fn sites_known(sites: &[Value]) -> Store<Site> {
    let mut writer = kube::runtime::reflector::store::Writer::<Site>::default();
    for site in sites {
        writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(
            serde_json::from_value(site.clone()).unwrap(),
        ));
    }
    writer.as_reader()
}

async fn cp_site(cp: &mut controlplane::Client) -> Option<pb::Site> {
    <pb::Site as Mirror>::get(cp, "us-east").await.unwrap()
}

/// A reconcile of the Site once its key exists: the key Secret read (and
/// answered with `secret`), then its ConfigMap and Deployment applied.
async fn existing_key_then_workload(api: &mut ApiServer, secret: Value) {
    api.expect(
        Method::GET,
        "/api/v1/namespaces/sdwan/secrets/us-east-wireguard",
        StatusCode::OK,
        move |_| secret,
    )
    .await;
    api.echo(Method::PATCH, "/api/v1/namespaces/sdwan/configmaps/")
        .await;
    api.echo(Method::PATCH, "/apis/apps/v1/namespaces/sdwan/deployments/")
        .await;
}

#[tokio::test]
async fn a_new_object_gets_the_finalizer_before_anything_else() {
    let plane = ControlPlane::start();
    let (client, mut api) = mock_client();
    let ctx = context(client, plane.client());
    let site = site_json(1, "us-east-1", false);
    let server = tokio::spawn(async move {
        let with_finalizer = {
            let mut s = site_json(1, "us-east-1", true);
            s["metadata"]["resourceVersion"] = json!("11");
            s
        };
        let seen = api
            .expect(Method::PATCH, SITE_PATH, StatusCode::OK, move |_| {
                with_finalizer
            })
            .await;
        assert!(seen.body.to_string().contains(FINALIZER), "{}", seen.body);
        api.quiet().await;
    });
    let action = reconcile_site(obj(&site), ctx).await.unwrap();
    server.await.unwrap();
    // The patch itself triggers the next reconcile.
    assert_eq!(action, Action::await_change());
    assert!(
        cp_site(&mut plane.client()).await.is_none(),
        "nothing written yet"
    );
}

#[tokio::test]
async fn a_site_is_created_deployed_and_given_status_then_updated_then_left_alone() {
    let plane = ControlPlane::start();
    let (client, mut api) = mock_client();
    let ctx = context(client, plane.client());
    let mut cp = plane.client();

    // Create.
    let site = site_json(1, "us-east-1", true);
    let answer = site.clone();
    let server = tokio::spawn(async move {
        assert_eq!(api.event(NS).await, "Created");
        api.not_found("/api/v1/namespaces/sdwan/secrets/us-east-wireguard")
            .await;
        let secret = api
            .echo(Method::POST, "/api/v1/namespaces/sdwan/secrets?")
            .await;
        let config = api
            .echo(
                Method::PATCH,
                "/api/v1/namespaces/sdwan/configmaps/us-east-dataplane?",
            )
            .await;
        let deployment = api
            .echo(
                Method::PATCH,
                "/apis/apps/v1/namespaces/sdwan/deployments/us-east-dataplane?",
            )
            .await;
        let status = api.status_patch(SITE_PATH, &answer).await;
        (api, secret, config, deployment, status)
    });
    let action = reconcile_site(obj(&site), ctx.clone()).await.unwrap();
    let (mut api, secret, config, deployment, status) = server.await.unwrap();
    assert_eq!(action, Action::requeue(RESYNC));

    let copy = cp_site(&mut cp)
        .await
        .expect("the control plane has the site");
    let meta = copy.metadata.clone().unwrap();
    assert_eq!(meta.external_id, "kubernetes:uid-site-1:1");
    assert_eq!(
        meta.labels.get("tier").map(String::as_str),
        Some("production")
    );
    let spec = copy.spec.clone().unwrap();
    assert_eq!(spec.site_id, "us-east-1");
    assert_eq!(spec.tunnel_endpoint.unwrap().port, 51820);

    // The key was generated into an owned Secret; only its public half is published.
    assert_eq!(
        secret.body["metadata"]["ownerReferences"][0]["uid"],
        "uid-site-1"
    );
    let key_b64 = secret.body["data"]["private-key"].as_str().unwrap();
    assert_eq!(status["publicKey"].as_str().unwrap().len(), 44);
    assert!(!status.to_string().contains(key_b64));
    assert_eq!(status["phase"], "Pending", "no data plane has reported yet");
    assert_eq!(status["tunnelsUp"], 0);

    // Server-side apply, forced, by the operator's field manager.
    for seen in [&config, &deployment] {
        assert!(
            seen.uri.contains("fieldManager=patronus-operator"),
            "{}",
            seen.uri
        );
        assert!(seen.uri.contains("force=true"), "{}", seen.uri);
    }
    assert!(config.body["data"]["dataplane.toml"]
        .as_str()
        .unwrap()
        .contains("site_id = \"us-east-1\""));
    assert_eq!(deployment.body["kind"], "Deployment");
    assert_eq!(
        deployment.body["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
            ["hugepages-2Mi"],
        "1Gi"
    );

    // Update: a new region, generation 2.
    let mut updated = site_json(2, "us-east-2", true);
    updated["status"] = status.clone();
    let version_before = meta.resource_version;
    let secret_answer = secret.body.clone();
    let server = tokio::spawn(async move {
        assert_eq!(api.event(NS).await, "Updated");
        existing_key_then_workload(&mut api, secret_answer).await;
        // Same key, same phase: no status patch.
        api.quiet().await;
        api
    });
    reconcile_site(obj(&updated), ctx.clone()).await.unwrap();
    let mut api = server.await.unwrap();
    let copy = cp_site(&mut cp).await.unwrap();
    let meta = copy.metadata.unwrap();
    assert_eq!(copy.spec.unwrap().region, "us-east-2");
    assert_eq!(meta.external_id, "kubernetes:uid-site-1:2");
    assert!(meta.resource_version > version_before);

    // Unchanged: nothing written to the control plane, no Event.
    let version_before = meta.resource_version;
    let secret_answer = secret.body.clone();
    let server = tokio::spawn(async move {
        existing_key_then_workload(&mut api, secret_answer).await;
        api.quiet().await;
    });
    reconcile_site(obj(&updated), ctx.clone()).await.unwrap();
    server.await.unwrap();
    let meta = cp_site(&mut cp).await.unwrap().metadata.unwrap();
    assert_eq!(
        meta.resource_version, version_before,
        "an idempotent reconcile writes nothing"
    );
}

#[tokio::test]
async fn a_peers_status_is_patched_from_the_control_planes_view() {
    let plane = ControlPlane::start();
    let (client, mut api) = mock_client();
    let ctx = context(client, plane.client());
    ctx.know_sites(sites_known(&[site_json(1, "us-east-1", true)]));
    let peer = peer_json();
    let answer = peer.clone();
    let server = tokio::spawn(async move {
        assert_eq!(api.event(NS).await, "Created");
        let status = api.status_patch(PEER_PATH, &answer).await;
        api.quiet().await;
        status
    });
    reconcile_peer(obj(&peer), ctx).await.unwrap();
    let status = server.await.unwrap();
    assert_eq!(
        status,
        json!({"connected": false}),
        "not measured: no figures rather than zeros"
    );
    let copy = <pb::Peer as Mirror>::get(&mut plane.client(), "aws-vpc")
        .await
        .unwrap()
        .unwrap();
    let spec = copy.spec.unwrap();
    assert!(spec.compression && !spec.bfd_enabled && spec.sla_probes);
    assert_eq!(spec.endpoint.unwrap().address, "198.51.100.7");
    let names: Vec<&str> = spec.endpoints.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["inet", "lte"]);
}

#[tokio::test]
async fn a_policys_status_lists_its_sites_with_a_ready_condition() {
    let plane = ControlPlane::start();
    let mut cp = plane.client();
    // A labelled site for the selector to find.
    let site: Site = serde_json::from_value(site_json(1, "us-east-1", true)).unwrap();
    <pb::Site as Mirror>::create(&mut cp, controlplane::site(&site).unwrap())
        .await
        .unwrap();
    let (client, mut api) = mock_client();
    let ctx = context(client, plane.client());
    let policy = policy_json("Video");
    let answer = policy.clone();
    let server = tokio::spawn(async move {
        assert_eq!(api.event(NS).await, "Created");
        api.status_patch(POLICY_PATH, &answer).await
    });
    reconcile_policy(obj(&policy), ctx).await.unwrap();
    let status = server.await.unwrap();
    assert_eq!(status["selectedSites"], json!(["us-east-1"]));
    assert_eq!(status["observedGeneration"], 3);
    let ready = &status["conditions"][0];
    assert_eq!(ready["type"], "Ready");
    assert_eq!(ready["status"], "True");
    assert_eq!(ready["reason"], "Synced");
    assert_eq!(ready["observedGeneration"], 3);
    let copy = <pb::Policy as Mirror>::get(&mut cp, "video")
        .await
        .unwrap()
        .unwrap();
    let rule = &copy.spec.unwrap().rules[0];
    assert_eq!(rule.action, pb::RuleAction::Route as i32);
    assert_eq!(rule.qos_class, pb::QosClass::Streaming as i32);
    let ps = rule.path_selection.unwrap();
    assert_eq!(ps.strategy, pb::PathSelectionStrategy::LowestLatency as i32);
    assert_eq!(ps.thresholds.unwrap().max_latency_ms, 80.0);
}

#[tokio::test]
async fn a_refused_policy_says_why_in_its_condition_and_backs_off() {
    let plane = ControlPlane::start();
    let (client, mut api) = mock_client();
    let ctx = context(client, plane.client());
    // The schema lets any word through; the control plane knows the ten categories.
    let policy = policy_json("Streaming");
    let answer = policy.clone();
    let server = tokio::spawn(async move {
        let status = api.status_patch(POLICY_PATH, &answer).await;
        assert_eq!(api.event(NS).await, "ReconcileFailed");
        api.quiet().await;
        status
    });
    let policy = obj::<Policy>(&policy);
    let err = reconcile_policy(policy.clone(), ctx.clone())
        .await
        .unwrap_err();
    let status = server.await.unwrap();
    let ready = &status["conditions"][0];
    assert_eq!(ready["status"], "False");
    assert_eq!(ready["reason"], "SyncFailed");
    assert!(
        ready["message"]
            .as_str()
            .unwrap()
            .contains("conditions[0].value"),
        "the message names the field: {ready}"
    );
    assert!(<pb::Policy as Mirror>::get(&mut plane.client(), "video")
        .await
        .unwrap()
        .is_none());

    // Exponential backoff per object, counted by reason.
    let waits: Vec<Action> = (0..4)
        .map(|_| error_policy(policy.clone(), &err, ctx.clone()))
        .collect();
    assert_eq!(
        waits,
        [1, 2, 4, 8].map(|s| Action::requeue(Duration::from_secs(s)))
    );
    assert_eq!(
        ctx.metrics
            .errors("policy", "controlplane_invalid_argument"),
        4
    );
    for _ in 0..20 {
        error_policy(policy.clone(), &err, ctx.clone());
    }
    assert_eq!(
        error_policy(policy.clone(), &err, ctx.clone()),
        Action::requeue(BACKOFF_MAX)
    );
    // Success resets it.
    ctx.succeeded(&key(policy.as_ref()));
    assert_eq!(ctx.retry_after(&key(policy.as_ref())), BACKOFF_MIN);
}

#[tokio::test]
async fn an_unreachable_control_plane_is_an_error_that_backs_off() {
    let plane = ControlPlane::start();
    let cp = plane.client();
    drop(plane); // killed
    let (client, mut api) = mock_client();
    let ctx = context(client, cp);
    ctx.know_sites(sites_known(&[site_json(1, "us-east-1", true)]));
    let peer = obj::<Peer>(&peer_json());
    let server = tokio::spawn(async move {
        assert_eq!(api.event(NS).await, "ReconcileFailed");
        api.quiet().await;
    });
    let err = reconcile_peer(peer.clone(), ctx.clone()).await.unwrap_err();
    server.await.unwrap();
    assert_eq!(err.reason(), "controlplane_unavailable");
    assert_eq!(
        error_policy(peer.clone(), &err, ctx.clone()),
        Action::requeue(Duration::from_secs(1))
    );
    assert_eq!(
        error_policy(peer, &err, ctx.clone()),
        Action::requeue(Duration::from_secs(2))
    );
}

#[tokio::test]
async fn deletion_removes_the_copy_then_the_finalizer() {
    let plane = ControlPlane::start();
    let mut cp = plane.client();
    let site: Site = serde_json::from_value(site_json(1, "us-east-1", true)).unwrap();
    <pb::Site as Mirror>::create(&mut cp, controlplane::site(&site).unwrap())
        .await
        .unwrap();
    let mut deleting = site_json(1, "us-east-1", true);
    deleting["metadata"]["deletionTimestamp"] = json!("2026-12-01T12:00:00Z");
    released_after(obj(&deleting), plane.client(), "Deleted").await;
    assert!(cp_site(&mut cp).await.is_none(), "the copy is gone");
}

/// The Site being deleted since 2026-12-01, whose control plane is gone.
fn deleting_site_without_a_control_plane(skip: bool) -> (Arc<Site>, controlplane::Client) {
    let plane = ControlPlane::start();
    let cp = plane.client();
    drop(plane); // killed
    let mut deleting = site_json(1, "us-east-1", true);
    deleting["metadata"]["deletionTimestamp"] = json!("2026-12-01T12:00:00Z");
    if skip {
        deleting["metadata"]["annotations"] = json!({SKIP_CLEANUP_ANNOTATION: "true"});
    }
    (obj(&deleting), cp)
}

/// The API server sees `event` and then the patch that drops the finalizer.
async fn finalizer_released_after(api: &mut ApiServer, event: &str) {
    assert_eq!(api.event(NS).await, event);
    let seen = api
        .expect(Method::PATCH, SITE_PATH, StatusCode::OK, |_| {
            let mut gone = site_json(1, "us-east-1", false);
            gone["metadata"]["deletionTimestamp"] = json!("2026-12-01T12:00:00Z");
            gone
        })
        .await;
    assert!(seen.body.to_string().contains("remove"), "{}", seen.body);
    api.quiet().await;
}

/// Reconciles the deleting `site` with the control plane `cp`: it succeeds,
/// and the API server sees `event` and the finalizer's release.
async fn released_after(site: Arc<Site>, cp: controlplane::Client, event: &'static str) {
    let (client, mut api) = mock_client();
    let ctx = context(client, cp);
    let server = tokio::spawn(async move {
        finalizer_released_after(&mut api, event).await;
    });
    reconcile_site(site, ctx).await.unwrap();
    server.await.unwrap();
}

#[tokio::test]
async fn the_skip_annotation_lets_a_deletion_go_without_the_control_plane() {
    let (site, cp) = deleting_site_without_a_control_plane(true);
    released_after(site, cp, "CleanupSkipped").await;
}

#[tokio::test]
async fn a_cleanup_the_control_plane_cannot_serve_is_retried_until_the_timeout_then_abandoned() {
    // Within the timeout: an error, retried with backoff; the finalizer stays.
    let (site, cp) = deleting_site_without_a_control_plane(false);
    let (client, mut api) = mock_client();
    let patient = Arc::new(
        Arc::try_unwrap(context(client, cp.clone()))
            .ok()
            .unwrap()
            .with_cleanup_timeout(Duration::from_secs(100 * 365 * 86_400)),
    );
    let server = tokio::spawn(async move {
        assert_eq!(api.event(NS).await, "ReconcileFailed");
        api.quiet().await;
    });
    let err = reconcile_site(site.clone(), patient).await.unwrap_err();
    server.await.unwrap();
    assert_eq!(err.reason(), "controlplane_unavailable");

    // Five days after the deletion, the default ten minutes are long past.
    released_after(site, cp, "CleanupAbandoned").await;
}

#[tokio::test]
async fn a_copy_managed_by_another_owner_is_never_overwritten_or_deleted() {
    let plane = ControlPlane::start();
    let mut cp = plane.client();
    // Made by hand (patronusctl): no external id.
    let site: Site = serde_json::from_value(site_json(1, "eu-west-1", true)).unwrap();
    let mut by_hand = controlplane::site(&site).unwrap();
    by_hand.metadata.as_mut().unwrap().external_id.clear();
    <pb::Site as Mirror>::create(&mut cp, by_hand)
        .await
        .unwrap();

    let (client, mut api) = mock_client();
    let ctx = context(client, plane.client());
    let site = site_json(1, "us-east-1", true);
    let server = tokio::spawn(async move {
        assert_eq!(api.event(NS).await, "ReconcileFailed");
        api
    });
    let err = reconcile_site(obj(&site), ctx.clone()).await.unwrap_err();
    let mut api = server.await.unwrap();
    assert_eq!(err.reason(), "not_ours");
    assert!(err.to_string().contains("managed by"), "{err}");
    assert_eq!(
        cp_site(&mut cp).await.unwrap().spec.unwrap().region,
        "eu-west-1",
        "untouched"
    );

    // Deleting the object lets it go but leaves the copy.
    let mut deleting = site;
    deleting["metadata"]["deletionTimestamp"] = json!("2026-12-01T12:00:00Z");
    let server = tokio::spawn(async move {
        assert_eq!(api.event(NS).await, "NotOurs");
        let seen = api
            .expect(Method::PATCH, SITE_PATH, StatusCode::OK, |_| {
                site_json(1, "us-east-1", false)
            })
            .await;
        assert!(seen.body.to_string().contains("remove"), "{}", seen.body);
    });
    reconcile_site(obj(&deleting), ctx).await.unwrap();
    server.await.unwrap();
    assert!(cp_site(&mut cp).await.is_some());
}

#[tokio::test]
async fn a_malformed_annotation_fails_before_anything_is_written() {
    let plane = ControlPlane::start();
    let (client, mut api) = mock_client();
    let ctx = context(client, plane.client());
    let mut site = site_json(1, "us-east-1", true);
    site["metadata"]["annotations"] = json!({"patronus.io/dataplane-cpus": "half"});
    let server = tokio::spawn(async move {
        assert_eq!(api.event(NS).await, "ReconcileFailed");
        api.quiet().await;
    });
    let err = reconcile_site(obj(&site), ctx).await.unwrap_err();
    server.await.unwrap();
    assert!(
        err.to_string().contains("patronus.io/dataplane-cpus"),
        "{err}"
    );
    assert!(cp_site(&mut plane.client()).await.is_none());
}

#[tokio::test]
async fn the_event_feed_names_the_objects_to_requeue() {
    let plane = ControlPlane::start();
    let (tx, mut rx) = mpsc::unbounded();
    let feed = tokio::spawn(follow_events(plane.client(), vec![tx]));
    let site: Site = serde_json::from_value(site_json(1, "us-east-1", true)).unwrap();
    <pb::Site as Mirror>::create(&mut plane.client(), controlplane::site(&site).unwrap())
        .await
        .unwrap();
    let change = tokio::time::timeout(Duration::from_secs(10), rx.next())
        .await
        .expect("the feed delivers the change")
        .unwrap();
    assert_eq!(change.kind, "site");
    assert_eq!(change.name, "us-east");
    assert!(change.concerns_site(&site));

    let peer: Peer = serde_json::from_value(peer_json()).unwrap();
    let mut other: Peer = peer.clone();
    other.spec.site_id = "eu-west-1".into();
    let tunnel = Change {
        site_id: "us-east-1".into(),
        ..Change::default()
    };
    assert!(tunnel.concerns_peer(&peer) && !tunnel.concerns_peer(&other));
    assert!(tunnel.concerns_site(&site));
    let policy: Policy = serde_json::from_value(policy_json("Video")).unwrap();
    assert!(
        change.concerns_policy(&policy),
        "a site change may change selections"
    );
    assert!(!tunnel.concerns_policy(&policy));
    let lost = Change {
        lost: true,
        ..Change::default()
    };
    assert!(lost.concerns_peer(&other) && lost.concerns_policy(&policy));

    drop(rx);
    // The feed ends once no controller listens (at the next event).
    <pb::Site as Mirror>::delete(&mut plane.client(), "us-east", 0)
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), feed)
        .await
        .expect("the feed stops")
        .unwrap();
}

#[tokio::test]
async fn the_running_controllers_reconcile_what_they_list_and_requeue_on_the_event_feed() {
    let plane = ControlPlane::start();
    let (client, mut api) = mock_client();
    let ctx = context(client, plane.client());
    let controllers = tokio::spawn(async move { run(ctx, None).await });
    let (patched, mut patches) = futures::channel::mpsc::unbounded::<String>();
    // The API server: lists return the one Site (peers, policies and
    // deployments none), watches stay open and quiet, the finalizer patch
    // is answered and reported.
    let server = tokio::spawn(async move {
        let mut watches = Vec::new();
        while let Some((seen, _, pending)) = api.next().await {
            let path = seen.uri.split('?').next().unwrap_or_default().to_owned();
            if seen.method == Method::GET && seen.uri.contains("watch=true") {
                watches.push(pending);
                continue;
            }
            let list = |kind: &str, api_version: &str, items: Vec<Value>| {
                json!({"apiVersion": api_version, "kind": kind,
                       "metadata": {"resourceVersion": "1"}, "items": items})
            };
            let answer = match (seen.method.clone(), path.as_str()) {
                (Method::GET, "/apis/patronus.io/v1/sites") => list(
                    "SiteList",
                    "patronus.io/v1",
                    vec![site_json(1, "us-east-1", false)],
                ),
                (Method::GET, "/apis/patronus.io/v1/peers") => {
                    list("PeerList", "patronus.io/v1", vec![])
                }
                (Method::GET, "/apis/patronus.io/v1/policies") => {
                    list("PolicyList", "patronus.io/v1", vec![])
                }
                (Method::GET, "/apis/apps/v1/deployments") => {
                    list("DeploymentList", "apps/v1", vec![])
                }
                (Method::PATCH, SITE_PATH) => {
                    let _ = patched.unbounded_send(seen.body.to_string());
                    site_json(1, "us-east-1", true)
                }
                _ => panic!("unexpected {} {}", seen.method, seen.uri),
            };
            pending.send(StatusCode::OK, &answer);
        }
        drop(watches);
    });
    let first = tokio::time::timeout(Duration::from_secs(15), patches.next())
        .await
        .expect("the listed Site is reconciled");
    assert!(first.unwrap().contains(FINALIZER));

    // Nothing changes in Kubernetes (the watches stay quiet); the control
    // plane announces a peer of the site, and the Site is looked at again.
    let peer: Peer = serde_json::from_value(peer_json()).unwrap();
    <pb::Peer as Mirror>::create(&mut plane.client(), controlplane::peer(&peer).unwrap())
        .await
        .unwrap();
    let again = tokio::time::timeout(Duration::from_secs(15), patches.next())
        .await
        .expect("the event feed requeues the Site");
    assert!(again.unwrap().contains(FINALIZER));

    controllers.abort();
    let _ = controllers.await;
    server.abort();
}

#[tokio::test]
async fn a_peer_reaches_only_a_site_of_its_namespace_or_one_that_accepts_it() {
    let plane = ControlPlane::start();
    let (client, mut api) = mock_client();
    let ctx = context(client, plane.client());
    let mut elsewhere = site_json(1, "us-east-1", true);
    elsewhere["metadata"]["namespace"] = json!("tenant-b");
    ctx.know_sites(sites_known(&[elsewhere.clone()]));
    let server = tokio::spawn(async move {
        assert_eq!(api.event(NS).await, "ReconcileFailed");
        api.quiet().await;
    });
    let err = reconcile_peer(obj(&peer_json()), ctx.clone())
        .await
        .unwrap_err();
    server.await.unwrap();
    let message = err.to_string();
    assert!(
        message.contains("spec.siteId") && message.contains("accept-from"),
        "{message}"
    );
    assert!(
        <pb::Peer as Mirror>::get(&mut plane.client(), "aws-vpc")
            .await
            .unwrap()
            .is_none(),
        "nothing reached the control plane"
    );

    // The other tenant's Site accepts this namespace: the Peer goes through.
    let (client, mut api) = mock_client();
    let ctx = context(client, plane.client());
    elsewhere["metadata"]["annotations"] =
        json!({ controlplane::ACCEPT_FROM_ANNOTATION: format!("other, {NS}") });
    ctx.know_sites(sites_known(&[elsewhere]));
    let peer = peer_json();
    let answer = peer.clone();
    let server = tokio::spawn(async move {
        assert_eq!(api.event(NS).await, "Created");
        api.status_patch(PEER_PATH, &answer).await;
        api.quiet().await;
    });
    reconcile_peer(obj(&peer), ctx).await.unwrap();
    server.await.unwrap();
}

#[test]
fn a_policy_selects_only_sites_that_accept_its_namespace() {
    let policy: Policy = serde_json::from_value(policy_json("Video")).unwrap();
    let selector = controlplane::policy(&policy)
        .unwrap()
        .spec
        .unwrap()
        .site_selector
        .unwrap()
        .match_labels;
    assert_eq!(
        selector
            .get("patronus.io/from-namespace.sdwan")
            .map(String::as_str),
        Some("true")
    );
    let own: Site = serde_json::from_value(site_json(1, "us-east-1", true)).unwrap();
    let mut other = site_json(1, "us-east-1", true);
    other["metadata"]["namespace"] = json!("tenant-b");
    let foreign: Site = serde_json::from_value(other.clone()).unwrap();
    other["metadata"]["annotations"] = json!({ controlplane::ACCEPT_FROM_ANNOTATION: NS });
    let accepting: Site = serde_json::from_value(other).unwrap();
    let selects = |site: &Site| {
        let labels = controlplane::site(site).unwrap().metadata.unwrap().labels;
        selector.iter().all(|(k, v)| labels.get(k) == Some(v))
    };
    assert!(selects(&own));
    assert!(
        !selects(&foreign),
        "another namespace's site is not selected"
    );
    assert!(selects(&accepting));
}

#[test]
fn a_peers_status_lists_its_paths_with_their_bfd_sessions() {
    let path = |id: &str, bfd: pb::BfdState| pb::PeerPathStatus {
        path_id: id.into(),
        active: bfd == pb::BfdState::Up,
        up: bfd != pb::BfdState::Down,
        bfd: bfd as i32,
    };
    let view = pb::PeerStatus {
        connected: true,
        latency_ms: Some(12.5),
        packet_loss: Some(0.0),
        paths: vec![
            path("us-east-1:inet->aws-vpc", pb::BfdState::Up),
            path("us-east-1:lte->aws-vpc", pb::BfdState::Down),
            path("us-east-1:mpls->aws-vpc", pb::BfdState::Unspecified),
        ],
    };
    let status = serde_json::to_value(peer_status(&view)).unwrap();
    assert_eq!(
        status["paths"],
        json!([
            {"pathId": "us-east-1:inet->aws-vpc", "active": true, "up": true, "bfd": "Up"},
            {"pathId": "us-east-1:lte->aws-vpc", "active": false, "up": false, "bfd": "Down"},
            {"pathId": "us-east-1:mpls->aws-vpc", "active": false, "up": true}
        ])
    );
}
