//! `[qos]`: the five classes of every shaped uplink (their shares and
//! queues) and the DSCP each class marks on its packets.

use serde::Deserialize;

use super::ConfigError;
use crate::qos::{Class, ShaperConfig, TunnelRate};

/// Tunnel slots of every shaper: slot 0 for what leaves unencrypted, one of
/// its own for each peer with a rate, the rest shared by the other peers.
pub const TUNNEL_SLOTS: usize = 64;

/// Most peers of a site with a rate of their own, so that at least 31 slots
/// remain for the others to share.
pub const MAX_RATED_PEERS: usize = 32;

/// Where each peer's traffic queues in an egress shaper, and each slot's
/// own rate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelSlots {
    /// The slot of each peer, by index.
    by_peer: Vec<u16>,
    /// The rate of each slot; `None`: only the egress's applies.
    rates: [Option<TunnelRate>; TUNNEL_SLOTS],
}

impl Default for TunnelSlots {
    fn default() -> Self {
        TunnelSlots {
            by_peer: Vec::new(),
            rates: [None; TUNNEL_SLOTS],
        }
    }
}

impl TunnelSlots {
    /// Slots for peers with these rates (bit/s), by index: a peer with a
    /// rate gets a slot of its own (1, 2, ... in peer order); the others
    /// share the slots above those by index. Rates shape only when a slot
    /// is the peer's alone, so that no peer takes another's share.
    ///
    /// # Errors
    /// The index of the first peer with a rate beyond [`MAX_RATED_PEERS`].
    pub fn assign(rates: &[Option<u64>]) -> Result<Self, usize> {
        let mut slots = TunnelSlots::default();
        let rated = rates.iter().filter(|r| r.is_some()).count();
        if rated > MAX_RATED_PEERS {
            let beyond = rates
                .iter()
                .enumerate()
                .filter(|(_, r)| r.is_some())
                .nth(MAX_RATED_PEERS)
                .map_or(0, |(i, _)| i);
            return Err(beyond);
        }
        let shared = (TUNNEL_SLOTS - 1 - rated) as u16;
        let first_shared = 1 + rated as u16;
        let mut next_own = 1;
        for (peer, rate) in rates.iter().enumerate() {
            let slot = match rate {
                Some(rate_bps) => {
                    let slot = next_own;
                    next_own += 1;
                    slots.rates[usize::from(slot)] = Some(TunnelRate {
                        rate_bps: *rate_bps,
                        burst_bytes: 0,
                    });
                    slot
                }
                None => first_shared + (peer % usize::from(shared)) as u16,
            };
            slots.by_peer.push(slot);
        }
        Ok(slots)
    }

    /// The slot of peer `peer` (slot 0, the unencrypted one, for a peer
    /// the configuration does not have).
    #[inline]
    pub fn of_peer(&self, peer: u32) -> u16 {
        self.by_peer.get(peer as usize).copied().unwrap_or(0)
    }

    /// Each slot's own rate, by slot.
    pub fn rates(&self) -> &[Option<TunnelRate>; TUNNEL_SLOTS] {
        &self.rates
    }

    /// Whether some peer has a rate of its own.
    pub fn any_rated(&self) -> bool {
        self.rates.iter().any(Option::is_some)
    }
}

/// `[qos]`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct QosSection {
    /// `[qos.classes.<class>]`, by class name.
    #[serde(default)]
    pub classes: ClassesSection,
}

/// `[qos.classes]`: a table per class, each optional.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClassesSection {
    /// `[qos.classes.RealTime]`.
    #[serde(default, rename = "RealTime")]
    pub real_time: Option<ClassSection>,
    /// `[qos.classes.Interactive]`.
    #[serde(default, rename = "Interactive")]
    pub interactive: Option<ClassSection>,
    /// `[qos.classes.Streaming]`.
    #[serde(default, rename = "Streaming")]
    pub streaming: Option<ClassSection>,
    /// `[qos.classes.Standard]`.
    #[serde(default, rename = "Standard")]
    pub standard: Option<ClassSection>,
    /// `[qos.classes.Bulk]`.
    #[serde(default, rename = "Bulk")]
    pub bulk: Option<ClassSection>,
}

