//! The endpoint resolver: a tokio task on its own thread that looks up the
//! host names of peer endpoints with hickory's asynchronous resolver, each
//! lookup bounded by `[dns].timeout_ms`, and looks each up again when its
//! answer's TTL runs out (clamped to `[dns].min_ttl_s`..`max_ttl_s`).
//!
//! A lookup that fails keeps the last address that worked: a DNS outage
//! never takes a peer away. A name that never resolved is reported as such
//! and the configuration naming it is refused, at its field. The control
//! loop asks for the names of a configuration before compiling it
//! ([`Resolver::resolve`]), says which names are still in force
//! ([`Resolver::keep`]), and recompiles the site when an address changed
//! ([`Resolver::changed`]).

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::TokioResolver;
use patronus_core::config::dns::{DnsSection, HostAddresses};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// What the resolver is asked.
enum Request {
    /// Looks up the names without an address yet; answers with every name known.
    Resolve {
        hosts: BTreeSet<String>,
        reply: oneshot::Sender<Arc<HostAddresses>>,
    },
    /// Forgets every name but these.
    Keep(BTreeSet<String>),
}

/// What the resolver found, shared with its handles.
#[derive(Debug, Default)]
struct Found {
    addresses: Mutex<Arc<HostAddresses>>,
    /// Increases whenever `addresses` changes.
    generation: AtomicU64,
    /// Lookups that answered with an address, and that did not.
    answered: AtomicU64,
    failed: AtomicU64,
}

/// A handle on the resolver; cheap to clone.
#[derive(Debug, Clone)]
pub struct Resolver {
    requests: mpsc::UnboundedSender<Request>,
    found: Arc<Found>,
}

/// The resolver's thread; dropping it stops the thread.
#[derive(Debug)]
pub struct ResolverThread {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for ResolverThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One name's state.
struct Entry {
    resolved: Result<IpAddr, String>,
    refresh_at: Instant,
}

/// The lookup settings, from `[dns]`.
#[derive(Debug, Clone, Copy)]
struct Timing {
    timeout: Duration,
    min_ttl: Duration,
    max_ttl: Duration,
}

impl Resolver {
    /// Starts the resolver with `[dns]`'s settings: its servers, or the
    /// system's when it names none.
    ///
    /// # Errors
    /// A server list that does not parse, or the thread could not start.
    pub fn start(section: &DnsSection) -> anyhow::Result<(Resolver, ResolverThread)> {
        let servers = section.server_addresses()?;
        let timing = Timing {
            timeout: Duration::from_millis(section.timeout_ms.into()),
            min_ttl: Duration::from_secs(section.min_ttl_s.into()),
            max_ttl: Duration::from_secs(section.max_ttl_s.into()),
        };
        let (requests, inbox) = mpsc::unbounded_channel();
        let found = Arc::new(Found::default());
        let (stop, stopped) = oneshot::channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let shared = found.clone();
        let thread = std::thread::Builder::new()
            .name("patronus-dns".into())
            .spawn(move || {
                runtime.block_on(async move {
                    // Built inside the runtime: hickory binds its sockets on it.
                    let lookup = match build(&servers, timing.timeout) {
                        Ok(r) => Ok(r),
                        Err(e) => {
                            tracing::error!(
                                "no DNS resolver, endpoint host names cannot be resolved: {e:#}"
                            );
                            Err(format!("no DNS resolver: {e}"))
                        }
                    };
                    tokio::select! {
                        _ = stopped => {}
                        () = serve(lookup, timing, inbox, shared) => {}
                    }
                });
            })?;
        Ok((
            Resolver { requests, found },
            ResolverThread {
                stop: Some(stop),
                thread: Some(thread),
            },
        ))
    }

    /// Every name known with what it resolved to, once the names of
    /// `hosts` not known yet were looked up (each for at most `[dns]
    /// .timeout_ms`). Blocks the calling thread: not for async code.
    pub fn resolve(&self, hosts: BTreeSet<String>) -> Arc<HostAddresses> {
        self.ask(hosts)
            .blocking_recv()
            .unwrap_or_else(|_| self.addresses())
    }

    /// [`Resolver::resolve`] for async code.
    pub async fn resolve_async(&self, hosts: BTreeSet<String>) -> Arc<HostAddresses> {
        self.ask(hosts).await.unwrap_or_else(|_| self.addresses())
    }

    /// Asks the resolver thread for `hosts`. The answer never comes when the
    /// thread has stopped: the callers then take what is known.
    fn ask(&self, hosts: BTreeSet<String>) -> oneshot::Receiver<Arc<HostAddresses>> {
        let (reply, answer) = oneshot::channel();
        let _ = self.requests.send(Request::Resolve { hosts, reply });
        answer
    }

