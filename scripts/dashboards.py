#!/usr/bin/env python3
"""Writes the SD-WAN dashboards of dashboards/ from the definitions below.

    python3 scripts/dashboards.py           # (re)write the JSON files
    python3 scripts/dashboards.py --check   # fail if a file differs from what this writes

The dashboards are Grafana JSON (schema version 39), provisioned by the Helm
chart like every file in dashboards/. Each panel's queries use the
`$datasource`, `$site`, `$instance` and, where paths are shown, `$path_id`
template variables. tests/monitoring/check.py sends every query of every
dashboard to a real Prometheus scraping the demo topology.
"""

import json
import sys
from pathlib import Path

DASHBOARDS = Path(__file__).resolve().parent.parent / "dashboards"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}

# The label filters every data-plane query carries.
GW = 'site=~"$site", instance=~"$instance"'
PATH = GW + ', path_id=~"$path_id"'


def target(expr, legend="", ref="A", instant=False, table=False):
    """One PromQL query of a panel."""
    t = {"datasource": DATASOURCE, "refId": ref, "expr": expr, "legendFormat": legend}
    if table:
        t["format"] = "table"
    t["range"] = not instant
    t["instant"] = instant
    return t


def per_path_now(expr, ref):
    """A table query: `expr`'s value now for each gateway and path."""
    return target(f"max by (instance, path_id) ({expr})", ref=ref, instant=True, table=True)


def bits_both_ways(prefix, by, filters):
    """Bits per second sent (tx) and received (rx) of `prefix`'s byte
    counters, per gateway and `by`."""
    return [
        target(
            f"sum by (instance, {by}) (rate({prefix}_{way}_bytes_total{{{filters}}}[$__rate_interval])) * 8",
            f"{{{{{by}}}}} {way}",
            ref=ref,
        )
        for way, ref in (("tx", "A"), ("rx", "B"))
    ]


def thresholds(*steps):
    """Threshold steps: (colour, from value), the first from minus infinity."""
    return {
        "mode": "absolute",
        "steps": [{"color": c, "value": v} for c, v in steps],
    }


GOOD_HIGH = thresholds(("red", None), ("orange", 50), ("green", 70))
LOSS = thresholds(("green", None), ("orange", 1), ("red", 5))


class Layout:
    """Places panels left to right in rows of 24 columns."""

    def __init__(self):
        self.x = self.y = self.row_h = 0
        self.next_id = 1

    def place(self, panel, w, h):
        if self.x + w > 24:
            self.x, self.y = 0, self.y + self.row_h
            self.row_h = 0
        panel["id"] = self.next_id
        self.next_id += 1
        panel["gridPos"] = {"h": h, "w": w, "x": self.x, "y": self.y}
        self.x += w
        self.row_h = max(self.row_h, h)
        return panel

    def row(self, title):
        if self.x:
            self.x, self.y, self.row_h = 0, self.y + self.row_h, 0
        panel = {"type": "row", "title": title, "collapsed": False, "panels": []}
        panel = self.place(panel, 24, 1)
        self.x, self.y, self.row_h = 0, self.y + 1, 0
        return panel


def panel(kind, title, description, targets, field_defaults, options, **extra):
    p = {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "targets": targets,
        "fieldConfig": {"defaults": field_defaults, "overrides": extra.pop("overrides", [])},
        "options": options,
    }
    p.update(extra)
    return p


def timeseries(title, description, targets, unit, soft_max=None, steps=None, bars=False, **extra):
    custom = {
        "drawStyle": "bars" if bars else "line",
        "lineWidth": 1,
        "fillOpacity": 80 if bars else 10,
        "showPoints": "never",
        "spanNulls": False,
        "axisSoftMin": 0,
    }
    if soft_max is not None:
        custom["axisSoftMax"] = soft_max
    defaults = {"unit": unit, "custom": custom, "color": {"mode": "palette-classic"}}
    if steps:
        defaults["thresholds"] = steps
        custom["thresholdsStyle"] = {"mode": "dashed"}
    options = {
        "legend": {"displayMode": "table", "placement": "bottom", "showLegend": True, "calcs": ["mean", "max"]},
        "tooltip": {"mode": "multi", "sort": "desc"},
    }
    return panel("timeseries", title, description, targets, defaults, options, **extra)


