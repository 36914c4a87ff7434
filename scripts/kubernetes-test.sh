#!/usr/bin/env bash
# Validates deploy/kubernetes/*.yaml offline (no cluster):
#   - every document against the Kubernetes 1.37 OpenAPI schema in strict mode (unknown fields
#     are errors), with kubernetes-validate from PyPI, installed into a virtualenv in
#     target/kubernetes-venv (pinned; reused on later runs); a misspelled field must fail it;
#   - what ties the manifests to the image and the relay: host networking, the same non-root
#     user, read-only root and dropped capabilities as the container test, the image's CMD, the
#     state file on the hostPath volume, the configuration in the ConfigMap (accepted by
#     `wgrelay check-config`, the same settings as packaging/wgrelay.toml), one UDP port
#     everywhere, selectors that match, externalTrafficPolicy: Local, limits and threads.
# Not validated here: admission (Pod Security, quotas), scheduling, image pulls, and running it
# on a cluster (kubectl's --dry-run=client needs an API server for discovery, even offline).
# Without python3 -m venv or PyPI it prints "kubernetes-test: skipped: <why>" and exits 0.
# Ends with "kubernetes-test: N passed, N failed"; exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."

skip() { echo "kubernetes-test: skipped: $*"; exit 0; }
target=${CARGO_TARGET_DIR:-target}
venv=$target/kubernetes-venv
validator_version=1.37.0

command -v python3 >/dev/null || skip "python3 not found"
if [ ! -x "$venv/bin/kubernetes-validate" ] \
    || [ "$("$venv/bin/pip" show kubernetes-validate 2>/dev/null | sed -n 's/^Version: //p')" != "$validator_version" ]; then
    rm -rf "$venv"
    python3 -m venv "$venv" >/dev/null 2>&1 || skip "python3 -m venv failed (Debian: apt-get install python3-venv)"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==$validator_version" >"$target/kubernetes-venv.log" 2>&1 \
        || skip "pip install kubernetes-validate==$validator_version failed: $(tail -1 "$target/kubernetes-venv.log")"
fi

bin=$target/release/wgrelay
[ -x "$bin" ] || cargo build --release --locked --quiet --bin wgrelay

