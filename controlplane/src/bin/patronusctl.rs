//! `patronusctl`: the command-line client of the Patronus public API.

use std::io::Read as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use patronus_controlplane::manifest::{self, Document};
use patronus_proto::client::{Authorization, ClientOptions};
use patronus_proto::v1 as pb;
use patronus_proto::v1::control_plane_client::ControlPlaneClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_types::StatusExt;

/// Command-line client of the Patronus control plane.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// The control plane's gRPC address.
    #[arg(
        long,
        env = "PATRONUS_SERVER",
        default_value = "http://127.0.0.1:50051"
    )]
    server: String,
    /// File holding the bearer token (mode 600).
    #[arg(long, env = "PATRONUS_TOKEN_FILE", value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// CA certificate (PEM) the server's certificate must chain to (for https:// servers).
    #[arg(long, env = "PATRONUS_TLS_CA", value_name = "FILE")]
    tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for servers that require mutual TLS.
    #[arg(
        long,
        env = "PATRONUS_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    tls_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM; mode 600).
    #[arg(
        long,
        env = "PATRONUS_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    tls_key: Option<PathBuf>,
    /// Send the token over clear text (http://) to a server off loopback.
    #[arg(long, env = "PATRONUS_INSECURE")]
    insecure: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Creates or updates the Site, Peer and Policy documents of YAML files
    /// (several per file, `---` between them; `-` reads standard input).
    /// Unchanged resources are left alone, so applying twice changes nothing.
    Apply {
        /// Manifest files.
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
    },
    /// Shows resources of a kind, or one of them.
    Get {
        /// sites, peers, policies or applications (singular works too).
        kind: Kind,
        /// One resource's name.
        name: Option<String>,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// The data planes that subscribed: connected, the version their site
    /// should run, the version each applied and the last one it refused.
    Status {
        /// Only this site's data planes.
        #[arg(long)]
        site: Option<String>,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Shows what happened (resources written, data planes connecting,
    /// applying or refusing snapshots, links, tunnels, failovers): the
    /// recent events the server keeps and, with --follow, new ones as they
    /// happen.
    Events {
        /// Keep watching.
        #[arg(short, long)]
        follow: bool,
        /// Only this site's events.
        #[arg(long)]
        site: Option<String>,
        /// Only events after this id (to resume).
        #[arg(long, default_value_t = 0)]
        after: u64,
    },
    /// Sites with their data planes and phase, and the tunnels from each.
    Topology,
    /// Each data plane's tunnels: state and measured latency, jitter and loss.
    Paths {
        /// Only this site's paths.
        #[arg(long)]
        site: Option<String>,
    },
    /// Each data plane's BFD sessions: state, discriminators, diagnostic,
    /// negotiated intervals and the last state change.
    Bfd {
        /// Only this site's sessions.
        #[arg(long)]
        site: Option<String>,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Deletes a resource.
    Delete {
        /// site, peer, policy or application.
        kind: Kind,
        /// Its name.
        name: String,
    },
    /// Prints the token with which the data planes of SITE may sync that
    /// site only, made from the control plane's data-plane key (the file it
    /// runs with as --dataplane-key-file). Computed here: nothing is asked of
    /// the server. Put it in the data plane's `controlplane.token_file`.
    DataplaneToken {
        /// The site id.
        site: String,
        /// The control plane's data-plane key file.
        #[arg(long, value_name = "FILE")]
        key_file: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Site,
    Peer,
    Policy,
    Application,
}

impl std::str::FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "site" | "sites" => Ok(Kind::Site),
            "peer" | "peers" => Ok(Kind::Peer),
            "policy" | "policies" => Ok(Kind::Policy),
            "application" | "applications" | "app" | "apps" => Ok(Kind::Application),
            "bfd" => Err("BFD sessions are live state, not a resource: \
                          `patronusctl bfd` lists them"
                .to_owned()),
            _ => Err(format!(
                "{s:?}: expected sites, peers, policies or applications"
            )),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Yaml,
    Json,
}

type Client = ControlPlaneClient<InterceptedService<Channel, Authorization>>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("patronusctl: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn connect(cli: &Cli) -> anyhow::Result<Client> {
    let options = ClientOptions {
        server: cli.server.clone(),
        token_file: cli.token_file.clone(),
        tls_ca: cli.tls_ca.clone(),
        tls_cert: cli.tls_cert.clone(),
        tls_key: cli.tls_key.clone(),
        insecure: cli.insecure,
    };
    let (endpoint, authorization) = options.endpoint()?;
    let channel = endpoint
        .connect()
        .await
        .with_context(|| format!("cannot reach the control plane at {}", cli.server))?;
    Ok(ControlPlaneClient::with_interceptor(channel, authorization)
        .max_decoding_message_size(patronus_proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(patronus_proto::MAX_MESSAGE_BYTES))
}

/// Runs the command; Ok(false) when some documents failed (already reported).
/// Prints a site's data-plane token, made from the key file.
fn dataplane_token(site: &str, key_file: &std::path::Path) -> anyhow::Result<bool> {
    if !patronus_controlplane::validate::is_dns_label(site) {
        anyhow::bail!("{site:?} is not a site id");
    }
    let key = patronus_controlplane::auth::DataplaneKey::from_file(key_file)?;
    println!("{}", zeroize::Zeroizing::new(key.token_for(site)).as_str());
    Ok(true)
}

async fn run(cli: Cli) -> anyhow::Result<bool> {
    if let Command::DataplaneToken { site, key_file } = &cli.command {
        return dataplane_token(site, key_file);
    }
    let mut client = connect(&cli).await?;
    match cli.command {
        Command::Apply { files } => apply(&mut client, &files).await,
        Command::Events {
            follow,
            site,
            after,
        } => {
            let mut stream = call(
                client
                    .watch_events(pb::WatchEventsRequest {
                        site_id: site.unwrap_or_default(),
                        after_id: after,
                        follow,
                    })
                    .await,
            )?;
            while let Some(event) = stream
                .message()
                .await
                .map_err(|s| anyhow::anyhow!(explain(&s)))?
            {
                println!("{}", event_line(&event));
            }
            Ok(true)
        }
        Command::Topology => {
            let topology = call(client.get_topology(pb::GetTopologyRequest {}).await)?;
            let phase = |p: i32| {
                pb::SitePhase::try_from(p)
                    .map(|p| {
                        p.as_str_name()
                            .trim_start_matches("SITE_PHASE_")
                            .to_lowercase()
                    })
                    .unwrap_or_default()
            };
            print_table(
                &["SITE", "REGION", "PHASE", "DATAPLANES", "TUNNELS UP"],
                topology
                    .sites
                    .iter()
                    .map(|s| {
                        vec![
                            s.site_id.clone(),
                            s.region.clone(),
                            phase(s.phase),
                            s.dataplanes_connected.to_string(),
                            s.tunnels_up.to_string(),
                        ]
                    })
                    .collect(),
            );
            println!();
            print_table(
                &["FROM", "PEER", "TO", "ENDPOINT", "TUNNEL"],
                topology
                    .links
                    .iter()
                    .map(|l| {
                        vec![
                            l.site_id.clone(),
                            l.peer.clone(),
                            if l.remote_site_id.is_empty() {
                                "(external)".into()
                            } else {
                                l.remote_site_id.clone()
                            },
                            l.endpoint
                                .as_ref()
                                .map(|e| format!("{}:{}", e.address, e.port))
                                .unwrap_or_default(),
                            tunnel(l.state),
                        ]
                    })
                    .collect(),
            );
            Ok(true)
        }
        Command::Paths { site } => {
            let paths = call(
                client
                    .list_path_health(pb::ListPathHealthRequest {
                        site_id: site.unwrap_or_default(),
                    })
                    .await,
            )?;
            let measured = |m: &Option<pb::PathMetrics>, f: fn(&pb::PathMetrics) -> f64| {
                m.as_ref()
                    .map_or_else(|| "-".to_owned(), |m| format!("{:.1}", f(m)))
            };
            print_table(
                &[
                    "SITE",
                    "DATAPLANE",
                    "PEER",
                    "PATH",
                    "ACTIVE",
                    "UP",
                    "BFD",
                    "TUNNEL",
                    "LATENCY MS",
                    "JITTER MS",
                    "LOSS %",
                    "HEALTH",
                ],
                paths
                    .paths
                    .iter()
                    .map(|p| {
                        let yes_no = |b: bool| if b { "yes" } else { "no" }.to_owned();
                        vec![
                            p.site_id.clone(),
                            p.dataplane_id.clone(),
                            p.peer.clone(),
                            if p.path_id.is_empty() {
                                "-".to_owned()
                            } else {
                                p.path_id.clone()
                            },
                            yes_no(p.active),
                            yes_no(p.up),
                            bfd(p.bfd),
                            tunnel(p.state),
                            measured(&p.metrics, |m| m.latency_ms),
                            measured(&p.metrics, |m| m.jitter_ms),
                            measured(&p.metrics, |m| m.packet_loss_pct),
                            p.health_score
                                .map_or_else(|| "-".to_owned(), |h| format!("{h:.0}")),
                        ]
                    })
                    .collect(),
            );
            Ok(true)
        }
        Command::Bfd { site, output } => {
            let list = call(
                client
                    .list_bfd_sessions(pb::ListBfdSessionsRequest {
                        site_id: site.unwrap_or_default(),
                    })
                    .await,
            )?;
            print_bfd_sessions(&list.sessions, output)?;
            Ok(true)
        }
        Command::Get { kind, name, output } => {
            get(&mut client, kind, name, output).await?;
            Ok(true)
        }
        Command::Status { site, output } => {
            let list = call(
                client
                    .list_dataplanes(pb::ListDataplanesRequest {
                        site_id: site.unwrap_or_default(),
                    })
                    .await,
            )?;
            if output != Output::Table {
                let items: Vec<serde_json::Value> = list
                    .dataplanes
                    .iter()
                    .map(|d| {
                        serde_json::json!({
                            "siteId": d.site_id,
                            "dataplaneId": d.dataplane_id,
                            "connected": d.connected,
                            "desiredVersion": d.desired_version,
                            "appliedVersion": d.applied_version,
                            "refusedVersion": d.refused_version,
                            "refusedReason": d.refused_reason,
                        })
                    })
                    .collect();
                let text = match output {
                    Output::Json => serde_json::to_string_pretty(&items)?,
                    _ => serde_yaml_ng::to_string(&items)?,
                };
                println!("{}", text.trim_end());
                return Ok(true);
            }
            let rows = list
                .dataplanes
                .iter()
                .map(|d| {
                    vec![
                        d.site_id.clone(),
                        d.dataplane_id.clone(),
                        d.connected.to_string(),
                        d.desired_version.to_string(),
                        d.applied_version.to_string(),
                        if d.refused_version == 0 {
                            String::new()
                        } else {
                            format!("{} ({})", d.refused_version, d.refused_reason)
                        },
                    ]
                })
                .collect();
            print_table(
                &[
                    "SITE",
                    "DATAPLANE",
                    "CONNECTED",
                    "DESIRED",
                    "APPLIED",
                    "REFUSED",
                ],
                rows,
            );
            Ok(true)
        }
        Command::DataplaneToken { .. } => unreachable!("answered above, without a server"),
        Command::Delete { kind, name } => {
            let result = match kind {
                Kind::Site => client
                    .delete_site(pb::DeleteSiteRequest {
                        name: name.clone(),
                        resource_version: 0,
                    })
                    .await
                    .map(drop),
                Kind::Peer => client
                    .delete_peer(pb::DeletePeerRequest {
                        name: name.clone(),
                        resource_version: 0,
                    })
                    .await
                    .map(drop),
                Kind::Policy => client
                    .delete_policy(pb::DeletePolicyRequest {
                        name: name.clone(),
                        resource_version: 0,
                    })
                    .await
                    .map(drop),
                Kind::Application => client
                    .delete_application(pb::DeleteApplicationRequest {
                        name: name.clone(),
                        resource_version: 0,
                    })
                    .await
                    .map(drop),
            };
            result.map_err(|s| anyhow::anyhow!(explain(&s)))?;
            println!("{}/{name} deleted", label(kind));
            Ok(true)
        }
    }
}

fn label(kind: Kind) -> &'static str {
    match kind {
        Kind::Site => "site",
        Kind::Peer => "peer",
        Kind::Policy => "policy",
        Kind::Application => "application",
    }
}

/// The server's message, with every field violation on its own line.
fn explain(status: &Status) -> String {
    let mut text = status.message().to_owned();
    if let Some(bad) = status.get_details_bad_request() {
        text = format!("{:?}: invalid request", status.code());
        for v in bad.field_violations {
            text.push_str(&format!("\n  {}: {}", v.field, v.description));
        }
    }
    text
}

/// What apply did with one document.
enum Applied {
    Created,
    Configured,
    Unchanged,
}

/// Create-or-update of one resource: `$get`, `$create`, `$update` are the client calls.
macro_rules! apply_one {
    ($client:expr, $desired:expr, $field:ident, $get:ident, $GetReq:ident, $create:ident, $CreateReq:ident, $update:ident, $UpdateReq:ident) => {{
        let mut desired = $desired;
        let name = desired
            .metadata
            .as_ref()
            .map(|m| m.name.clone())
            .unwrap_or_default();
        match $client.$get(pb::$GetReq { name }).await {
            Err(s) if s.code() == Code::NotFound => $client
                .$create(pb::$CreateReq {
                    $field: Some(desired),
                })
                .await
                .map(|_| Applied::Created),
            Err(s) => Err(s),
            Ok(current) => {
                let current = current.into_inner().$field.unwrap_or_default();
                let (cm, dm) = (
                    current.metadata.clone().unwrap_or_default(),
                    desired.metadata.clone().unwrap_or_default(),
                );
                if current.spec == desired.spec && cm.labels == dm.labels {
                    Ok(Applied::Unchanged)
                } else {
                    desired
                        .metadata
                        .get_or_insert_with(Default::default)
                        .resource_version = cm.resource_version;
                    $client
                        .$update(pb::$UpdateReq {
                            $field: Some(desired),
                        })
                        .await
                        .map(|_| Applied::Configured)
                }
            }
        }
    }};
}

async fn apply(client: &mut Client, files: &[PathBuf]) -> anyhow::Result<bool> {
    let mut ok = true;
    for file in files {
        let text = if file.as_os_str() == "-" {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s)?;
            s
        } else {
            std::fs::read_to_string(file)
                .with_context(|| format!("{}: cannot read", file.display()))?
        };
        let docs = manifest::parse(&text).with_context(|| file.display().to_string())?;
        for doc in docs {
            let what = format!("{}/{}", doc.kind().to_ascii_lowercase(), doc.name());
            let result = match &doc {
                Document::Site(d) => apply_one!(
                    client,
                    manifest::site(d),
                    site,
                    get_site,
                    GetSiteRequest,
                    create_site,
                    CreateSiteRequest,
                    update_site,
                    UpdateSiteRequest
                ),
                Document::Peer(d) => apply_one!(
                    client,
                    manifest::peer(d),
                    peer,
                    get_peer,
                    GetPeerRequest,
                    create_peer,
                    CreatePeerRequest,
                    update_peer,
                    UpdatePeerRequest
                ),
                Document::Application(d) => apply_one!(
                    client,
                    manifest::application(d),
                    application,
                    get_application,
                    GetApplicationRequest,
                    create_application,
                    CreateApplicationRequest,
                    update_application,
                    UpdateApplicationRequest
                ),
                Document::Policy(d) => match manifest::policy(d) {
                    Ok(p) => apply_one!(
                        client,
                        p,
                        policy,
                        get_policy,
                        GetPolicyRequest,
                        create_policy,
                        CreatePolicyRequest,
                        update_policy,
                        UpdatePolicyRequest
                    ),
                    Err(e) => {
                        eprintln!("error: {what}: {e}");
                        ok = false;
                        continue;
                    }
                },
            };
            match result {
                Ok(Applied::Created) => println!("{what} created"),
                Ok(Applied::Configured) => println!("{what} configured"),
                Ok(Applied::Unchanged) => println!("{what} unchanged"),
                Err(s) => {
                    eprintln!("error: {what}: {}", explain(&s));
                    ok = false;
                }
            }
        }
    }
    Ok(ok)
}

async fn get(
    client: &mut Client,
    kind: Kind,
    name: Option<String>,
    output: Output,
) -> anyhow::Result<()> {
    let docs: Vec<Document> = match (kind, name) {
        (Kind::Site, Some(n)) => vec![Document::Site(manifest::site_doc(
            &call(client.get_site(pb::GetSiteRequest { name: n }).await)?
                .site
                .unwrap_or_default(),
        ))],
        (Kind::Peer, Some(n)) => vec![Document::Peer(manifest::peer_doc(
            &call(client.get_peer(pb::GetPeerRequest { name: n }).await)?
                .peer
                .unwrap_or_default(),
        ))],
        (Kind::Policy, Some(n)) => vec![Document::Policy(manifest::policy_doc(
            &call(client.get_policy(pb::GetPolicyRequest { name: n }).await)?
                .policy
                .unwrap_or_default(),
        ))],
        (Kind::Application, Some(n)) => vec![Document::Application(manifest::application_doc(
            &call(
                client
                    .get_application(pb::GetApplicationRequest { name: n })
                    .await,
            )?
            .application
            .unwrap_or_default(),
        ))],
        (kind, None) => list_all(client, kind).await?,
    };
    match output {
        Output::Yaml => {
            for doc in &docs {
                print!("---\n{}", serde_yaml_ng::to_string(doc)?);
            }
        }
        Output::Json => {
            let body = if docs.len() == 1 {
                serde_json::to_string_pretty(&docs[0])?
            } else {
                serde_json::to_string_pretty(&docs)?
            };
            println!("{body}");
        }
        Output::Table => table(kind, &docs),
    }
    Ok(())
}

fn call<T>(r: Result<tonic::Response<T>, Status>) -> anyhow::Result<T> {
    r.map(tonic::Response::into_inner)
        .map_err(|s| anyhow::anyhow!(explain(&s)))
}

async fn list_all(client: &mut Client, kind: Kind) -> anyhow::Result<Vec<Document>> {
    let mut docs = Vec::new();
    let mut page_token = String::new();
    loop {
        let next = match kind {
            Kind::Site => {
                let r = call(
                    client
                        .list_sites(pb::ListSitesRequest {
                            page_size: 500,
                            page_token,
                        })
                        .await,
                )?;
                docs.extend(
                    r.sites
                        .iter()
                        .map(|s| Document::Site(manifest::site_doc(s))),
                );
                r.next_page_token
            }
            Kind::Peer => {
                let r = call(
                    client
                        .list_peers(pb::ListPeersRequest {
                            page_size: 500,
                            page_token,
                        })
                        .await,
                )?;
                docs.extend(
                    r.peers
                        .iter()
                        .map(|p| Document::Peer(manifest::peer_doc(p))),
                );
                r.next_page_token
            }
            Kind::Policy => {
                let r = call(
                    client
                        .list_policies(pb::ListPoliciesRequest {
                            page_size: 500,
                            page_token,
                        })
                        .await,
                )?;
                docs.extend(
                    r.policies
                        .iter()
                        .map(|p| Document::Policy(manifest::policy_doc(p))),
                );
                r.next_page_token
            }
            Kind::Application => {
                let r = call(
                    client
                        .list_applications(pb::ListApplicationsRequest {
                            page_size: 500,
                            page_token,
                        })
                        .await,
                )?;
                docs.extend(
                    r.applications
                        .iter()
                        .map(|a| Document::Application(manifest::application_doc(a))),
                );
                r.next_page_token
            }
        };
        if next.is_empty() {
            return Ok(docs);
        }
        page_token = next;
    }
}

fn table(kind: Kind, docs: &[Document]) {
    let rows: Vec<Vec<String>> = docs
        .iter()
        .map(|doc| match doc {
            Document::Site(s) => vec![
                s.metadata.name.clone(),
                s.spec.site_id.clone(),
                s.spec.region.clone(),
                format!(
                    "{}:{}",
                    s.spec.tunnel_endpoint.address, s.spec.tunnel_endpoint.port
                ),
                s.spec.peers.len().to_string(),
                s.status
                    .as_ref()
                    .map_or(String::new(), |st| st.phase.clone()),
            ],
            Document::Peer(p) => vec![
                p.metadata.name.clone(),
                p.spec.site_id.clone(),
                format!("{}:{}", p.spec.endpoint.address, p.spec.endpoint.port),
                p.spec.compression.to_string(),
                p.spec.bfd_enabled.to_string(),
                p.status.as_ref().is_some_and(|s| s.connected).to_string(),
            ],
            Document::Policy(p) => vec![
                p.metadata.name.clone(),
                p.spec
                    .site_selector
                    .match_labels
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(","),
                p.spec.rules.len().to_string(),
                p.status
                    .as_ref()
                    .map_or(0, |s| s.selected_sites.len())
                    .to_string(),
            ],
            Document::Application(a) => vec![
                a.metadata.name.clone(),
                a.spec.app_name.clone(),
                a.spec.category.clone(),
                a.spec.hosts.len().to_string(),
                a.spec.patterns.len().to_string(),
                a.spec
                    .ports
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
            ],
        })
        .collect();
    let header: &[&str] = match kind {
        Kind::Site => &["NAME", "SITE-ID", "REGION", "ENDPOINT", "PEERS", "PHASE"],
        Kind::Peer => &[
            "NAME",
            "SITE",
            "ENDPOINT",
            "COMPRESSION",
            "BFD",
            "CONNECTED",
        ],
        Kind::Policy => &["NAME", "SELECTOR", "RULES", "SITES"],
        Kind::Application => &["NAME", "APP", "CATEGORY", "HOSTS", "PATTERNS", "PORTS"],
    };
    print_table(header, rows);
}

/// A path's BFD session state, `-` for a path without BFD.
fn bfd(state: i32) -> String {
    match pb::BfdState::try_from(state) {
        Ok(pb::BfdState::AdminDown) => "admin-down".into(),
        Ok(pb::BfdState::Down) => "down".into(),
        Ok(pb::BfdState::Init) => "init".into(),
        Ok(pb::BfdState::Up) => "up".into(),
        _ => "-".into(),
    }
}

/// The sessions as a table (milliseconds; the last change as an RFC 3339
/// time), or as JSON or YAML.
fn print_bfd_sessions(sessions: &[pb::BfdSessionStatus], output: Output) -> anyhow::Result<()> {
    let ms = |us: u64| format!("{}", us as f64 / 1e3);
    let changed = |t: &Option<prost_types::Timestamp>| t.as_ref().map(|t| t.to_string());
    if output != Output::Table {
        let items: Vec<serde_json::Value> = sessions
            .iter()
            .filter_map(|s| {
                let b = s.session.as_ref()?;
                Some(serde_json::json!({
                    "siteId": s.site_id,
                    "dataplaneId": s.dataplane_id,
                    "session": b.session_id,
                    "state": bfd(b.state),
                    "remoteState": bfd(b.remote_state),
                    "localDiscriminator": b.local_discriminator,
                    "remoteDiscriminator": b.remote_discriminator,
                    "diagnostic": b.diagnostic,
                    "txIntervalMs": b.tx_interval_us as f64 / 1e3,
                    "detectionTimeMs": b.detection_time_us as f64 / 1e3,
                    "lastChange": changed(&b.last_change),
                }))
            })
            .collect();
        let text = match output {
            Output::Json => serde_json::to_string_pretty(&items)?,
            _ => serde_yaml_ng::to_string(&items)?,
        };
        println!("{}", text.trim_end());
        return Ok(());
    }
    let rows = sessions
        .iter()
        .filter_map(|s| {
            let b = s.session.as_ref()?;
            Some(vec![
                s.site_id.clone(),
                s.dataplane_id.clone(),
                b.session_id.clone(),
                bfd(b.state),
                bfd(b.remote_state),
                b.local_discriminator.to_string(),
                b.remote_discriminator.to_string(),
                b.diagnostic.clone(),
                ms(b.tx_interval_us),
                ms(b.detection_time_us),
                changed(&b.last_change).unwrap_or_else(|| "-".to_owned()),
            ])
        })
        .collect();
    print_table(
        &[
            "SITE",
            "DATAPLANE",
            "SESSION",
            "STATE",
            "REMOTE",
            "LOCAL DISCR",
            "REMOTE DISCR",
            "DIAGNOSTIC",
            "TX MS",
            "DETECT MS",
            "LAST CHANGE",
        ],
        rows,
    );
    Ok(())
}

fn tunnel(state: i32) -> String {
    match pb::TunnelState::try_from(state) {
        Ok(pb::TunnelState::Up) => "up".into(),
        Ok(pb::TunnelState::Down) => "down".into(),
        _ => "unknown".into(),
    }
}

/// `12  2026-11-26T19:30:00Z  snapshot_refused  site=branch-2 dataplane=gw-2 version=7: reason`
fn event_line(e: &pb::Event) -> String {
    let kind = pb::EventType::try_from(e.r#type)
        .map(|t| {
            t.as_str_name()
                .trim_start_matches("EVENT_TYPE_")
                .to_lowercase()
        })
        .unwrap_or_else(|_| e.r#type.to_string());
    let time = e.time.map(|t| t.to_string()).unwrap_or_default();
    let mut line = format!("{:<6} {time}  {kind}", e.id);
    for (key, value) in [
        ("site", e.site_id.as_str()),
        ("dataplane", e.dataplane_id.as_str()),
        ("kind", e.kind.as_str()),
        ("name", e.name.as_str()),
    ] {
        if !value.is_empty() {
            line += &format!(" {key}={value}");
        }
    }
    if e.version != 0 {
        line += &format!(" version={}", e.version);
    }
    if !e.message.is_empty() {
        line += &format!(": {}", e.message);
    }
    line
}

/// Prints rows under a header, columns aligned.
fn print_table(header: &[&str], rows: Vec<Vec<String>>) {
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            rows.iter()
                .map(|r| r[i].len())
                .chain([header[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<&str>| {
        let text: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", text.join("   ").trim_end());
    };
    line(header.to_vec());
    for r in &rows {
        line(r.iter().map(String::as_str).collect());
    }
}