def stat(title, description, targets, unit, steps, **extra):
    defaults = {"unit": unit, "mappings": [], "color": {"mode": "thresholds"}, "thresholds": steps}
    options = {
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        "colorMode": "value",
        "graphMode": "area",
        "justifyMode": "auto",
        "orientation": "auto",
        "textMode": "auto",
        "wideLayout": True,
        "showPercentChange": False,
    }
    return panel("stat", title, description, targets, defaults, options, **extra)


def state_timeline(title, description, targets, mappings, steps, **extra):
    defaults = {
        "mappings": [{"type": "value", "options": mappings}],
        "color": {"mode": "thresholds"},
        "thresholds": steps,
        "custom": {"fillOpacity": 80, "lineWidth": 0},
    }
    options = {
        "mergeValues": True,
        "showValue": "never",
        "alignValue": "left",
        "rowHeight": 0.9,
        "legend": {"showLegend": True, "displayMode": "list", "placement": "bottom"},
        "tooltip": {"mode": "single", "sort": "none"},
    }
    return panel("state-timeline", title, description, targets, defaults, options, **extra)


def mapping(value, text, color, index):
    return {str(value): {"text": text, "color": color, "index": index}}


UP_DOWN = {**mapping(0, "down", "red", 0), **mapping(1, "up", "green", 1)}
UP_DOWN_STEPS = thresholds(("red", None), ("green", 1))


def bargauge(title, description, targets, unit, **extra):
    defaults = {"unit": unit, "color": {"mode": "palette-classic"}, "thresholds": thresholds(("blue", None))}
    options = {
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        "orientation": "horizontal",
        "displayMode": "gradient",
        "showUnfilled": True,
        "valueMode": "color",
        "namePlacement": "auto",
        "sizing": "auto",
        "minVizHeight": 16,
        "minVizWidth": 8,
        "maxVizHeight": 300,
    }
    return panel("bargauge", title, description, targets, defaults, options, **extra)


def table(title, description, targets, transformations, overrides, **extra):
    defaults = {
        "custom": {"align": "auto", "cellOptions": {"type": "auto"}, "inspect": False},
        "color": {"mode": "thresholds"},
        "thresholds": thresholds(("text", None)),
        "mappings": [],
    }
    options = {"showHeader": True, "cellHeight": "sm", "footer": {"show": False, "reducer": ["sum"], "fields": ""}}
    return panel(
        "table", title, description, targets, defaults, options,
        transformations=transformations, overrides=overrides, **extra,
    )


def override(name, **properties):
    return {
        "matcher": {"id": "byName", "options": name},
        "properties": [{"id": k.replace("__", "."), "value": v} for k, v in properties.items()],
    }


def variable(name, label, query, hide=0):
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DATASOURCE,
        "definition": query,
        "query": {"qryType": 1, "query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
        "current": {},
        "hide": hide,
        "includeAll": True,
        "allValue": ".*",
        "multi": True,
        "options": [],
        "refresh": 2,
        "regex": "",
        "skipUrlSync": False,
        "sort": 1,
    }


def variables(paths):
    found = [
        {
            "name": "datasource",
            "label": "Data source",
            "type": "datasource",
            "query": "prometheus",
            "current": {},
            "hide": 0,
            "includeAll": False,
            "multi": False,
            "options": [],
            "refresh": 1,
            "regex": "",
            "skipUrlSync": False,
        },
        variable("site", "Site", "label_values(patronus_tunnel_status, site)"),
        variable("instance", "Gateway", 'label_values(patronus_port_link_up{site=~"$site"}, instance)'),
    ]
    if paths:
        found.append(
            variable("path_id", "Path", 'label_values(patronus_path_info{site=~"$site", instance=~"$instance"}, path_id)')
        )
    return found


