//! `[dns]`: how the host names of peer endpoints are resolved, and what
//! they resolved to.
//!
//! Compiling a configuration never resolves anything: it looks each host
//! name up in a [`HostAddresses`] that the data plane's resolver filled
//! beforehand (asynchronously, with a timeout) and keeps fresh (again at
//! the end of each answer's TTL, keeping the last good address when a
//! lookup fails). So a slow or dead DNS server never stalls the control
//! loop, and an endpoint that moves is followed.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use serde::Deserialize;

use super::site::PeerSection;
use super::ConfigError;

/// `[dns]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DnsSection {
    /// Name servers to ask (`address:port`); empty: the system's
    /// (`/etc/resolv.conf`, and `/etc/hosts` first).
    pub servers: Vec<String>,
    /// How long one lookup may take before it counts as failed.
    pub timeout_ms: u32,
    /// The shortest time an answer is kept before it is looked up again,
    /// however short its TTL; also the wait before retrying a failed lookup.
    pub min_ttl_s: u32,
    /// The longest time an answer is kept, however long its TTL.
    pub max_ttl_s: u32,
}

impl Default for DnsSection {
    fn default() -> Self {
        DnsSection {
            servers: Vec::new(),
            timeout_ms: 2000,
            min_ttl_s: 30,
            max_ttl_s: 3600,
        }
    }
}

/// Most name servers `[dns]` lists.
const MAX_SERVERS: usize = 8;

impl DnsSection {
    /// The name servers' addresses, each checked.
    ///
    /// # Errors
    /// A server that is not `address:port`, by field.
    pub fn server_addresses(&self) -> Result<Vec<SocketAddr>, ConfigError> {
        self.servers
            .iter()
            .enumerate()
            .map(|(i, s)| {
                s.parse().map_err(|_| {
                    ConfigError::new(
                        format!("dns.servers[{i}]"),
                        format!("{s:?} is not an address:port (\"192.0.2.53:53\")"),
                    )
                })
            })
            .collect()
    }

    pub(super) fn check(&self) -> Result<(), ConfigError> {
        if self.servers.len() > MAX_SERVERS {
            return Err(ConfigError::new(
                "dns.servers",
                format!("at most {MAX_SERVERS} servers"),
            ));
        }
        self.server_addresses()?;
        if !(100..=60_000).contains(&self.timeout_ms) {
            return Err(ConfigError::new("dns.timeout_ms", "must be 100-60000"));
        }
        if !(1..=86_400).contains(&self.min_ttl_s) {
            return Err(ConfigError::new("dns.min_ttl_s", "must be 1-86400"));
        }
        if self.max_ttl_s < self.min_ttl_s || self.max_ttl_s > 86_400 {
            return Err(ConfigError::new(
                "dns.max_ttl_s",
                "must be at least min_ttl_s and at most 86400",
            ));
        }
        Ok(())
    }
}

/// What each endpoint host name resolved to when last looked up: an
/// address, or why there is none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostAddresses(BTreeMap<String, Result<IpAddr, String>>);

impl HostAddresses {
    /// Records what `host` resolved to.
    pub fn insert(&mut self, host: String, resolved: Result<IpAddr, String>) {
        self.0.insert(host, resolved);
    }

    /// What `host` resolved to; `None` when it was never looked up.
    pub fn get(&self, host: &str) -> Option<&Result<IpAddr, String>> {
        self.0.get(host)
    }

    /// Every host name with what it resolved to, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Result<IpAddr, String>)> {
        self.0.iter().map(|(h, r)| (h.as_str(), r))
    }
}

/// The host names (addresses that are not IP addresses) among the
/// endpoints of `peers`.
pub fn host_names<'a>(peers: impl IntoIterator<Item = &'a PeerSection>) -> BTreeSet<String> {
    let mut hosts = BTreeSet::new();
    for p in peers {
        let addresses = p
            .endpoint
            .iter()
            .map(|e| e.address.as_str())
            .chain(p.endpoints.iter().map(|e| e.address.as_str()));
        for address in addresses {
            if address.parse::<IpAddr>().is_err() {
                hosts.insert(address.to_owned());
            }
        }
    }
    hosts
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::config::Config;
    use crate::testing::key_file;

    fn config(name: &str) -> Config {
        let key = key_file(name, [7; 32]);
        Config::from_toml(&format!(
            r#"
            [[port]]
            name = "wan"
            device = "net_null0"
            addresses = ["192.0.2.2/24"]
            [tunnel]
            private_key_file = "{}"
            [[peer]]
            name = "hq"
            endpoint = {{ address = "hq.example.net", port = 51820 }}
            wireguard = {{ public_key = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=" }}
            allowed_ips = ["10.9.0.0/24"]
            [[peer]]
            name = "dc"
            endpoint = {{ address = "192.0.2.9", port = 51820 }}
            wireguard = {{ public_key = "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=" }}
            allowed_ips = ["10.10.0.0/24"]
            "#,
            key.display()
        ))
        .unwrap()
    }

    #[test]
    fn host_names_are_looked_up_in_what_the_resolver_found_never_resolved_here() {
        let cfg = config("dns-lookup");
        assert_eq!(
            cfg.host_names().into_iter().collect::<Vec<_>>(),
            ["hq.example.net"],
            "IP addresses need no lookup"
        );

        let mut hosts = HostAddresses::default();
        hosts.insert("hq.example.net".into(), Ok("192.0.2.77".parse().unwrap()));
        let snapshot = cfg.validate_resolved(1, Arc::new(hosts)).unwrap();
        let peers = &snapshot.tunnel.as_ref().unwrap().config.peers;
        assert_eq!(peers[0].endpoint, Some("192.0.2.77:51820".parse().unwrap()));
        assert_eq!(peers[1].endpoint, Some("192.0.2.9:51820".parse().unwrap()));
        assert_eq!(
            snapshot.site.host_names().into_iter().collect::<Vec<_>>(),
            ["hq.example.net"]
        );

        // A name that did not resolve is refused at its field, with why.
        let mut failed = HostAddresses::default();
        failed.insert("hq.example.net".into(), Err("NXDOMAIN".into()));
        let e = cfg.validate_resolved(1, Arc::new(failed)).unwrap_err();
        assert_eq!(e.field, "peer[hq].endpoint.address");
        assert!(e.message.contains("NXDOMAIN"), "{}", e.message);

        // One never looked up is refused too: nothing resolves while compiling.
        let e = cfg.validate(1).unwrap_err();
        assert_eq!(e.field, "peer[hq].endpoint.address");
        assert!(e.message.contains("not been resolved"), "{}", e.message);
    }

    #[test]
    fn dns_settings_are_checked() {
        for (text, field) in [
            ("servers = [\"ns1\"]", "dns.servers[0]"),
            ("timeout_ms = 10", "dns.timeout_ms"),
            ("min_ttl_s = 0", "dns.min_ttl_s"),
            ("min_ttl_s = 60\nmax_ttl_s = 30", "dns.max_ttl_s"),
        ] {
            let section: DnsSection = toml::from_str(text).unwrap();
            assert_eq!(section.check().unwrap_err().field, field, "{text}");
        }
        let ok: DnsSection = toml::from_str("servers = [\"127.0.0.1:5353\"]").unwrap();
        assert_eq!(
            ok.server_addresses().unwrap(),
            ["127.0.0.1:5353".parse::<SocketAddr>().unwrap()]
        );
    }
}
