//! TLS and mutual TLS: clients with a certificate from the configured CA are
//! served; clients without one, with one from another CA, or in clear text are not.

mod common;

use common::pki::{ca, leaf, leaf_with_uri};

use std::sync::Arc;

use patronus_proto::v1::control_plane_client::ControlPlaneClient;
use patronus_proto::v1::dataplane_sync_client::DataplaneSyncClient;
use patronus_proto::v1::{ListSitesRequest, SubscribeRequest};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// A server over `tls` with its database in `dir`, on a loopback port.
async fn serve_tls(
    dir: &std::path::Path,
    tls: tonic::transport::ServerTlsConfig,
) -> std::net::SocketAddr {
    let store = Arc::new(common::open_store(&dir.join("cp.redb")).await);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(patronus_controlplane::server::serve(
        listener,
        None,
        store,
        patronus_controlplane::server::Settings {
            tls: Some(tls),
            ..Default::default()
        },
        std::future::pending(),
    ));
    addr
}

async fn client(addr: std::net::SocketAddr, tls: Option<ClientTlsConfig>) -> Result<(), String> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint =
        Channel::from_shared(format!("{scheme}://localhost:{}", addr.port())).unwrap();
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls).map_err(|e| e.to_string())?;
    }
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| format!("connect: {e}"))?;
    ControlPlaneClient::new(channel)
        .list_sites(ListSitesRequest::default())
        .await
        .map(drop)
        .map_err(|e| format!("call: {e}"))
}

#[tokio::test]
async fn mutual_tls_admits_only_clients_of_the_configured_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (server_ca, client_ca, rogue_ca) = (ca("server CA"), ca("client CA"), ca("rogue CA"));
    let (cert, key) = leaf(&server_ca, &["localhost"]);
    let write = |name: &str, text: &str, mode: u32| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(mode))
            .unwrap();
        path
    };
    let (cert_file, client_ca_file) = (
        write("cert.pem", &cert, 0o644),
        write("client-ca.pem", &client_ca.pem, 0o644),
    );
    let open_key = write("open-key.pem", &key, 0o644);
    let err = patronus_controlplane::server::tls_config(&cert_file, &open_key, None).unwrap_err();
    assert!(err.to_string().contains("readable by others"), "{err}");
    // Group-readable is how Kubernetes mounts a Secret for a pod's fsGroup.
    let group_key = write("group-key.pem", &key, 0o640);
    patronus_controlplane::server::tls_config(&cert_file, &group_key, None).unwrap();
    let key_file = write("key.pem", &key, 0o600);
    let tls =
        patronus_controlplane::server::tls_config(&cert_file, &key_file, Some(&client_ca_file))
            .unwrap();

    let addr = serve_tls(dir.path(), tls).await;

    let trust = || {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&server_ca.pem))
            .domain_name("localhost")
    };
    let (good_cert, good_key) = leaf(&client_ca, &["gw-1"]);
    let (rogue_cert, rogue_key) = leaf(&rogue_ca, &["intruder"]);
    client(
        addr,
        Some(trust().identity(Identity::from_pem(&good_cert, &good_key))),
    )
    .await
    .unwrap();
    assert!(
        client(addr, Some(trust())).await.is_err(),
        "no client certificate"
    );
    assert!(
        client(
            addr,
            Some(trust().identity(Identity::from_pem(&rogue_cert, &rogue_key)))
        )
        .await
        .is_err(),
        "another CA's certificate"
    );
    assert!(client(addr, None).await.is_err(), "clear text");
    // A client that does not trust the server's CA refuses the server.
    let distrust = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&rogue_ca.pem))
        .domain_name("localhost");
    assert!(client(
        addr,
        Some(distrust.identity(Identity::from_pem(&good_cert, &good_key)))
    )
    .await
    .is_err());
}

#[tokio::test]
async fn a_certificate_naming_a_site_is_that_sites_data_plane_and_nothing_more() {
    let dir = tempfile::tempdir().unwrap();
    let (server_ca, client_ca) = (ca("server CA"), ca("client CA"));
    let (cert, key) = leaf(&server_ca, &["localhost"]);
    let write = |name: &str, text: &str| common::private_file(dir.path(), name, text);
    let tls = patronus_controlplane::server::tls_config(
        &write("cert.pem", &cert),
        &write("key.pem", &key),
        Some(&write("client-ca.pem", &client_ca.pem)),
    )
    .unwrap();
    let addr = serve_tls(dir.path(), tls).await;
    let (gw_cert, gw_key) = leaf_with_uri(
        &client_ca,
        &["gw-1.branch"],
        Some("spiffe://patronus/site/branch"),
    );
    let channel = Channel::from_shared(format!("https://localhost:{}", addr.port()))
        .unwrap()
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(&server_ca.pem))
                .domain_name("localhost")
                .identity(Identity::from_pem(&gw_cert, &gw_key)),
        )
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut sync = DataplaneSyncClient::new(channel.clone());
    let subscribe = |site: &str| SubscribeRequest {
        site_id: site.into(),
        dataplane_id: "gw-1".into(),
        ..Default::default()
    };
    sync.subscribe(subscribe("branch")).await.unwrap();
    let denied = sync.subscribe(subscribe("hq")).await.unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    // The server is open to other certificates of its CA, not to this one.
    let denied = ControlPlaneClient::new(channel)
        .list_sites(ListSitesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
}