impl ClassesSection {
    /// The tables in class order ([`Class::ALL`]).
    fn by_class(&self) -> [Option<&ClassSection>; Class::COUNT] {
        [
            self.real_time.as_ref(),
            self.interactive.as_ref(),
            self.streaming.as_ref(),
            self.standard.as_ref(),
            self.bulk.as_ref(),
        ]
    }
}

/// One class's settings; what is absent keeps its default.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClassSection {
    /// Its share of what is left after RealTime and the minimums, relative
    /// to the other weighted classes' (1-1000; not for RealTime).
    #[serde(default)]
    pub weight: Option<u16>,
    /// The share of the rate it is served first (%; not for RealTime).
    #[serde(default)]
    pub min_percent: Option<u8>,
    /// The share it never exceeds (%); RealTime's is its strict-priority cap.
    #[serde(default)]
    pub limit_percent: Option<u8>,
    /// Most packets it holds per tunnel.
    #[serde(default)]
    pub queue_packets: Option<u32>,
    /// The DSCP its packets are marked with (0-63; absent: left as sent).
    #[serde(default)]
    pub dscp: Option<u8>,
}

/// `[qos]` compiled.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QosSettings {
    /// The class settings every shaped uplink starts from (its rate, burst
    /// and overhead are the uplink's own).
    pub shaper: ShaperConfig,
    /// The DSCP each class marks, by [`Class::index`]; `None`: left as sent.
    pub marks: [Option<u8>; Class::COUNT],
}

impl QosSettings {
    /// Whether any class marks its packets.
    pub fn marks_any(&self) -> bool {
        self.marks.iter().any(Option::is_some)
    }
}

impl Default for QosSettings {
    fn default() -> Self {
        QosSettings {
            shaper: ShaperConfig::new(1_000_000_000),
            marks: [None; Class::COUNT],
        }
    }
}

impl QosSection {
    /// Checks every class's settings; `shaped` tells whether any uplink has
    /// a rate, without which only `dscp` does anything.
    ///
    /// # Errors
    /// The first field at fault (`qos.classes.Bulk.weight`).
    pub fn compile(&self, shaped: bool) -> Result<QosSettings, ConfigError> {
        let mut settings = QosSettings::default();
        let shaper = &mut settings.shaper;
        for (class, section) in Class::ALL.iter().zip(self.classes.by_class()) {
            let Some(s) = section else { continue };
            let field = |name: &str| format!("qos.classes.{class}.{name}");
            if let Some(dscp) = s.dscp {
                if dscp > 63 {
                    return Err(ConfigError::new(
                        field("dscp"),
                        format!("{dscp} is outside 0-63"),
                    ));
                }
                settings.marks[class.index()] = Some(dscp);
            }
            let shaping = [
                ("weight", s.weight.is_some()),
                ("min_percent", s.min_percent.is_some()),
                ("limit_percent", s.limit_percent.is_some()),
                ("queue_packets", s.queue_packets.is_some()),
            ];
            if let Some((name, _)) = shaping.iter().find(|(_, set)| *set && !shaped) {
                return Err(ConfigError::new(
                    field(name),
                    "no uplink is shaped: give one a rate_mbps",
                ));
            }
            if *class == Class::RealTime {
                for (name, set) in [
                    ("weight", s.weight.is_some()),
                    ("min_percent", s.min_percent.is_some()),
                ] {
                    if set {
                        return Err(ConfigError::new(
                            field(name),
                            "RealTime is served at strict priority up to its limit_percent; \
                             it has no weight or minimum",
                        ));
                    }
                }
                let rt = &mut shaper.realtime;
                rt.limit_percent = s.limit_percent.unwrap_or(rt.limit_percent);
                rt.queue_packets = s.queue_packets.unwrap_or(rt.queue_packets);
            } else {
                let w = &mut shaper.weighted[class.index() - 1];
                w.weight = s.weight.unwrap_or(w.weight);
                w.min_percent = s.min_percent.unwrap_or(w.min_percent);
                w.limit_percent = s.limit_percent.unwrap_or(w.limit_percent);
                w.queue_packets = s.queue_packets.unwrap_or(w.queue_packets);
            }
        }
        // The shaper's own check names its fields as `classes.<class>.<name>`
        // after this section's keys.
        shaper.validate().map_err(|e| match e.split_once(": ") {
            Some((path, message)) => ConfigError::new(format!("qos.{path}"), message),
            None => ConfigError::new("qos.classes", e),
        })?;
        Ok(settings)
    }
}

