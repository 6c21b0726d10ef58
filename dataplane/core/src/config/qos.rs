//! `[qos]`: the five classes of every shaped uplink (their shares and
//! queues) and the DSCP each class marks on its packets.

use serde::Deserialize;

use super::ConfigError;
use crate::qos::{Class, ShaperConfig, TunnelRate};

/// Most tunnel slots of a shaper: slot 0 for what leaves unencrypted, one
/// per peer up to 4 095 peers; beyond, the peers without a rate share.
pub const MAX_TUNNEL_SLOTS: usize = 4096;

/// Most peers of a site with a rate of their own, so that at least one
/// slot remains for the others to share.
pub const MAX_RATED_PEERS: usize = MAX_TUNNEL_SLOTS - 2;

/// Where each peer's traffic queues in an egress shaper, and each slot's
/// own rate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelSlots {
    /// The slot of each peer, by index.
    by_peer: Vec<u16>,
    /// The rate of each slot; `None`: only the egress's applies.
    rates: Vec<Option<TunnelRate>>,
}

impl Default for TunnelSlots {
    fn default() -> Self {
        TunnelSlots {
            by_peer: Vec::new(),
            rates: vec![None],
        }
    }
}

impl TunnelSlots {
    /// Slots for peers with these rates (bit/s), by index: a slot per peer
    /// while there are at most 4 095, the peers with a rate first (1, 2,
    /// ... in peer order), then the others; with more peers, those without
    /// a rate share the slots above the rated ones. Rates shape only slots
    /// that are one peer's alone, so that no peer takes another's share.
    ///
    /// # Errors
    /// The index of the first peer with a rate beyond [`MAX_RATED_PEERS`].
    pub fn assign(rates: &[Option<u64>]) -> Result<Self, usize> {
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
        let count = (1 + rates.len()).min(MAX_TUNNEL_SLOTS);
        // At least one when any peer has no rate: see MAX_RATED_PEERS.
        let shared = count - 1 - rated;
        let first_shared = 1 + rated;
        let mut slots = TunnelSlots {
            by_peer: Vec::with_capacity(rates.len()),
            rates: vec![None; count],
        };
        let (mut next_own, mut unrated) = (1, 0);
        for rate in rates {
            let slot = match rate {
                Some(rate_bps) => {
                    let slot = next_own;
                    next_own += 1;
                    slots.rates[slot] = Some(TunnelRate {
                        rate_bps: *rate_bps,
                        burst_bytes: 0,
                    });
                    slot
                }
                None => {
                    unrated += 1;
                    first_shared + (unrated - 1) % shared
                }
            };
            slots.by_peer.push(slot as u16);
        }
        Ok(slots)
    }

    /// The slot of peer `peer` (slot 0, the unencrypted one, for a peer
    /// the configuration does not have).
    #[inline]
    pub fn of_peer(&self, peer: u32) -> u16 {
        self.by_peer.get(peer as usize).copied().unwrap_or(0)
    }

    /// How many slots the peers need, slot 0 included.
    pub fn count(&self) -> usize {
        self.rates.len()
    }

    /// Each slot's own rate, by slot.
    pub fn rates(&self) -> &[Option<TunnelRate>] {
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
        self.classes
            .compile_with(&ClassesSection::default(), shaped)
    }
}

impl ClassSection {
    /// Whether the field of this name is given.
    fn gives(&self, name: &str) -> bool {
        match name {
            "weight" => self.weight.is_some(),
            "min_percent" => self.min_percent.is_some(),
            "limit_percent" => self.limit_percent.is_some(),
            "queue_packets" => self.queue_packets.is_some(),
            "dscp" => self.dscp.is_some(),
            _ => false,
        }
    }

    /// These settings with `over`'s in place where it gives them.
    fn overlaid(&self, over: &ClassSection) -> ClassSection {
        ClassSection {
            weight: over.weight.or(self.weight),
            min_percent: over.min_percent.or(self.min_percent),
            limit_percent: over.limit_percent.or(self.limit_percent),
            queue_packets: over.queue_packets.or(self.queue_packets),
            dscp: over.dscp.or(self.dscp),
        }
    }
}

impl ClassesSection {
    /// True when no class is given.
    pub fn is_empty(&self) -> bool {
        self.by_class().iter().all(Option::is_none)
    }