passed=0
failed=0
ok() { passed=$((passed + 1)); echo "kubernetes-test: ok: $*"; }
bad() { failed=$((failed + 1)); echo "kubernetes-test: FAILED: $*"; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

for f in deploy/kubernetes/*.yaml; do
    if out=$("$venv/bin/kubernetes-validate" --strict --kubernetes-version "$validator_version" "$f" 2>&1); then
        ok "$f: strict schema $validator_version: $(grep -o 'resource [a-z]*/[a-z0-9-]*' <<<"$out" | sed 's/resource //' | paste -sd, -)"
    else
        bad "$f: $out"
    fi
done
sed 's/hostNetwork:/hostNetwrok:/' deploy/kubernetes/daemonset.yaml >"$tmp/typo.yaml"
if ! "$venv/bin/kubernetes-validate" --strict --kubernetes-version "$validator_version" "$tmp/typo.yaml" >/dev/null 2>&1; then
    ok "strict mode rejects a misspelled field (hostNetwrok)"
else
    bad "strict mode accepted a misspelled field"
fi

# The checks that tie the manifests to the image, the relay and each other.
"$venv/bin/python" - "$tmp" <<'EOF' >"$tmp/checks" || true
import json, re, sys, yaml

tmp = sys.argv[1]
docs = {}
for f in ("deploy/kubernetes/daemonset.yaml", "deploy/kubernetes/service.yaml"):
    for d in yaml.safe_load_all(open(f)):
        docs[d["kind"]] = d
ds, svc, cm, ns = docs["DaemonSet"], docs["Service"], docs["ConfigMap"], docs["Namespace"]
pod = ds["spec"]["template"]["spec"]
relay = next(c for c in pod["containers"] if c["name"] == "wgrelay")
labels = ds["spec"]["template"]["metadata"]["labels"]

dockerfile = open("packaging/Dockerfile").read()
user = re.search(r"^USER (\d+):(\d+)$", dockerfile, re.M)
cmd = json.loads(re.search(r"^CMD (\[.*\])$", dockerfile, re.M).group(1))

def check(what, cond):
    print(("ok" if cond else "FAILED") + "\t" + what)

check("hostNetwork: true", pod.get("hostNetwork") is True)
check("dnsPolicy ClusterFirstWithHostNet (cluster DNS for --server names)",
      pod.get("dnsPolicy") == "ClusterFirstWithHostNet")
check("the DaemonSet's selector matches its pods",
      ds["spec"]["selector"]["matchLabels"].items() <= labels.items())
check("the Service selects the DaemonSet's pods", svc["spec"]["selector"].items() <= labels.items())
check("the Service keeps peers' source addresses: externalTrafficPolicy Local",
      svc["spec"].get("externalTrafficPolicy") == "Local")
check("the relay's args are the image's CMD: " + " ".join(cmd), relay.get("args") == cmd)
sc = {**pod.get("securityContext", {}), **relay.get("securityContext", {})}
check(f"runs as the image's user {user.group(1)}:{user.group(2)}, non-root",
      sc.get("runAsNonRoot") is True and str(sc.get("runAsUser")) == user.group(1)
      and str(sc.get("runAsGroup")) == user.group(2))
check("read-only root, no privilege escalation, every capability dropped and none added",
      sc.get("readOnlyRootFilesystem") is True and sc.get("allowPrivilegeEscalation") is False
      and sc.get("capabilities", {}).get("drop") == ["ALL"] and not sc.get("capabilities", {}).get("add"))
check("seccomp RuntimeDefault", sc.get("seccompProfile", {}).get("type") == "RuntimeDefault")
mounts = {m["mountPath"]: m["name"] for m in relay["volumeMounts"]}
vols = {v["name"]: v for v in pod["volumes"]}
state = cmd[cmd.index("--state-file") + 1]
state_dir = state.rsplit("/", 1)[0]
config = cmd[cmd.index("--config") + 1]
config_dir, config_name = config.rsplit("/", 1)
check(f"the state file's directory {state_dir} is a hostPath volume",
      "hostPath" in vols.get(mounts.get(state_dir), {}))
owner = [c for c in pod.get("initContainers", []) if any(m["mountPath"] == state_dir for m in c["volumeMounts"])]
check("an init container hands the hostPath to the relay's user",
      any(f"{user.group(1)}:{user.group(2)}" in " ".join(c.get("command", [])) for c in owner))
cmv = vols.get(mounts.get(config_dir), {}).get("configMap", {})
check(f"{config} comes from ConfigMap {cm['metadata']['name']}",
      cmv.get("name") == cm["metadata"]["name"] and config_name in cm["data"])
open(f"{tmp}/wgrelay.toml", "w").write(cm["data"][config_name])
listen = re.search(r'listen = \["\[::\]:(\d+)"\]', cm["data"][config_name])
port = int(listen.group(1)) if listen else None
cports = [p for p in relay["ports"] if p["protocol"] == "UDP"]
sports = svc["spec"]["ports"]
check(f"one UDP port everywhere: config {port}, container {cports[0]['containerPort']}, "
      f"Service {sports[0]['port']} -> {sports[0]['targetPort']}",
      port is not None and cports[0]["containerPort"] == port == sports[0]["targetPort"]
      and sports[0]["protocol"] == "UDP")
res = relay.get("resources", {})
threads = next((e["value"] for e in relay.get("env", []) if e["name"] == "WGRELAY_THREADS"), None)
check(f"requests and limits set; WGRELAY_THREADS {threads} = the CPU limit {res.get('limits', {}).get('cpu')}",
      {"cpu", "memory"} <= res.get("requests", {}).keys() and {"cpu", "memory"} <= res.get("limits", {}).keys()
      and threads == str(res["limits"]["cpu"]))
check("the Namespace allows hostNetwork and hostPath (Pod Security: privileged)",
      ns["metadata"].get("labels", {}).get("pod-security.kubernetes.io/enforce") == "privileged")
check("rolling update without surge (old pod saves the state, new one reads it)",
      ds["spec"]["updateStrategy"]["rollingUpdate"].get("maxSurge") in (0, "0"))
EOF
while IFS=$'\t' read -r result what; do
    if [ "$result" = ok ]; then ok "$what"; else bad "$what"; fi
done <"$tmp/checks"
[ -s "$tmp/checks" ] || bad "the manifest checks did not run"

# The ConfigMap's configuration, as the relay reads it, and the same as the packaged one.
if out=$("$bin" check-config --config "$tmp/wgrelay.toml" 2>&1) && grep -q "configuration OK" <<<"$out"; then
    ok "wgrelay check-config accepts the ConfigMap's wgrelay.toml"
else
    bad "wgrelay check-config on the ConfigMap's wgrelay.toml: $out"
fi
if [ "$("$bin" check-config --config "$tmp/wgrelay.toml" 2>&1)" = "$("$bin" check-config --config packaging/wgrelay.toml 2>&1)" ]; then
    ok "the ConfigMap has the same effective settings as packaging/wgrelay.toml"
else
    bad "the ConfigMap and packaging/wgrelay.toml differ"
fi

echo "kubernetes-test: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