    /// Forgets (stops refreshing) every name but `hosts`, the names of the
    /// configuration in force.
    pub fn keep(&self, hosts: BTreeSet<String>) {
        let _ = self.requests.send(Request::Keep(hosts));
    }

    /// Every name known with what it resolved to.
    pub fn addresses(&self) -> Arc<HostAddresses> {
        self.found
            .addresses
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Lookups since start: (answered with an address, failed).
    pub fn lookups(&self) -> (u64, u64) {
        (
            self.found.answered.load(Ordering::Relaxed),
            self.found.failed.load(Ordering::Relaxed),
        )
    }

    /// The addresses, when they changed since `seen` (which is updated).
    pub fn changed(&self, seen: &mut u64) -> Option<Arc<HostAddresses>> {
        let now = self.found.generation.load(Ordering::Acquire);
        if now == *seen {
            return None;
        }
        *seen = now;
        Some(self.addresses())
    }
}

/// A hickory resolver asking `servers`, or the system's when there are none.
fn build(servers: &[std::net::SocketAddr], timeout: Duration) -> anyhow::Result<TokioResolver> {
    let provider = TokioConnectionProvider::default();
    let mut builder = if servers.is_empty() {
        TokioResolver::builder(provider)?
    } else {
        let mut config = ResolverConfig::new();
        for server in servers {
            config.add_name_server(NameServerConfig::new(*server, Protocol::Udp));
        }
        TokioResolver::builder_with_config(config, provider)
    };
    let options = builder.options_mut();
    options.timeout = timeout;
    // Answers are kept here, by their TTL; hickory's cache would only
    // hand an answer back until it expires.
    options.cache_size = 0;
    Ok(builder.build())
}

/// Answers requests and refreshes names as their TTLs run out.
async fn serve(
    lookup: Result<TokioResolver, String>,
    timing: Timing,
    mut inbox: mpsc::UnboundedReceiver<Request>,
    found: Arc<Found>,
) {
    let mut entries: HashMap<String, Entry> = HashMap::new();
    loop {
        let next = entries.values().map(|e| e.refresh_at).min();
        let due = async {
            match next {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            request = inbox.recv() => match request {
                None => return,
                Some(Request::Resolve { hosts, reply }) => {
                    let new: Vec<String> = hosts
                        .into_iter()
                        // A name that failed is tried again at once: the
                        // configuration asking for it is refused otherwise.
                        .filter(|h| entries.get(h).is_none_or(|e| e.resolved.is_err()))
                        .collect();
                    let answers = look_up(&lookup, timing, new, &found).await;
                    for (host, answer) in answers {
                        entries.insert(host, answer);
                    }
                    let _ = reply.send(publish(&entries, &found));
                }
                Some(Request::Keep(hosts)) => {
                    entries.retain(|h, _| hosts.contains(h));
                    publish(&entries, &found);
                }
            },
            () = due => {
                let now = Instant::now();
                let due: Vec<String> = entries
                    .iter()
                    .filter(|(_, e)| e.refresh_at <= now)
                    .map(|(h, _)| h.clone())
                    .collect();
                for (host, answer) in look_up(&lookup, timing, due, &found).await {
                    let Some(entry) = entries.get_mut(&host) else {
                        continue;
                    };
                    match (&entry.resolved, answer.resolved) {
                        (Ok(last), Err(why)) => {
                            tracing::warn!(
                                host,
                                address = %last,
                                "looking up a peer endpoint again failed, keeping its last address: {why}"
                            );
                            entry.refresh_at = answer.refresh_at;
                        }
                        (last, now) => {
                            if let (Ok(last), Ok(now)) = (last, &now) {
                                if last != now {
                                    tracing::info!(host, from = %last, to = %now, "a peer endpoint moved");
                                }
                            }
                            entry.resolved = now;
                            entry.refresh_at = answer.refresh_at;
                        }
                    }
                }
                publish(&entries, &found);
            }
        }
    }
}

/// Looks `hosts` up at once, each for at most the timeout.
async fn look_up(
    lookup: &Result<TokioResolver, String>,
    timing: Timing,
    hosts: Vec<String>,
    found: &Found,
) -> Vec<(String, Entry)> {
    let resolver = match lookup {
        Ok(r) => r,
        Err(why) => {
            let retry = Instant::now() + timing.min_ttl;
            found
                .failed
                .fetch_add(hosts.len() as u64, Ordering::Relaxed);
            return hosts
                .into_iter()
                .map(|h| {
                    let entry = Entry {
                        resolved: Err(why.clone()),
                        refresh_at: retry,
                    };
                    (h, entry)
                })
                .collect();
        }
    };
    let mut lookups = JoinSet::new();
    for host in hosts {
        let resolver = resolver.clone();
        lookups.spawn(async move {
            let started = Instant::now();
            let answer =
                tokio::time::timeout(timing.timeout, resolver.lookup_ip(host.as_str())).await;
            let entry = match answer {
                Ok(Ok(ips)) => match ips.iter().next() {
                    Some(ip) => {
                        let ttl =
                            Instant::from_std(ips.valid_until()).saturating_duration_since(started);
                        Entry {
                            resolved: Ok(ip),
                            refresh_at: started + ttl.clamp(timing.min_ttl, timing.max_ttl),
                        }
                    }
                    None => Entry {
                        resolved: Err("no address".into()),
                        refresh_at: started + timing.min_ttl,
                    },
                },
                Ok(Err(e)) => Entry {
                    resolved: Err(e.to_string()),
                    refresh_at: started + timing.min_ttl,
                },
                Err(_) => Entry {
                    resolved: Err(format!("no answer within {:?}", timing.timeout)),
                    refresh_at: started + timing.min_ttl,
                },
            };
            (host, entry)
        });
    }
    let mut answers = Vec::new();
    while let Some(done) = lookups.join_next().await {
        if let Ok(answer) = done {
            let counter = match answer.1.resolved {
                Ok(_) => &found.answered,
                Err(_) => &found.failed,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            answers.push(answer);
        }
    }
    answers
}

/// Shares what the entries say, and counts a change.
fn publish(entries: &HashMap<String, Entry>, found: &Found) -> Arc<HostAddresses> {
    let mut now = HostAddresses::default();
    for (host, entry) in entries {
        now.insert(host.clone(), entry.resolved.clone());
    }
    let mut addresses = found.addresses.lock().unwrap_or_else(|e| e.into_inner());
    if **addresses != now {
        *addresses = Arc::new(now);
        found.generation.fetch_add(1, Ordering::Release);
    }
    addresses.clone()
}

/// The e2e tests' dnsmasq fixture, shared rather than copied.
#[cfg(test)]
#[path = "../../tests/tests/common/dnsmasq.rs"]
mod dnsmasq;

#[cfg(test)]
mod tests {
    use super::*;

    use super::dnsmasq::Dnsmasq;

    fn section(port: u16) -> DnsSection {
        DnsSection {
            servers: vec![format!("127.0.0.1:{port}")],
            timeout_ms: 1000,
            min_ttl_s: 1,
            max_ttl_s: 2,
        }
    }

    fn eventually(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !done() {
            assert!(
                std::time::Instant::now() < deadline,
                "{what} did not happen within 20 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    const GW: &str = "gw.patronus.test";

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn names_follow_their_ttl_and_keep_the_last_address_when_the_server_is_gone() {
        let dns = Dnsmasq::start("192.0.2.10 gw.patronus.test\n");
        let (resolver, _thread) = Resolver::start(&section(dns.port)).unwrap();
        let gw = || BTreeSet::from([GW.to_owned()]);
        // dnsmasq answers once it has bound its port; a name that failed
        // is looked up again by the next request.
        eventually("a first answer", || {
            resolver.resolve(gw()).get(GW) == Some(&Ok(ip("192.0.2.10")))
        });

        // A name the server does not know fails, with why.
        let missing = resolver.resolve(BTreeSet::from(["nowhere.patronus.test".to_owned()]));
        assert!(
            matches!(missing.get("nowhere.patronus.test"), Some(Err(_))),
            "{missing:?}"
        );
        resolver.keep(gw());

        // The answer changes on the server: once its TTL runs out the new
        // address is looked up and reported as a change.
        let mut seen = 0;
        resolver.changed(&mut seen);
        dns.serve("192.0.2.20 gw.patronus.test\n");
        eventually("the new address", || {
            resolver
                .changed(&mut seen)
                .is_some_and(|hosts| hosts.get(GW) == Some(&Ok(ip("192.0.2.20"))))
        });
        assert!(
            resolver.addresses().get("nowhere.patronus.test").is_none(),
            "a name no longer in force is forgotten"
        );

        // The server goes away: lookups fail, the last address stays.
        drop(dns);
        let (_, failed) = resolver.lookups();
        eventually("failed lookups", || resolver.lookups().1 > failed + 1);
        assert_eq!(resolver.addresses().get(GW), Some(&Ok(ip("192.0.2.20"))));
        assert_eq!(resolver.changed(&mut seen), None);
    }

    #[test]
    fn a_server_that_never_answers_fails_the_lookup() {
        // A socket that takes queries and never answers them.
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = silent.local_addr().unwrap().port();
        let (resolver, _thread) = Resolver::start(&DnsSection {
            timeout_ms: 300,
            ..section(port)
        })
        .unwrap();
        let hosts = resolver.resolve(BTreeSet::from([GW.to_owned()]));
        assert!(matches!(hosts.get(GW), Some(Err(_))), "{hosts:?}");
        assert_eq!(resolver.lookups(), (0, 1));
    }
}