    /// Compiles these classes (the file's) with `site`'s settings in place
    /// of theirs, field by field; `shaped` tells whether any uplink has a
    /// rate, without which only `dscp` does anything.
    ///
    /// # Errors
    /// The first field at fault, named where it was given:
    /// `site.qos_classes[Bulk].weight` when the site gave it,
    /// `qos.classes.Bulk.weight` when the file did.
    pub fn compile_with(
        &self,
        site: &ClassesSection,
        shaped: bool,
    ) -> Result<QosSettings, ConfigError> {
        let field = |class: Class, name: &str| {
            if site.by_class()[class.index()].is_some_and(|s| s.gives(name)) {
                format!("site.qos_classes[{class}].{name}")
            } else {
                format!("qos.classes.{class}.{name}")
            }
        };
        let mut settings = QosSettings::default();
        let shaper = &mut settings.shaper;
        let classes = self.by_class().into_iter().zip(site.by_class());
        for (&class, (file, site)) in Class::ALL.iter().zip(classes) {
            let s = match (file, site) {
                (None, None) => continue,
                (Some(file), None) => file.clone(),
                (None, Some(site)) => site.clone(),
                (Some(file), Some(site)) => file.overlaid(site),
            };
            if let Some(dscp) = s.dscp {
                if dscp > 63 {
                    return Err(ConfigError::new(
                        field(class, "dscp"),
                        format!("{dscp} is outside 0-63"),
                    ));
                }
                settings.marks[class.index()] = Some(dscp);
            }
            let shaping = ["weight", "min_percent", "limit_percent", "queue_packets"];
            if let Some(name) = shaping.iter().find(|n| s.gives(n) && !shaped) {
                return Err(ConfigError::new(
                    field(class, name),
                    "no uplink is shaped: give one a rate_mbps",
                ));
            }
            if class == Class::RealTime {
                if let Some(name) = ["weight", "min_percent"].iter().find(|n| s.gives(n)) {
                    return Err(ConfigError::new(
                        field(class, name),
                        "RealTime is served at strict priority up to its limit_percent; \
                         it has no weight or minimum",
                    ));
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
        // The shaper's own check names its fields `classes.<class>.<name>`,
        // after this section's keys.
        shaper.validate().map_err(|e| {
            let (path, message) = e.split_once(": ").unwrap_or(("classes", &e));
            let named = path
                .strip_prefix("classes.")
                .and_then(|p| p.split_once('.'))
                .and_then(|(class, name)| {
                    let class = Class::ALL.iter().copied().find(|c| c.as_str() == class)?;
                    // A file's minimum above the site's limit: the site's
                    // is the one its author can change.
                    let given = site.by_class()[class.index()];
                    let name = match given {
                        Some(s)
                            if name == "min_percent"
                                && !s.gives(name)
                                && s.gives("limit_percent") =>
                        {
                            "limit_percent"
                        }
                        _ => name,
                    };
                    Some(field(class, name))
                });
            let whole = if site.is_empty() {
                "qos.classes"
            } else {
                "site.qos_classes"
            };
            ConfigError::new(named.unwrap_or_else(|| whole.to_owned()), message)
        })?;
        Ok(settings)
    }
}

#[cfg(test)]
mod tests {
    use super::{TunnelSlots, MAX_RATED_PEERS, MAX_TUNNEL_SLOTS};
    use crate::config::{Config, ConfigError, Snapshot};
    use crate::qos::{Class, TunnelRate};

    #[test]
    fn every_peer_gets_a_slot_of_its_own_the_rated_first() {
        let slots = TunnelSlots::assign(&[None, Some(1_000_000), None, Some(2_000_000)]).unwrap();
        let by_peer: Vec<u16> = (0..4).map(|p| slots.of_peer(p)).collect();
        assert_eq!(by_peer, [3, 1, 4, 2]);
        assert_eq!(slots.count(), 5);
        assert_eq!(slots.of_peer(9), 0, "a peer the configuration lacks");
        let rate = |bps| {
            Some(TunnelRate {
                rate_bps: bps,
                burst_bytes: 0,
            })
        };
        assert_eq!(
            slots.rates(),
            [None, rate(1_000_000), rate(2_000_000), None, None]
        );
        assert!(slots.any_rated());

        let none = TunnelSlots::assign(&[]).unwrap();
        assert_eq!((none.count(), none.any_rated()), (1, false));
    }

    #[test]
    fn beyond_the_last_slot_the_unrated_peers_share_and_the_rated_keep_theirs() {
        let mut rates = vec![None; 2 * MAX_TUNNEL_SLOTS];
        rates[5_000] = Some(1_000_000);
        let slots = TunnelSlots::assign(&rates).unwrap();
        assert_eq!(slots.count(), MAX_TUNNEL_SLOTS);
        assert_eq!(slots.of_peer(5_000), 1);
        let unrated = (0..rates.len() as u32).filter(|&p| p != 5_000);
        let mut uses = vec![0u32; MAX_TUNNEL_SLOTS];
        for peer in unrated {
            uses[usize::from(slots.of_peer(peer))] += 1;
        }
        assert_eq!(
            uses[..2],
            [0, 0],
            "slot 0 and the rated peer's slot are no one else's"
        );
        // 8 191 unrated peers over 4 094 slots: two or three each.
        assert!(uses[2..].iter().all(|&n| (2..=3).contains(&n)), "{uses:?}");

        let mut too_many = vec![Some(1_000_000); MAX_RATED_PEERS + 2];
        too_many.insert(0, None);
        assert_eq!(TunnelSlots::assign(&too_many), Err(MAX_RATED_PEERS + 1));
        let all_rated = vec![Some(1_000_000); MAX_RATED_PEERS];
        assert!(TunnelSlots::assign(&all_rated).is_ok());
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

    /// `snapshot` (of `file`) with a site whose class settings are `classes`.
    fn apply_classes(
        file: &str,
        snapshot: &Snapshot,
        classes: super::ClassesSection,
    ) -> Result<Snapshot, ConfigError> {
        use crate::config::site::{Capabilities, SiteSections};
        let sections = SiteSections {
            qos_classes: classes,
            ..Config::from_toml(file).unwrap().site_sections()
        };
        let caps = Capabilities::of(&snapshot.ports, &snapshot.dpi.classifier);
        let mut next = snapshot.clone();
        sections
            .compile(caps)
            .and_then(|site| next.set_site(site))
            .map(|()| next)
    }

    #[test]
    fn a_sites_class_settings_replace_the_files_field_by_field_and_errors_name_them() {
        use super::{ClassSection, ClassesSection};

        let file = format!(
            r#"{SHAPED}
            [qos.classes.Bulk]
            weight = 5
            min_percent = 10
            dscp = 8
            "#
        );
        let snapshot = validate(&file).unwrap();
        let apply = |classes| apply_classes(&file, &snapshot, classes);

        // The site gives Bulk more weight and marks RealTime; Bulk keeps
        // the file's minimum and mark.
        let next = apply(ClassesSection {
            real_time: Some(ClassSection {
                limit_percent: Some(25),
                dscp: Some(46),
                ..ClassSection::default()
            }),
            bulk: Some(ClassSection {
                weight: Some(50),
                ..ClassSection::default()
            }),
            ..ClassesSection::default()
        })
        .unwrap();
        let shaper = &next.shapers[0].config;
        assert_eq!(shaper.realtime.limit_percent, 25);
        let bulk = shaper.weighted[3];
        assert_eq!((bulk.weight, bulk.min_percent), (50, 10));
        assert_eq!(
            (next.qos.shaper.realtime, next.qos.shaper.weighted),
            (shaper.realtime, shaper.weighted),
            "the class settings the shapers run"
        );
        assert_eq!(next.qos.marks[Class::RealTime.index()], Some(46));
        assert_eq!(next.qos.marks[Class::Bulk.index()], Some(8), "the file's");
        // A site without class settings brings the file's back.
        let back = apply(ClassesSection::default()).unwrap();
        assert_eq!(back.shapers[0].config, snapshot.shapers[0].config);
        assert_eq!(back.qos, snapshot.qos);

        let refused = |classes: ClassesSection| apply(classes).unwrap_err().field;
        let bulk = |section: ClassSection| ClassesSection {
            bulk: Some(section),
            ..ClassesSection::default()
        };
        let weight = |weight| ClassSection {
            weight: Some(weight),
            ..ClassSection::default()
        };
        assert_eq!(refused(bulk(weight(0))), "site.qos_classes[Bulk].weight");
        // The file's minimum above the site's limit: the site's field is
        // named, as the one its author can change.
        let limit = ClassSection {
            limit_percent: Some(5),
            ..ClassSection::default()
        };
        assert_eq!(refused(bulk(limit)), "site.qos_classes[Bulk].limit_percent");
        let minimum = ClassSection {
            min_percent: Some(95),
            ..ClassSection::default()
        };
        assert_eq!(refused(bulk(minimum)), "site.qos_classes");
        let rt_weight = ClassesSection {
            real_time: Some(weight(3)),
            ..ClassesSection::default()
        };
        assert_eq!(refused(rt_weight), "site.qos_classes[RealTime].weight");
        let mark = ClassSection {
            dscp: Some(64),
            ..ClassSection::default()
        };
        assert_eq!(refused(bulk(mark)), "site.qos_classes[Bulk].dscp");

        // Without a shaped uplink only marks do anything.
        let file = r#"
            [[port]]
            name = "wan"
            device = "net_ring0"
            addresses = ["192.0.2.2/24"]
            [qos.classes.Bulk]
            dscp = 8
        "#;
        let snapshot = validate(file).unwrap();
        let apply = |classes| apply_classes(file, &snapshot, classes);
        let e = apply(bulk(weight(5))).unwrap_err();
        assert_eq!(e.field, "site.qos_classes[Bulk].weight", "{e}");
        let marked = apply(bulk(ClassSection {
            dscp: Some(10),
            ..ClassSection::default()
        }))
        .unwrap();
        assert_eq!(marked.qos.marks[Class::Bulk.index()], Some(10));
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