#[cfg(test)]
mod tests {
    use super::{TunnelSlots, MAX_RATED_PEERS, TUNNEL_SLOTS};
    use crate::config::{Config, ConfigError, Snapshot};
    use crate::qos::{Class, TunnelRate};

    #[test]
    fn rated_peers_get_slots_of_their_own_and_the_others_share_the_rest() {
        let slots = TunnelSlots::assign(&[None, Some(1_000_000), None, Some(2_000_000)]).unwrap();
        let by_peer: Vec<u16> = (0..4).map(|p| slots.of_peer(p)).collect();
        // Rated: 1 and 2; the others in 3..64, by index.
        assert_eq!(by_peer, [3, 1, 5, 2]);
        assert_eq!(slots.of_peer(9), 0, "a peer the configuration lacks");
        let rate = |bps| {
            Some(TunnelRate {
                rate_bps: bps,
                burst_bytes: 0,
            })
        };
        assert_eq!(slots.rates()[1], rate(1_000_000));
        assert_eq!(slots.rates()[2], rate(2_000_000));
        assert_eq!(slots.rates().iter().flatten().count(), 2);
        assert!(slots.any_rated());

        // Many unrated peers wrap around the shared slots only.
        let many = TunnelSlots::assign(&[None; 200]).unwrap();
        assert!((0..200).all(|p| (1..TUNNEL_SLOTS as u16).contains(&many.of_peer(p))));
        assert!(!many.any_rated());

        let mut too_many = vec![Some(1_000_000); MAX_RATED_PEERS + 2];
        too_many.insert(0, None);
        assert_eq!(TunnelSlots::assign(&too_many), Err(MAX_RATED_PEERS + 1));
    }

    const SHAPED: &str = r#"
        [[port]]
        name = "wan"
        device = "net_ring0"
        addresses = ["192.0.2.2/24"]
        [[uplink]]
        name = "branch"
        port = "wan"
        rate_mbps = 50
    "#;

    fn validate(text: &str) -> Result<Snapshot, ConfigError> {
        Config::from_toml(text)?.validate(1)
    }

    #[test]
    fn class_settings_reach_every_shaper_and_marks_the_snapshot() {
        let cfg = validate(&format!(
            r#"{SHAPED}
            [qos.classes.RealTime]
            limit_percent = 20
            dscp = 46
            [qos.classes.Bulk]
            weight = 5
            min_percent = 10
            limit_percent = 50
            queue_packets = 300
            dscp = 8
            "#
        ))
        .unwrap();
        let shaper = &cfg.shapers[0].config;
        assert_eq!(shaper.rate_bps, 50_000_000, "the uplink's own rate");
        assert_eq!(shaper.realtime.limit_percent, 20);
        assert_eq!(shaper.realtime.queue_packets, 256, "default kept");
        let bulk = shaper.weighted[3];
        assert_eq!(
            (
                bulk.weight,
                bulk.min_percent,
                bulk.limit_percent,
                bulk.queue_packets
            ),
            (5, 10, 50, 300)
        );
        assert_eq!(shaper.weighted[0].weight, 40, "Interactive untouched");
        let mut marks = [None; Class::COUNT];
        marks[Class::RealTime.index()] = Some(46);
        marks[Class::Bulk.index()] = Some(8);
        assert_eq!(cfg.qos.marks, marks);
        assert!(cfg.qos.marks_any());
        // Without [qos], nothing is marked.
        assert!(!validate(SHAPED).unwrap().qos.marks_any());
    }