def comparison(default, choices):
    """A custom variable: how far back the "before" figures are read."""
    return {
        "name": "before",
        "label": "Compare with",
        "description": "How far back the before-and-after figures look.",
        "type": "custom",
        "query": ",".join(choices),
        "current": {"selected": True, "text": default, "value": default},
        "options": [{"selected": c == default, "text": c, "value": c} for c in choices],
        "hide": 0,
        "includeAll": False,
        "multi": False,
        "skipUrlSync": False,
    }


def dashboard(uid, title, description, panels, paths, annotations=(), extra_variables=()):
    return {
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                },
                *annotations,
            ]
        },
        "description": description,
        "editable": True,
        "fiscalYearStartMonth": 0,
        "graphTooltip": 1,
        "links": [
            {
                "title": "Patronus",
                "type": "dashboards",
                "tags": ["patronus"],
                "asDropdown": True,
                "includeVars": True,
                "keepTime": True,
                "icon": "external link",
                "targetBlank": False,
                "tooltip": "",
                "url": "",
            }
        ],
        "panels": panels,
        "refresh": "30s",
        "schemaVersion": 39,
        "tags": ["patronus", "sd-wan"],
        "templating": {"list": variables(paths) + list(extra_variables)},
        "time": {"from": "now-6h", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "title": title,
        "uid": uid,
        "version": 1,
        "weekStart": "",
    }


def banded(expr, green_from, orange_from):
    """`expr` with a `color` label: green, orange or red by its value."""
    return (
        f'label_replace(({expr}) >= {green_from}, "color", "{GREEN}", "", "")'
        f' or label_replace(({expr}) < {green_from} and ({expr}) >= {orange_from}, "color", "{ORANGE}", "", "")'
        f' or label_replace(({expr}) < {orange_from}, "color", "{RED}", "", "")'
    )


# Grafana's own green, orange and red.
GREEN, ORANGE, RED = "#73BF69", "#FF9830", "#F2495C"


# Which path carries a peer's traffic, with the peer's name: a path's series
# joined with patronus_path_info's `peer` label.
def with_peer(expr):
    return f"{expr} * on (instance, path_id) group_left (peer) patronus_path_info"


