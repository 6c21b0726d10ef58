//! The public API end to end over real gRPC: an in-process server on a
//! loopback port with a real database file (or etcd, see `common::on_etcd`),
//! and tonic's generated client.

mod common;

use std::sync::Arc;

use patronus_controlplane::auth::BearerToken;
use patronus_proto::v1::control_plane_client::ControlPlaneClient;
use patronus_proto::v1::*;
use prost::Message as _;
use tokio::sync::oneshot;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};
use tonic_types::StatusExt;

struct Server {
    addr: std::net::SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    dir: tempfile::TempDir,
}

impl Server {
    async fn start(token: Option<&str>) -> Server {
        let dir = tempfile::tempdir().unwrap();
        Server::start_in(dir, token).await
    }

    async fn start_in(dir: tempfile::TempDir, token: Option<&str>) -> Server {
        let store = Arc::new(common::open_store(&dir.path().join("cp.redb")).await);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let token = token.map(|t| BearerToken::new(t).unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let settings = patronus_controlplane::server::Settings {
                token,
                ..Default::default()
            };
            patronus_controlplane::server::serve(listener, None, store, settings, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        Server {
            addr,
            stop: Some(stop),
            task,
            dir,
        }
    }

    async fn client(&self) -> ControlPlaneClient<Channel> {
        ControlPlaneClient::connect(format!("http://{}", self.addr))
            .await
            .unwrap()
    }

    /// Stops the server and hands back its directory (the database stays).
    async fn stop(mut self) -> tempfile::TempDir {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap();
        self.dir
    }
}

fn site(name: &str, site_id: &str) -> Site {
    Site {
        metadata: Some(ObjectMeta {
            name: name.into(),
            labels: [("env".to_owned(), "prod".to_owned())].into(),
            ..Default::default()
        }),
        spec: Some(SiteSpec {
            site_id: site_id.into(),
            display_name: "Headquarters".into(),
            region: "us-east-1".into(),
            tunnel_endpoint: Some(Endpoint {
                address: "203.0.113.10".into(),
                port: 51820,
            }),
            peers: vec![SitePeer {
                site_id: "branch-1".into(),
                address: "198.51.100.7".into(),
            }],
            uplinks: vec![SiteUplink {
                name: "mpls".into(),
                rate_mbps: Some(50.0),
                cost_per_gb: Some(0.5),
                ..Default::default()
            }],
            qos_classes: Some(SiteQosClasses {
                real_time: Some(SiteQosClass {
                    limit_percent: Some(20),
                    dscp: Some(46),
                    ..Default::default()
                }),
                bulk: Some(SiteQosClass {
                    weight: Some(5),
                    min_percent: Some(10),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        }),
        status: None,
    }
}

/// The class settings of a site made by [`site`].
fn qos(s: &mut Site) -> &mut SiteQosClasses {
    s.spec.as_mut().unwrap().qos_classes.as_mut().unwrap()
}

/// Metadata a client writes: a name.
fn named(name: &str) -> Option<ObjectMeta> {
    Some(ObjectMeta {
        name: name.into(),
        ..Default::default()
    })
}

fn peer(name: &str) -> Peer {
    Peer {
        metadata: named(name),
        spec: Some(PeerSpec {
            site_id: "hq".into(),
            endpoint: Some(Endpoint {
                address: "aws-gw.example.com".into(),
                port: 51820,
            }),
            wireguard: Some(WireGuard {
                public_key: "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=".into(),
            }),
            compression: true,
            bfd_enabled: false,
            endpoints: vec![
                NamedEndpoint {
                    name: "inet".into(),
                    address: "aws-gw.example.com".into(),
                    port: 51820,
                },
                NamedEndpoint {
                    name: "lte".into(),
                    address: "203.0.113.7".into(),
                    port: 51820,
                },
            ],
            sla_probes: true,
            rate_mbps: 20.0,
            tunnel_address: String::new(),
            bfd: None,
        }),
        status: None,
    }
}

fn policy(name: &str) -> Policy {
    Policy {
        metadata: named(name),
        spec: Some(PolicySpec {
            site_selector: Some(LabelSelector {
                match_labels: [("env".to_owned(), "prod".to_owned())].into(),
            }),
            rules: vec![PolicyRule {
                action: RuleAction::Route as i32,
                priority: 100,
                conditions: vec![Condition {
                    r#type: ConditionType::Category as i32,
                    value: "Video".into(),
                }],
                path_selection: Some(PathSelection {
                    strategy: PathSelectionStrategy::LowestLatency as i32,
                    thresholds: Some(Thresholds {
                        max_latency_ms: 80.0,
                        ..Default::default()
                    }),
                }),
                duplicate: true,
                qos_class: QosClass::Streaming as i32,
            }],
        }),
        status: None,
    }
}

/// Creates a site that must be accepted; returns it as stored.
async fn create(c: &mut ControlPlaneClient<Channel>, site: Site) -> Site {
    let req = CreateSiteRequest { site: Some(site) };
    c.create_site(req).await.unwrap().into_inner().site.unwrap()
}

/// Updates a site that must be accepted; returns it as stored.
async fn update(c: &mut ControlPlaneClient<Channel>, site: Site) -> Site {
    let req = UpdateSiteRequest { site: Some(site) };
    c.update_site(req).await.unwrap().into_inner().site.unwrap()
}

/// The fields a BadRequest names.
fn violated_fields(status: &Status) -> Vec<String> {
    status
        .get_details_bad_request()
        .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn sites_peers_and_policies_round_trip() {
    let server = Server::start(None).await;
    let mut c = server.client().await;
    let created = create(&mut c, site("hq", "hq")).await;
    let meta = created.metadata.clone().unwrap();
    assert!(meta.resource_version > 0 && meta.generation == 1 && !meta.uid.is_empty());
    assert!(meta.create_time.is_some());
    let got = c
        .get_site(GetSiteRequest { name: "hq".into() })
        .await
        .unwrap()
        .into_inner()
        .site
        .unwrap();
    assert_eq!(got, created);

    // A spec change bumps generation and resource_version; a label change only the version.
    let mut changed = got.clone();
    changed.spec.as_mut().unwrap().region = "eu-west-1".into();
    let updated = update(&mut c, changed).await;
    let m = updated.metadata.clone().unwrap();
    assert_eq!(m.generation, 2);
    assert!(m.resource_version > meta.resource_version);
    assert_eq!(m.uid, meta.uid);
    let mut relabelled = updated.clone();
    relabelled
        .metadata
        .as_mut()
        .unwrap()
        .labels
        .insert("tier".into(), "gold".into());
    let relabelled = update(&mut c, relabelled).await;
    assert_eq!(relabelled.metadata.as_ref().unwrap().generation, 2);

    c.create_peer(CreatePeerRequest {
        peer: Some(peer("aws")),
    })
    .await
    .unwrap();
    c.create_policy(CreatePolicyRequest {
        policy: Some(policy("video")),
    })
    .await
    .unwrap();
    let peers = c
        .list_peers(ListPeersRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(peers.peers.len(), 1);
    assert!(peers.next_page_token.is_empty());
    let policies = c
        .list_policies(ListPoliciesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(policies.policies[0].spec, policy("video").spec);

    c.delete_site(DeleteSiteRequest {
        name: "hq".into(),
        resource_version: 0,
    })
    .await
    .unwrap();
    let gone = c
        .get_site(GetSiteRequest { name: "hq".into() })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    // Its site_id is free again.
    create(&mut c, site("hq2", "hq")).await;
    server.stop().await;
}

#[tokio::test]
async fn two_writers_cannot_overwrite_each_other() {
    let server = Server::start(None).await;
    let mut c = server.client().await;
    let base = create(&mut c, site("hq", "hq")).await;
    let again = c
        .create_site(CreateSiteRequest {
            site: Some(site("hq", "other")),
        })
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::AlreadyExists);
    let same_id = c
        .create_site(CreateSiteRequest {
            site: Some(site("hq-copy", "hq")),
        })
        .await
        .unwrap_err();
    assert_eq!(same_id.code(), Code::AlreadyExists, "site_id is unique");

    let mut first = base.clone();
    first.spec.as_mut().unwrap().display_name = "first".into();
    let mut second = base.clone();
    second.spec.as_mut().unwrap().display_name = "second".into();
    c.update_site(UpdateSiteRequest { site: Some(first) })
        .await
        .unwrap();
    let lost = c
        .update_site(UpdateSiteRequest { site: Some(second) })
        .await
        .unwrap_err();
    assert_eq!(lost.code(), Code::FailedPrecondition, "{lost:?}");
    let stale = c
        .delete_site(DeleteSiteRequest {
            name: "hq".into(),
            resource_version: base.metadata.as_ref().unwrap().resource_version,
        })
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::FailedPrecondition);

    let mut unversioned = base.clone();
    unversioned.metadata.as_mut().unwrap().resource_version = 0;
    let e = c
        .update_site(UpdateSiteRequest {
            site: Some(unversioned),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&e), ["site.metadata.resource_version"]);
    let e = c
        .update_site(UpdateSiteRequest {
            site: Some(site("nobody", "nobody")),
        })
        .await;
    assert!(matches!(
        e.map_err(|s| s.code()),
        Err(Code::InvalidArgument)
    ));
    server.stop().await;
}

#[tokio::test]
async fn invalid_requests_name_every_field() {
    let server = Server::start(None).await;
    let mut c = server.client().await;
    type Edit<T> = fn(&mut T);
    let sites: &[(Edit<Site>, &str)] = &[
        (
            |s| s.metadata.as_mut().unwrap().name = "Bad_Name".into(),
            "site.metadata.name",
        ),
        (|s| s.metadata = None, "site.metadata"),
        (
            |s| {
                s.metadata
                    .as_mut()
                    .unwrap()
                    .labels
                    .insert("k".into(), "spaces are not allowed".into());
            },
            "site.metadata.labels[k]",
        ),
        (|s| s.spec = None, "site.spec"),
        (
            |s| s.spec.as_mut().unwrap().site_id = String::new(),
            "site.spec.site_id",
        ),
        (
            |s| s.spec.as_mut().unwrap().display_name = "x".repeat(300),
            "site.spec.display_name",
        ),
        (
            |s| s.spec.as_mut().unwrap().region = "US East".into(),
            "site.spec.region",
        ),
        (
            |s| s.spec.as_mut().unwrap().tunnel_endpoint = None,
            "site.spec.tunnel_endpoint",
        ),
        (
            |s| {
                s.spec
                    .as_mut()
                    .unwrap()
                    .tunnel_endpoint
                    .as_mut()
                    .unwrap()
                    .address = "not an address".into()
            },
            "site.spec.tunnel_endpoint.address",
        ),
        (
            |s| {
                s.spec
                    .as_mut()
                    .unwrap()
                    .tunnel_endpoint
                    .as_mut()
                    .unwrap()
                    .port = 70000
            },
            "site.spec.tunnel_endpoint.port",
        ),
        (
            |s| s.spec.as_mut().unwrap().peers[0].site_id = "hq".into(),
            "site.spec.peers[0].site_id",
        ),
        (
            |s| s.spec.as_mut().unwrap().peers[0].address = "".into(),
            "site.spec.peers[0].address",
        ),
        (
            |s| s.spec.as_mut().unwrap().uplinks[0].name = "MPLS".into(),
            "site.spec.uplinks[0].name",
        ),
        (
            |s| {
                let uplinks = &mut s.spec.as_mut().unwrap().uplinks;
                uplinks.push(uplinks[0].clone());
            },
            "site.spec.uplinks[1].name",
        ),
        (
            |s| s.spec.as_mut().unwrap().uplinks[0].rate_mbps = Some(0.0),
            "site.spec.uplinks[0].rate_mbps",
        ),
        (
            |s| s.spec.as_mut().unwrap().uplinks[0].burst_bytes = Some(100),
            "site.spec.uplinks[0].burst_bytes",
        ),
        (
            |s| s.spec.as_mut().unwrap().uplinks[0].overhead_bytes = Some(300),
            "site.spec.uplinks[0].overhead_bytes",
        ),
        (
            |s| s.spec.as_mut().unwrap().uplinks[0].cost_per_gb = Some(f64::NAN),
            "site.spec.uplinks[0].cost_per_gb",
        ),
        (
            |s| s.spec.as_mut().unwrap().uplinks[0].color = Some("".into()),
            "site.spec.uplinks[0].color",
        ),
        (
            |s| {
                s.spec.as_mut().unwrap().uplinks[0].bfd = Some(BfdTimers {
                    detect_multiplier: 1,
                    ..BfdTimers::default()
                })
            },
            "site.spec.uplinks[0].bfd.detect_multiplier",
        ),
        (
            |s| qos(s).real_time.as_mut().unwrap().weight = Some(10),
            "site.spec.qos_classes.real_time.weight",
        ),
        (
            |s| qos(s).real_time.as_mut().unwrap().limit_percent = Some(101),
            "site.spec.qos_classes.real_time.limit_percent",
        ),
        (
            |s| qos(s).bulk.as_mut().unwrap().weight = Some(0),
            "site.spec.qos_classes.bulk.weight",
        ),
        (
            |s| qos(s).bulk.as_mut().unwrap().limit_percent = Some(5),
            "site.spec.qos_classes.bulk.min_percent",
        ),
        (
            |s| qos(s).bulk.as_mut().unwrap().queue_packets = Some(0),
            "site.spec.qos_classes.bulk.queue_packets",
        ),
        (
            |s| qos(s).real_time.as_mut().unwrap().dscp = Some(64),
            "site.spec.qos_classes.real_time.dscp",
        ),
        (
            |s| qos(s).bulk.as_mut().unwrap().min_percent = Some(90),
            "site.spec.qos_classes",
        ),
    ];
    for (edit, field) in sites {
        let mut s = site("hq", "hq");
        edit(&mut s);
        let e = c
            .create_site(CreateSiteRequest { site: Some(s) })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{field}");
        assert_eq!(violated_fields(&e), [*field], "{}", e.message());
    }
    let peers: &[(Edit<Peer>, &str)] = &[
        (
            |p| p.spec.as_mut().unwrap().site_id = "-".into(),
            "peer.spec.site_id",
        ),
        (
            |p| p.spec.as_mut().unwrap().endpoint = None,
            "peer.spec.endpoint",
        ),
        (
            |p| p.spec.as_mut().unwrap().endpoint.as_mut().unwrap().port = 0,
            "peer.spec.endpoint.port",
        ),
        (
            |p| p.spec.as_mut().unwrap().wireguard = None,
            "peer.spec.wireguard.public_key",
        ),
        (
            |p| {
                p.spec
                    .as_mut()
                    .unwrap()
                    .wireguard
                    .as_mut()
                    .unwrap()
                    .public_key = "c2hvcnQ=".into()
            },
            "peer.spec.wireguard.public_key",
        ),
        (
            |p| p.spec.as_mut().unwrap().endpoints[1].name = "inet".into(),
            "peer.spec.endpoints[1].name",
        ),
        (
            |p| p.spec.as_mut().unwrap().endpoints[1].port = 0,
            "peer.spec.endpoints[1].port",
        ),
        (
            |p| p.spec.as_mut().unwrap().bfd_enabled = true,
            "peer.spec.tunnel_address",
        ),
        (
            |p| {
                let spec = p.spec.as_mut().unwrap();
                spec.bfd_enabled = true;
                spec.tunnel_address = "fd00:99::2".into();
            },
            "peer.spec.tunnel_address",
        ),
        (
            |p| p.spec.as_mut().unwrap().tunnel_address = "10.255.0.2".into(),
            "peer.spec.tunnel_address",
        ),
        (
            |p| p.spec.as_mut().unwrap().bfd = Some(BfdTimers::default()),
            "peer.spec.bfd",
        ),
        (
            |p| {
                let spec = p.spec.as_mut().unwrap();
                spec.bfd_enabled = true;
                spec.tunnel_address = "10.255.0.2".into();
                spec.bfd = Some(BfdTimers {
                    desired_min_tx_ms: 5,
                    ..BfdTimers::default()
                });
            },
            "peer.spec.bfd.desired_min_tx_ms",
        ),
        (
            |p| {
                let spec = p.spec.as_mut().unwrap();
                spec.bfd_enabled = true;
                spec.tunnel_address = "10.255.0.2".into();
                spec.bfd = Some(BfdTimers {
                    detect_multiplier: 1,
                    ..BfdTimers::default()
                });
            },
            "peer.spec.bfd.detect_multiplier",
        ),
        (
            |p| p.spec.as_mut().unwrap().rate_mbps = 0.001,
            "peer.spec.rate_mbps",
        ),
        (
            |p| p.spec.as_mut().unwrap().rate_mbps = f64::NAN,
            "peer.spec.rate_mbps",
        ),
        (
            |p| p.spec.as_mut().unwrap().endpoints[0].address = "192.0.2.1".into(),
            "peer.spec.endpoint",
        ),
    ];
    for (edit, field) in peers {
        let mut p = peer("aws");
        edit(&mut p);
        let e = c
            .create_peer(CreatePeerRequest { peer: Some(p) })
            .await
            .unwrap_err();
        assert_eq!(violated_fields(&e), [*field], "{}", e.message());
    }
    // BFD with its address and timers is accepted and read back as written.
    let mut bfd = peer("aws-bfd");
    let spec = bfd.spec.as_mut().unwrap();
    spec.bfd_enabled = true;
    spec.tunnel_address = "10.255.0.2".into();
    spec.bfd = Some(BfdTimers {
        desired_min_tx_ms: 100,
        required_min_rx_ms: 100,
        detect_multiplier: 0,
    });
    let created = c
        .create_peer(CreatePeerRequest {
            peer: Some(bfd.clone()),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.peer.unwrap().spec, bfd.spec);
    fn rule(p: &mut Policy) -> &mut PolicyRule {
        &mut p.spec.as_mut().unwrap().rules[0]
    }
    let policies: &[(Edit<Policy>, &str)] = &[
        (
            |p| p.spec.as_mut().unwrap().rules.clear(),
            "policy.spec.rules",
        ),
        (|p| rule(p).action = 0, "policy.spec.rules[0].action"),
        (|p| rule(p).action = 99, "policy.spec.rules[0].action"),
        (
            |p| rule(p).conditions[0].r#type = 0,
            "policy.spec.rules[0].conditions[0].type",
        ),
        (
            |p| rule(p).conditions[0].value = "Streaming".into(),
            "policy.spec.rules[0].conditions[0].value",
        ),
        (
            |p| {
                rule(p).conditions[0].r#type = ConditionType::Protocol as i32;
                rule(p).conditions[0].value = "sctp".into();
            },
            "policy.spec.rules[0].conditions[0].value",
        ),
        (
            |p| rule(p).path_selection = None,
            "policy.spec.rules[0].path_selection",
        ),
        (
            |p| {
                rule(p).action = RuleAction::Allow as i32;
                rule(p).path_selection = None;
            },
            "policy.spec.rules[0].duplicate",
        ),
        (
            |p| {
                rule(p).action = RuleAction::Deny as i32;
                rule(p).path_selection = None;
                rule(p).duplicate = false;
            },
            "policy.spec.rules[0].qos_class",
        ),
        (|p| rule(p).qos_class = 9, "policy.spec.rules[0].qos_class"),
        (
            |p| rule(p).path_selection.as_mut().unwrap().strategy = 0,
            "policy.spec.rules[0].path_selection.strategy",
        ),
        (
            |p| {
                rule(p)
                    .path_selection
                    .as_mut()
                    .unwrap()
                    .thresholds
                    .as_mut()
                    .unwrap()
                    .max_packet_loss_pct = 150.0
            },
            "policy.spec.rules[0].path_selection.thresholds.max_packet_loss_pct",
        ),
        (
            |p| {
                let r = rule(p).clone();
                p.spec.as_mut().unwrap().rules.push(r);
            },
            "policy.spec.rules[1].priority",
        ),
    ];
    for (edit, field) in policies {
        let mut p = policy("video");
        edit(&mut p);
        let e = c
            .create_policy(CreatePolicyRequest { policy: Some(p) })
            .await
            .unwrap_err();
        assert_eq!(violated_fields(&e), [*field], "{}", e.message());
    }
    // A protocol by name or number is a condition like the others.
    let mut p = policy("by-protocol");
    rule(&mut p).conditions = ["udp", "132"]
        .map(|value| Condition {
            r#type: ConditionType::Protocol as i32,
            value: value.into(),
        })
        .to_vec();
    c.create_policy(CreatePolicyRequest { policy: Some(p) })
        .await
        .expect("protocol conditions are accepted");
    fn app_spec(a: &mut Application) -> &mut ApplicationSpec {
        a.spec.as_mut().unwrap()
    }
    let applications: &[(Edit<Application>, &str)] = &[
        (
            |a| app_spec(a).app_name = "Acme ERP".into(),
            "application.spec.app_name",
        ),
        (
            |a| app_spec(a).category = "Spreadsheets".into(),
            "application.spec.category",
        ),
        (
            |a| app_spec(a).hosts = vec!["10.0.0.1".into()],
            "application.spec.hosts[0]",
        ),
        (
            |a| app_spec(a).patterns = vec![String::new()],
            "application.spec.patterns[0]",
        ),
        (
            |a| app_spec(a).transport = "sctp".into(),
            "application.spec.transport",
        ),
        (
            |a| app_spec(a).ports = vec![70000],
            "application.spec.ports[0]",
        ),
        (
            |a| {
                app_spec(a).hosts.clear();
                app_spec(a).patterns.clear();
            },
            "application.spec",
        ),
        (|a| a.spec = None, "application.spec"),
        (
            |a| app_spec(a).patterns = vec!["^x".into(); 257],
            "application.spec.patterns",
        ),
        (
            |a| app_spec(a).hosts = vec!["a.example".into(); 1025],
            "application.spec.hosts",
        ),
        (
            |a| app_spec(a).ports = vec![80; 257],
            "application.spec.ports",
        ),
    ];
    for (edit, field) in applications {
        let mut a = Application {
            metadata: Some(ObjectMeta {
                name: "acme-erp".into(),
                ..Default::default()
            }),
            spec: Some(ApplicationSpec {
                app_name: "AcmeERP".into(),
                category: "Database".into(),
                hosts: vec!["erp.acme.example".into()],
                patterns: vec!["^ACME".into()],
                transport: "tcp".into(),
                ports: vec![7000],
            }),
        };
        edit(&mut a);
        let e = c
            .create_application(CreateApplicationRequest {
                application: Some(a),
            })
            .await
            .unwrap_err();
        assert_eq!(violated_fields(&e), [*field], "{}", e.message());
    }
    // Several faults at once are all named.
    let mut s = site("hq", "");
    s.spec
        .as_mut()
        .unwrap()
        .tunnel_endpoint
        .as_mut()
        .unwrap()
        .port = 0;
    let e = c
        .create_site(CreateSiteRequest { site: Some(s) })
        .await
        .unwrap_err();
    assert_eq!(
        violated_fields(&e),
        ["site.spec.site_id", "site.spec.tunnel_endpoint.port"]
    );
    let e = c
        .get_site(GetSiteRequest {
            name: "../etc".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&e), ["name"]);
    let e = c
        .list_sites(ListSitesRequest {
            page_size: 5,
            page_token: "%%%".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&e), ["page_token"]);
    // Nothing was written.
    assert!(c
        .list_sites(ListSitesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .sites
        .is_empty());
    server.stop().await;
}

#[tokio::test]
async fn lists_page_in_name_order() {
    let server = Server::start(None).await;
    let mut c = server.client().await;
    for i in (0..25).rev() {
        let name = format!("site-{i:02}");
        create(&mut c, site(&name, &name)).await;
    }
    let (mut names, mut token, mut pages) = (Vec::new(), String::new(), 0);
    loop {
        let page = c
            .list_sites(ListSitesRequest {
                page_size: 10,
                page_token: token,
            })
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        names.extend(page.sites.into_iter().map(|s| s.metadata.unwrap().name));
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    let expected: Vec<String> = (0..25).map(|i| format!("site-{i:02}")).collect();
    assert_eq!((names, pages), (expected, 3));
    server.stop().await;
}

#[tokio::test]
async fn a_token_is_required_when_configured() {
    const TOKEN: &str = "s3cret-token-0123456789";
    let server = Server::start(Some(TOKEN)).await;
    let mut c = server.client().await;
    let e = c.list_sites(ListSitesRequest::default()).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    let mut wrong = Request::new(ListSitesRequest::default());
    wrong.metadata_mut().insert(
        "authorization",
        "Bearer s3cret-token-0123456780".parse().unwrap(),
    );
    assert_eq!(
        c.list_sites(wrong).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    let mut right = Request::new(ListSitesRequest::default());
    right
        .metadata_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    c.list_sites(right).await.unwrap();
    // The standard health service answers without a token.
    let channel = Channel::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "patronus.v1.ControlPlane".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    server.stop().await;
}

#[tokio::test]
async fn state_survives_a_restart() {
    let server = Server::start(None).await;
    let mut c = server.client().await;
    let created = create(&mut c, site("hq", "hq")).await;
    c.create_peer(CreatePeerRequest {
        peer: Some(peer("aws")),
    })
    .await
    .unwrap();
    drop(c);
    let dir = server.stop().await;
    let server = Server::start_in(dir, None).await;
    let mut c = server.client().await;
    assert_eq!(
        c.get_site(GetSiteRequest { name: "hq".into() })
            .await
            .unwrap()
            .into_inner()
            .site,
        Some(created.clone())
    );
    assert!(c
        .get_peer(GetPeerRequest { name: "aws".into() })
        .await
        .is_ok());
    // Versions keep increasing across restarts.
    let next = create(&mut c, site("b", "b")).await;
    assert!(next.metadata.unwrap().resource_version > created.metadata.unwrap().resource_version);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_share_commits_and_each_is_acknowledged() {
    let server = Server::start(None).await;
    let c = server.client().await;
    let writers: Vec<_> = (0..200)
        .map(|i| {
            let mut c = c.clone();
            tokio::spawn(async move {
                let name = format!("w-{i}");
                // Every fifth write repeats an earlier name: refused, without disturbing its group.
                let name = if i % 5 == 4 {
                    format!("w-{}", i - 1)
                } else {
                    name
                };
                c.create_site(CreateSiteRequest {
                    site: Some(site(&name, &name)),
                })
                .await
            })
        })
        .collect();
    let mut versions = Vec::new();
    let mut refused = 0;
    for w in writers {
        match w.await.unwrap() {
            Ok(r) => versions.push(
                r.into_inner()
                    .site
                    .unwrap()
                    .metadata
                    .unwrap()
                    .resource_version,
            ),
            Err(e) => {
                assert_eq!(e.code(), Code::AlreadyExists);
                refused += 1;
            }
        }
    }
    assert_eq!((versions.len(), refused), (160, 40));
    versions.sort_unstable();
    versions.dedup();
    assert_eq!(
        versions.len(),
        160,
        "every acknowledged write has its own resource_version"
    );
    let mut c = c;
    let listed = c
        .list_sites(ListSitesRequest {
            page_size: 1000,
            page_token: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(listed.into_inner().sites.len(), 160);
    server.stop().await;
}

#[tokio::test]
async fn applications_together_stay_within_what_a_snapshot_carries() {
    // Every site's snapshot carries every application: once they would
    // take more than their share of a message, the next one is refused
    // naming the field, and everything written before stays.
    let server = Server::start(None).await;
    let mut c = server.client().await;
    let big = |n: usize| Application {
        metadata: named(&format!("big-{n}")),
        spec: Some(ApplicationSpec {
            app_name: format!("Big{n}"),
            category: "Web".into(),
            patterns: (0..256)
                .map(|i| format!("^{i:04}{}", "x".repeat(1000)))
                .collect(),
            ..Default::default()
        }),
    };
    let mut created = 0;
    let refused = loop {
        match c
            .create_application(CreateApplicationRequest {
                application: Some(big(created)),
            })
            .await
        {
            Ok(_) => created += 1,
            Err(e) => break e,
        }
        assert!(created < 64, "no limit on the applications' total size");
    };
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        violated_fields(&refused),
        ["application.spec"],
        "{}",
        refused.message()
    );
    let share = patronus_proto::MAX_MESSAGE_BYTES / 4;
    assert!(created * 256 * 1000 <= share && (created + 1) * 256 * 1000 > share * 9 / 10);
    let listed = c
        .list_applications(ListApplicationsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .applications;
    assert_eq!(listed.len(), created);
    // Making one smaller makes room again.
    let mut small = listed[0].clone();
    small.spec.as_mut().unwrap().patterns.truncate(1);
    c.update_application(UpdateApplicationRequest {
        application: Some(small),
    })
    .await
    .unwrap();
    c.create_application(CreateApplicationRequest {
        application: Some(big(created)),
    })
    .await
    .unwrap();
}

/// A peer of `site_id` carrying as many labels as a resource may, each as
/// long as it may be: about 80 KB.
fn heavy_peer(name: &str, site_id: &str) -> Peer {
    let mut p = peer(name);
    p.spec.as_mut().unwrap().site_id = site_id.into();
    p.metadata.as_mut().unwrap().labels = (0..patronus_controlplane::validate::LABELS_MAX)
        .map(|i| (format!("{i:03}{}", "k".repeat(250)), "v".repeat(63)))
        .collect();
    p
}

#[tokio::test]
async fn a_sites_peers_stay_within_what_its_snapshot_carries() {
    // A site's snapshot carries its peers: once they would take more than
    // their share of a message the next one is refused naming the field;
    // other sites are not affected, and a deletion or a move makes room.
    let server = Server::start(None).await;
    let mut c = server.client().await;
    let mut created = 0;
    let refused = loop {
        match c
            .create_peer(CreatePeerRequest {
                peer: Some(heavy_peer(&format!("hq-{created}"), "hq")),
            })
            .await
        {
            Ok(_) => created += 1,
            Err(e) => break e,
        }
        assert!(created < 100, "no limit on a site's peers");
    };
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert_eq!(
        violated_fields(&refused),
        ["peer.spec"],
        "{}",
        refused.message()
    );
    assert!(
        refused.message().contains("\"hq\""),
        "{}",
        refused.message()
    );
    let share = patronus_controlplane::validate::SNAPSHOT_SHARE_BYTES;
    let one = heavy_peer("x", "hq").encoded_len();
    assert!(created * one <= share && (created + 2) * one > share);

    // Another site has its own share.
    c.create_peer(CreatePeerRequest {
        peer: Some(heavy_peer("branch-0", "branch")),
    })
    .await
    .unwrap();

    // Moving one of hq's peers to another site, or deleting one, makes room.
    let mut moved = c
        .get_peer(GetPeerRequest {
            name: "hq-0".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .peer
        .unwrap();
    moved.spec.as_mut().unwrap().site_id = "branch".into();
    c.update_peer(UpdatePeerRequest { peer: Some(moved) })
        .await
        .unwrap();
    c.create_peer(CreatePeerRequest {
        peer: Some(heavy_peer("hq-again", "hq")),
    })
    .await
    .unwrap();
    assert!(c
        .create_peer(CreatePeerRequest {
            peer: Some(heavy_peer("hq-over", "hq")),
        })
        .await
        .is_err());
    c.delete_peer(DeletePeerRequest {
        name: "hq-1".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    c.create_peer(CreatePeerRequest {
        peer: Some(heavy_peer("hq-over", "hq")),
    })
    .await
    .unwrap();

    // The totals are kept in the database: a restart keeps the cap.
    drop(c);
    let dir = server.stop().await;
    let server = Server::start_in(dir, None).await;
    let mut c = server.client().await;
    let refused = c
        .create_peer(CreatePeerRequest {
            peer: Some(heavy_peer("hq-after-restart", "hq")),
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&refused), ["peer.spec"]);
    server.stop().await;
}

#[tokio::test]
async fn lists_beyond_their_bound_and_oversized_resources_are_refused_whole() {
    let server = Server::start(None).await;
    let mut c = server.client().await;

    // Validation stops at a list's bound rather than checking each entry.
    let mut crowded = site("crowded", "crowded");
    crowded.spec.as_mut().unwrap().peers = (0..=patronus_controlplane::validate::SITE_PEERS_MAX)
        .map(|i| SitePeer {
            site_id: "same".into(),
            address: format!("not an address {i}"),
        })
        .collect();
    let refused = c
        .create_site(CreateSiteRequest {
            site: Some(crowded),
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&refused), ["site.spec.peers"]);

    let mut rules = policy("many-rules");
    let rule = rules.spec.as_ref().unwrap().rules[0].clone();
    rules.spec.as_mut().unwrap().rules = (0..=patronus_controlplane::validate::POLICY_RULES_MAX)
        .map(|i| PolicyRule {
            priority: i as u32,
            ..rule.clone()
        })
        .collect();
    let refused = c
        .create_policy(CreatePolicyRequest {
            policy: Some(rules),
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&refused), ["policy.spec.rules"]);

    // Lists within their bounds can still make one resource too large.
    let mut large = site("large", "large");
    large.spec.as_mut().unwrap().peers = (0..patronus_controlplane::validate::SITE_PEERS_MAX)
        .map(|i| SitePeer {
            site_id: format!("s{i:05}{}", "x".repeat(57)),
            address: format!("{}.example.com", "a".repeat(60)),
        })
        .collect();
    let refused = c
        .create_site(CreateSiteRequest { site: Some(large) })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&refused), ["site"], "{}", refused.message());
    server.stop().await;
}