    #[test]
    fn marking_alone_needs_no_shaped_uplink() {
        let text = r#"
            [[port]]
            name = "wan"
            device = "net_ring0"
            addresses = ["192.0.2.2/24"]
            [qos.classes.Streaming]
            dscp = 26
        "#;
        let cfg = validate(text).unwrap();
        assert_eq!(cfg.qos.marks[Class::Streaming.index()], Some(26));
        assert!(cfg.shapers.is_empty());
    }

    #[test]
    fn invalid_class_settings_are_refused_by_field() {
        let cases = [
            ("[qos.classes.Bulk]\ndscp = 64", "qos.classes.Bulk.dscp"),
            ("[qos.classes.Bulk]\nweight = 0", "qos.classes.Bulk.weight"),
            (
                "[qos.classes.Standard]\nmin_percent = 60\nlimit_percent = 50",
                "qos.classes.Standard.min_percent",
            ),
            (
                "[qos.classes.Interactive]\nlimit_percent = 0",
                "qos.classes.Interactive.limit_percent",
            ),
            (
                "[qos.classes.RealTime]\nlimit_percent = 101",
                "qos.classes.RealTime.limit_percent",
            ),
            (
                "[qos.classes.RealTime]\nweight = 10",
                "qos.classes.RealTime.weight",
            ),
            (
                "[qos.classes.RealTime]\nmin_percent = 10",
                "qos.classes.RealTime.min_percent",
            ),
            (
                "[qos.classes.Bulk]\nqueue_packets = 0",
                "qos.classes.Bulk.queue_packets",
            ),
            (
                "[qos.classes.Streaming]\nmin_percent = 40\n[qos.classes.Standard]\nmin_percent = 40",
                "qos.classes",
            ),
        ];
        for (qos, field) in cases {
            let e = validate(&format!("{SHAPED}\n{qos}")).unwrap_err();
            assert_eq!(e.field, field, "{qos}: {e}");
        }
        // Shares shape nothing without a shaped uplink.
        let text = format!("{SHAPED}\n[qos.classes.Bulk]\nweight = 5");
        let qos = Config::from_toml(&text).unwrap().qos;
        let e = qos.compile(false).unwrap_err();
        assert_eq!(e.field, "qos.classes.Bulk.weight", "{e}");
        // A peer's rate needs a shaped uplink and a sane value.
        let peer = |rate: &str| {
            format!(
                r#"
                [tunnel]
                private_key_file = "{key}"
                addresses = ["10.99.0.1/24"]
                [[peer]]
                name = "hq"
                endpoint = {{ address = "192.0.2.9", port = 51820 }}
                wireguard = {{ public_key = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=" }}
                allowed_ips = ["10.9.0.0/24"]
                rate_mbps = {rate}
                "#,
                key = crate::testing::key_file("qos-peer-rate", [7; 32]).display()
            )
        };
        let cfg = validate(&format!("{SHAPED}{}", peer("2.5"))).unwrap();
        assert_eq!(cfg.site.peers[0].rate_bps, Some(2_500_000));
        assert_eq!(cfg.site.tunnel_slots.of_peer(0), 1);
        for (text, field) in [
            (format!("{SHAPED}{}", peer("0")), "peer[hq].rate_mbps"),
            (format!("{SHAPED}{}", peer("nan")), "peer[hq].rate_mbps"),
            (
                format!("{}{}", SHAPED.replace("rate_mbps = 50", ""), peer("2.5")),
                "peer[hq].rate_mbps",
            ),
        ] {
            let e = validate(&text).unwrap_err();
            assert_eq!(e.field, field, "{e}");
        }
        // An unknown class or key does not parse.
        for text in [
            "[qos.classes.Video]\ndscp = 1",
            "[qos.classes.Bulk]\nrate = 1",
        ] {
            assert!(
                Config::from_toml(&format!("{SHAPED}\n{text}")).is_err(),
                "{text}"
            );
        }
    }
}