def topology():
    lay = Layout()
    tunnels = f'patronus_tunnel_status{{status="up", dataplane="", {GW}}}'
    # The node graph takes frames, not series: each query's labels become
    # its fields (id, title, source, target, color) and the value becomes
    # mainstat through the transformations below. Colours must be strings,
    # so each value is banded into one in PromQL.
    # Nodes: sites and the peers they reach, with the share of their
    # tunnels up. A gateway's own view names its site; a peer without a
    # gateway of its own (a road warrior) is seen through its sites.
    node_share = (
        f'100 * avg by (id) (label_replace({tunnels}, "id", "$1", "site", "(.+)"))'
        f' or 100 * avg by (id) (label_replace({tunnels}, "id", "$1", "peer", "(.+)"))'
    )
    nodes = f'max by (id, title, color) (label_replace({banded(node_share, 99.9, 50)}, "title", "$1", "id", "(.+)"))'
    # Edges: each site's tunnel to a peer, with the best health among the
    # tunnel's paths (what its traffic gets).
    best_path = f"max by (site, peer) ({with_peer(f'patronus_path_health_score{{{GW}}}')})"
    edges = (
        "max by (id, source, target, color) (label_join(label_replace(label_replace("
        + banded(best_path, 70, 50)
        + ', "source", "$1", "site", "(.+)"), "target", "$1", "peer", "(.+)"), "id", "->", "source", "target"))'
    )
    values = ["Value #nodes", "Value #edges"]
    panels = [
        lay.place(
            panel(
                "nodeGraph",
                "Site connectivity",
                "Sites and the peers they reach (nodes, with the share of their tunnels up: green when all "
                "are, orange from half, red below) and the tunnels between them (edges, with the best health "
                "score among the tunnel's paths: green from 70, orange from 50, red below; a down path scores "
                "0). A peer appears under its Peer name.",
                [
                    target(nodes, ref="nodes", instant=True, table=True),
                    target(edges, ref="edges", instant=True, table=True),
                ],
                {},
                {"nodes": {"mainStatUnit": "%"}, "edges": {}},
                transformations=[
                    {"id": "organize", "options": {"excludeByName": {"Time": True}, "indexByName": {}, "renameByName": {}}},
                    # Renaming only sets a display name, which the node graph
                    # ignores: the value is copied into a field named mainstat.
                    {
                        "id": "calculateField",
                        "options": {
                            "mode": "reduceRow",
                            "reduce": {"reducer": "sum", "include": values},
                            "alias": "mainstat",
                            "replaceFields": False,
                            "timeSeries": False,
                        },
                    },
                    {
                        "id": "organize",
                        "options": {"excludeByName": {v: True for v in values}, "indexByName": {}, "renameByName": {}},
                    },
                ],
            ),
            16, 14,
        ),
        lay.place(
            stat(
                "Active tunnels",
                "Tunnels with a valid WireGuard session, each counted once per gateway that reports it.",
                [target(f"sum({tunnels})", "up")],
                "short",
                thresholds(("blue", None)),
            ),
            8, 5,
        ),
        lay.place(
            stat(
                "Paths up",
                "Paths whose probes (or, for a stock WireGuard peer, handshakes) are answered.",
                [target(f"sum(patronus_path_up{{{GW}}})", "up")],
                "short",
                thresholds(("blue", None)),
            ),
            4, 5,
        ),
        lay.place(
            stat(
                "Paths down",
                "Paths that missed down_after probes in a row (or two handshakes); their traffic has moved.",
                [target(f"count(patronus_path_up{{{GW}}} == 0) or vector(0)", "down")],
                "short",
                thresholds(("green", None), ("red", 1)),
            ),
            4, 4,
        ),
        lay.place(
            stat(
                "Worst path health",
                "The lowest health score among the selected paths (0-100, an E-model R factor).",
                [target(f'min(patronus_path_health_score{{{GW}}})', "worst")],
                "none",
                GOOD_HIGH,
            ),
            4, 5,
        ),
        lay.place(
            stat(
                "Tunnels down",
                "Tunnels without a valid session, counted per gateway.",
                [target(f"count({tunnels} == 0) or vector(0)", "down")],
                "short",
                thresholds(("green", None), ("red", 1)),
            ),
            4, 4,
        ),
    ]
    heat = panel(
        "heatmap",
        "Path health",
        "Health score of every path over time, one row per path: red rows are paths that are down or too "
        "poor for a call, so a row turning red marks when a path failed.",
        [target(f"max by (path_id) (patronus_path_health_score{{{PATH}}})", "{{path_id}}")],
        {"custom": {"scaleDistribution": {"type": "linear"}, "hideFrom": {"legend": False, "tooltip": False, "viz": False}}},
        {
            "calculate": False,
            "cellGap": 1,
            "color": {
                "mode": "scheme",
                "scheme": "RdYlGn",
                "fill": "dark-orange",
                "scale": "linear",
                "exponent": 0.5,
                "steps": 64,
                "reverse": False,
                "min": 0,
                "max": 100,
            },
            "exemplars": {"color": "rgba(255,0,255,0.7)"},
            "filterValues": {"le": 1e-09},
            "legend": {"show": True},
            "rowsFrame": {"layout": "auto"},
            "tooltip": {"mode": "single", "yHistogram": False, "showColorScale": True},
            "yAxis": {"axisPlacement": "left", "reverse": False},
        },
    )
    panels.append(lay.place(heat, 24, 9))
    panels.append(
        lay.place(
            table(
                "Paths now",
                "Every path of the selected gateways with its live figures: whether it answers, whether the "
                "peer's traffic takes it now, health, loss, round trip (median) and jitter.",
                [
                    target(f"max by (instance, path_id, peer, uplink, color, measured) (patronus_path_info{{{PATH}}})", ref="info", instant=True, table=True),
                    per_path_now(f"patronus_path_up{{{PATH}}}", "up"),
                    per_path_now(f"patronus_path_active{{{PATH}}}", "active"),
                    per_path_now(f"patronus_path_health_score{{{PATH}}}", "health"),
                    per_path_now(f"patronus_path_packet_loss_pct{{{PATH}}}", "loss"),
                    per_path_now(f'patronus_path_latency_seconds{{percentile="50", {PATH}}}', "rtt"),
                    per_path_now(f"patronus_path_jitter_seconds{{{PATH}}}", "jitter"),
                ],
                [
                    {"id": "merge", "options": {}},
                    {
                        "id": "organize",
                        "options": {
                            "excludeByName": {"Time": True, "Value #info": True},
                            "renameByName": {
                                "instance": "Gateway",
                                "path_id": "Path",
                                "peer": "Peer",
                                "uplink": "Uplink",
                                "color": "Colour",
                                "measured": "Measured by",
                                "Value #up": "Up",
                                "Value #active": "Active",
                                "Value #health": "Health",
                                "Value #loss": "Loss",
                                "Value #rtt": "Round trip p50",
                                "Value #jitter": "Jitter",
                            },
                        },
                    },
                ],
                [
                    override("Up", mappings=[{"type": "value", "options": {**mapping(0, "down", "red", 0), **mapping(1, "up", "green", 1)}}],
                             custom__cellOptions={"type": "color-text"}),
                    override("Active", mappings=[{"type": "value", "options": {**mapping(0, "", "text", 0), **mapping(1, "active", "blue", 1)}}],
                             custom__cellOptions={"type": "color-text"}),
                    override("Health", thresholds=GOOD_HIGH, min=0, max=100, custom__cellOptions={"type": "color-background", "mode": "basic"}),
                    override("Loss", unit="percent", thresholds=LOSS, custom__cellOptions={"type": "color-text"}),
                    override("Round trip p50", unit="s"),
                    override("Jitter", unit="s"),
                ],
            ),
            24, 9,
        )
    )
    return dashboard(
        "patronus-topology",
        "Patronus SD-WAN Topology",
        "Patronus SD-WAN: which sites reach which, over how many healthy paths.",
        panels,
        paths=True,
    )


def performance():
    lay = Layout()
    panels = [lay.row("Paths")]
    panels += [
        lay.place(
            timeseries(
                "Round trip p50 / p95 / p99",
                "Round-trip time of each path's probes over the measurement window, by percentile.",
                [target(f"patronus_path_latency_seconds{{{PATH}}}", "{{path_id}} p{{percentile}}")],
                "s",
            ),
            12, 8,
        ),
        lay.place(
            timeseries(
                "Packet loss",
                "Probes lost over the window, percent. The voice policies of the examples allow 5%; the "
                "HighPacketLoss alert fires above 5% for 5 minutes.",
                [target(f"patronus_path_packet_loss_pct{{{PATH}}}", "{{path_id}}")],
                "percent",
                soft_max=10,
                steps=LOSS,
            ),
            12, 8,
        ),
        lay.place(
            timeseries(
                "Jitter",
                "Round-trip jitter of each path (RFC 3550's estimator over probe round trips).",
                [target(f"patronus_path_jitter_seconds{{{PATH}}}", "{{path_id}}")],
                "s",
            ),
            12, 8,
        ),
        lay.place(
            timeseries(
                "Health score",
                "Path quality 0-100 from latency, jitter and loss (an E-model R factor); 0 while the path is "
                "down. PathDown fires below 50 for 2 minutes.",
                [target(f"patronus_path_health_score{{{PATH}}}", "{{path_id}}")],
                "none",
                soft_max=100,
                steps=GOOD_HIGH,
            ),
            12, 8,
        ),
    ]
    bfd_code = " or ".join(
        f'(patronus_bfd_session_status{{state="{state}", {PATH}}} == 1) * {code}'
        for state, code in (("admin_down", 0), ("down", 1), ("init", 2), ("up", 3))
    )
    panels.append(
        lay.place(
            state_timeline(
                "BFD session state",
                "The state of each path's BFD session (paths of peers with BFD enabled). Down for a minute "
                "raises BfdSessionDown; a path is taken out the moment its session leaves Up.",
                [target(f"max by (instance, path_id) ({bfd_code})", "{{path_id}}")],
                {
                    **mapping(0, "admin down", "text", 0),
                    **mapping(1, "down", "red", 1),
                    **mapping(2, "init", "orange", 2),
                    **mapping(3, "up", "green", 3),
                },
                thresholds(("text", None)),
            ),
            24, 6,
        )
    )
    panels.append(lay.row("Throughput"))
    rx_negative = [
        {
            "matcher": {"id": "byRegexp", "options": ".* rx$"},
            "properties": [{"id": "custom.transform", "value": "negative-Y"}],
        }
    ]
    panels += [
        lay.place(
            timeseries(
                "Throughput per tunnel",
                "Encrypted traffic to (tx, up) and from (rx, down) each peer, in bits per second.",
                bits_both_ways("patronus_tunnel", "peer", GW),
                "bps",
                overrides=rx_negative,
            ),
            12, 8,
        ),
        lay.place(
            timeseries(
                "Throughput per path",
                "WireGuard traffic sent over (tx) and received from (rx) each path, probes included, in bits "
                "per second: which underlay carries the peer's traffic.",
                bits_both_ways("patronus_path", "path_id", PATH),
                "bps",
                overrides=rx_negative,
            ),
            12, 8,
        ),
        lay.place(
            timeseries(
                "Compression ratio",
                "For peers with compression on: bytes before compression over bytes sent (1: nothing saved). "
                "CompressionRatioDegraded fires below 1.5 for 10 minutes while the tunnel carries traffic.",
                [target(f"patronus_compression_ratio{{{GW}}}", "{{peer}}")],
                "none",
                steps=thresholds(("orange", None), ("green", 1.5)),
            ),
            12, 8,
        ),
        lay.place(
            timeseries(
                "Active path",
                "1 while the peer's traffic takes the path: a step from one path to another is a failover.",
                [target(f"max by (instance, path_id) (patronus_path_active{{{PATH}}})", "{{path_id}}")],
                "none",
                soft_max=1,
            ),
            12, 8,
        ),
    ]
    panels.append(lay.row("QoS per class"))
    panels += [
        lay.place(
            timeseries(
                "Rate per class",
                "Traffic the shaper sent per egress and class, in bits per second.",
                [target(f"sum by (egress, class) (rate(patronus_qos_tx_bytes_total{{{GW}}}[$__rate_interval])) * 8", "{{egress}} {{class}}")],
                "bps",
            ),
            12, 8,
        ),
        lay.place(
            timeseries(
                "Queue delay p99 per class",
                "The 99th percentile of the time packets waited in the shaper's class queues.",
                [
                    target(
                        f"histogram_quantile(0.99, sum by (egress, class, le) (rate(patronus_qos_queue_delay_seconds_bucket{{{GW}}}[$__rate_interval])))",
                        "{{egress}} {{class}}",
                    )
                ],
                "s",
            ),
            12, 8,
        ),
        lay.place(
            timeseries(
                "Shaper drops per class",
                "Packets the shaper dropped, by egress, class and reason (queue_full: the class's queue was "
                "full; the class is over its share or the uplink is saturated).",
                [target(f"sum by (egress, class, reason) (rate(patronus_qos_drops_total{{{GW}}}[$__rate_interval]))", "{{egress}} {{class}} {{reason}}")],
                "pps",
            ),
            12, 8,
        ),
        lay.place(
            timeseries(
                "Queued packets and shaping rate",
                "Packets waiting per class queue (bars) and each egress's shaping rate in bits per second "
                "(right axis).",
                [
                    target(f"sum by (egress, class) (patronus_qos_queue_packets{{{GW}}})", "{{egress}} {{class}} queued"),
                    target(f"max by (egress) (patronus_qos_rate_bytes_per_second{{{GW}}}) * 8", "{{egress}} rate", ref="B"),
                ],
                "short",
                overrides=[
                    {
                        "matcher": {"id": "byRegexp", "options": ".* rate$"},
                        "properties": [
                            {"id": "unit", "value": "bps"},
                            {"id": "custom.axisPlacement", "value": "right"},
                        ],
                    }
                ],
            ),
            12, 8,
        ),
    ]
    return dashboard(
        "patronus-performance",
        "Patronus Performance",
        "Patronus SD-WAN: path latency, loss and jitter, BFD, throughput per tunnel and path, compression and QoS per class.",
        panels,
        paths=True,
    )


def failover():
    lay = Layout()
    events = f"patronus_failover_events_total{{{GW}}}"
    panels = [
        lay.place(
            stat(
                "Failovers",
                "Times traffic moved to another path over the dashboard's time range, all policies and reasons.",
                [target(f"sum(increase({events}[$__range])) or vector(0)", "failovers", instant=True)],
                "short",
                thresholds(("green", None), ("orange", 1), ("red", 30)),
            ),
            6, 5,
        ),
        lay.place(
            stat(
                "Mean time to recover",
                "Mean time from a failover to the first packet that took the new path, over the time range "
                "(from the patronus_failover_recovery_seconds histogram).",
                [
                    target(
                        f"sum(increase(patronus_failover_recovery_seconds_sum{{{GW}}}[$__range]))"
                        f" / sum(increase(patronus_failover_recovery_seconds_count{{{GW}}}[$__range]))",
                        "MTTR",
                        instant=True,
                    )
                ],
                "s",
                thresholds(("green", None), ("orange", 0.5), ("red", 1)),
            ),
            6, 5,
        ),
        lay.place(
            bargauge(
                "Failover reasons",
                "Failovers over the time range by reason: path_down (probes stopped), bfd_down (the path's "
                "BFD session went down), sla_violation (a policy's thresholds broken), better_path (a "
                "preferred path came back after its hold time).",
                [target(f"sum by (reason) (increase({events}[$__range]))", "{{reason}}", instant=True)],
                "short",
            ),
            6, 5,
        ),
        lay.place(
            bargauge(
                "Failovers per policy",
                "Failovers over the time range by policy (default: traffic no route rule matches, which "
                "follows the site's path order). FailoverLoop fires above 0.1 a second for 5 minutes.",
                [target(f"sum by (policy_id) (increase({events}[$__range]))", "{{policy_id}}", instant=True)],
                "short",
            ),
            6, 5,
        ),
        lay.place(
            timeseries(
                "Failover timeline",
                "Failovers per interval by gateway, policy and reason; the dashboard's annotations mark each one "
                "on every panel.",
                [target(f"sum by (instance, policy_id, reason) (increase({events}[$__rate_interval])) > 0", "{{instance}} {{policy_id}} {{reason}}")],
                "short",
                bars=True,
            ),
            24, 7,
        ),
        lay.place(
            state_timeline(
                "Path in use",
                "Which path carries each peer's traffic: active (blue) or standing by.",
                [target(f"max by (instance, path_id) (patronus_path_active{{{PATH}}})", "{{path_id}}")],
                {**mapping(0, "standby", "transparent", 0), **mapping(1, "active", "blue", 1)},
                thresholds(("transparent", None), ("blue", 1)),
            ),
            12, 8,
        ),
        lay.place(
            state_timeline(
                "Path up",
                "Whether each path answers its probes (or handshakes): down marks when a path failed and "
                "up when it came back.",
                [target(f"max by (instance, path_id) (patronus_path_up{{{PATH}}})", "{{path_id}}")],
                UP_DOWN,
                UP_DOWN_STEPS,
            ),
            12, 8,
        ),
        lay.place(
            timeseries(
                "Time to recover p50 / p99",
                "From a failover to the first packet over the new path.",
                [
                    target(f"histogram_quantile(0.5, sum by (le) (rate(patronus_failover_recovery_seconds_bucket{{{GW}}}[$__rate_interval])))", "p50"),
                    target(f"histogram_quantile(0.99, sum by (le) (rate(patronus_failover_recovery_seconds_bucket{{{GW}}}[$__rate_interval])))", "p99", ref="B"),
                ],
                "s",
            ),
            12, 8,
        ),
        lay.place(
            timeseries(
                "Path health around failovers",
                "Health score of each path with the failovers as annotations: the path left should drop "
                "before the mark and the path taken should stay healthy after it.",
                [target(f"patronus_path_health_score{{{PATH}}}", "{{path_id}}")],
                "none",
                soft_max=100,
                steps=GOOD_HIGH,
            ),
            12, 8,
        ),
        lay.place(
            table(
                "Path quality now and $before ago",
                "Each path's health and loss now and a while ago (the Compare with variable): after a "
                "failover, the path taken should score at least as well as the one left did before it failed.",
                [
                    per_path_now(f"patronus_path_health_score{{{PATH}}}", "health"),
                    per_path_now(f"patronus_path_health_score{{{PATH}}} offset $before", "health_before"),
                    per_path_now(f"patronus_path_packet_loss_pct{{{PATH}}}", "loss"),
                    per_path_now(f"patronus_path_packet_loss_pct{{{PATH}}} offset $before", "loss_before"),
                ],
                [
                    {"id": "merge", "options": {}},
                    {
                        "id": "organize",
                        "options": {
                            "excludeByName": {"Time": True},
                            "renameByName": {
                                "instance": "Gateway",
                                "path_id": "Path",
                                "Value #health": "Health",
                                "Value #health_before": "Health before",
                                "Value #loss": "Loss",
                                "Value #loss_before": "Loss before",
                            },
                        },
                    },
                ],
                [
                    override("Health", thresholds=GOOD_HIGH, custom__cellOptions={"type": "color-background", "mode": "basic"}),
                    override("Health before", thresholds=GOOD_HIGH, custom__cellOptions={"type": "color-background", "mode": "basic"}),
                    override("Loss", unit="percent", thresholds=LOSS, custom__cellOptions={"type": "color-text"}),
                    override("Loss before", unit="percent", thresholds=LOSS, custom__cellOptions={"type": "color-text"}),
                ],
            ),
            12, 8,
        ),
        lay.place(
            timeseries(
                "BFD state changes",
                "BFD sessions changing state, by path, new state and diagnostic (why the session left Up).",
                [target(f"sum by (path_id, to, diag) (increase(patronus_bfd_state_changes_total{{{PATH}}}[$__rate_interval])) > 0", "{{path_id}} {{to}} {{diag}}")],
                "short",
                bars=True,
            ),
            12, 8,
        ),
    ]
    annotation = {
        "name": "Failovers",
        "datasource": DATASOURCE,
        "enable": True,
        "hide": False,
        "iconColor": "orange",
        "expr": f"sum by (instance, policy_id, reason) (increase({events}[1m])) > 0",
        "step": "60s",
        "titleFormat": "Failover",
        "textFormat": "{{instance}}: policy {{policy_id}}, {{reason}}",
        "tagKeys": "policy_id,reason",
        "useValueForTime": False,
    }
    return dashboard(
        "patronus-failover",
        "Patronus Failover",
        "Patronus SD-WAN: when and why traffic moved between paths, how fast it recovered, and path quality around each move.",
        panels,
        paths=True,
        annotations=[annotation],
        extra_variables=[comparison("5m", ["5m", "15m", "1h", "6h", "1d"])],
    )


def render(d):
    return json.dumps(d, indent=2, ensure_ascii=False) + "\n"


def main():
    check = sys.argv[1:] == ["--check"]
    stale = []
    for name, build in (
        ("patronus-topology.json", topology),
        ("patronus-performance.json", performance),
        ("patronus-failover.json", failover),
    ):
        path = DASHBOARDS / name
        text = render(build())
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    if stale:
        sys.exit(f"dashboards/{', '.join(stale)} differ from scripts/dashboards.py: run python3 scripts/dashboards.py")


if __name__ == "__main__":
    main()
