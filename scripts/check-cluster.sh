#!/usr/bin/env bash
# check-cluster.sh: check a jhub-suspend installation on a real cluster (kind, k3s or
# production), step by step, with kubectl. Documented in docs/deploy.md ("Check the cluster").
#
# This script is not run in CI: CI has no Kubernetes cluster. It is not a test module either
# (pytest collects nothing from scripts/). An admin runs it with a kubeconfig whose user may
# read the agents' Secrets, exec into the agent pods and proxy to pods and nodes.
#
# Each step prints OK, WARN or FAIL with the reason; the script exits 1 if any step failed.
#
#   scripts/check-cluster.sh                      # cluster, RBAC, agents, kubelets, registry
#   HUB_URL=https://hub.example.org HUB_TOKEN=... TEST_USER=check-user \
#     scripts/check-cluster.sh                    # ... and a full suspend/resume of one server
#
# Settings (environment):
#   HUB_NAMESPACE    the hub's namespace                       (default jhub)
#   AGENT_NAMESPACE  the agents' namespace                     (default jhub-suspend-system)
#   AGENT_NAME       the agents' DaemonSet and ServiceAccount  (default jhub-suspend-agent)
#   HUB_SA           the hub's ServiceAccount                  (default hub)
#   PULL_SECRET      restored pods' image pull Secret          (default jhub-suspend-registry-pull)
#   HUB_URL, HUB_TOKEN, TEST_USER
#                    the optional end-to-end step: the hub's public URL, a hub API token with
#                    the custom:jhub-suspend:admin scope (or an admin's), and a test user
#                    whose default server may be started, suspended and resumed.
#   TIMEOUT          seconds to wait for a suspension or a resume (default 900)
set -euo pipefail

HUB_NAMESPACE=${HUB_NAMESPACE:-jhub}
AGENT_NAMESPACE=${AGENT_NAMESPACE:-jhub-suspend-system}
AGENT_NAME=${AGENT_NAME:-jhub-suspend-agent}
HUB_SA=${HUB_SA:-hub}
PULL_SECRET=${PULL_SECRET:-jhub-suspend-registry-pull}
HUB_URL=${HUB_URL:-}
HUB_TOKEN=${HUB_TOKEN:-}
TEST_USER=${TEST_USER:-}
TIMEOUT=${TIMEOUT:-900}
AGENT_SELECTOR="app.kubernetes.io/name=jhub-suspend,app.kubernetes.io/component=agent"

failures=0
ok() { printf 'OK    %s\n' "$*"; }
warn() { printf 'WARN  %s\n' "$*"; }
fail() {
  printf 'FAIL  %s\n' "$*"
  failures=$((failures + 1))
}
step() { printf '\n== %s\n' "$*"; }

need() {
  command -v "$1" >/dev/null 2>&1 || {
    echo "check-cluster.sh needs $1 on PATH" >&2
    exit 2
  }
}
need kubectl
need python3

# ---- 1. the cluster and its kubelets ---------------------------------------------------------
step "kubelets: version and the ContainerCheckpoint feature gate"
if ! nodes=$(kubectl get nodes -o jsonpath='{range .items[*]}{.metadata.name}{" "}{.status.nodeInfo.kubeletVersion}{" "}{.status.nodeInfo.containerRuntimeVersion}{"\n"}{end}' 2>&1); then
  fail "cannot list nodes: $nodes"
  echo
  echo "$failures step(s) failed"
  exit 1
fi
while read -r node version runtime; do
  [ -n "$node" ] || continue
  minor=$(printf '%s' "$version" | sed -E 's/^v?[0-9]+\.([0-9]+).*/\1/')
  gate=$(kubectl get --raw "/api/v1/nodes/$node/proxy/configz" 2>/dev/null |
    python3 -c 'import json,sys; g=json.load(sys.stdin)["kubeletconfig"].get("featureGates") or {}; print(g.get("ContainerCheckpoint", "default"))' 2>/dev/null || echo unknown)
  if [ "$gate" = "false" ] || [ "$gate" = "False" ]; then
    fail "$node: kubelet $version has ContainerCheckpoint=false in its configuration"
  elif [ "$minor" -lt 25 ] 2>/dev/null; then
    fail "$node: kubelet $version is older than 1.25 and has no checkpoint API"
  elif [ "$minor" -lt 30 ] 2>/dev/null && [ "$gate" != "true" ] && [ "$gate" != "True" ]; then
    fail "$node: kubelet $version needs --feature-gates=ContainerCheckpoint=true (alpha before 1.30); configz says $gate"
  else
    ok "$node: kubelet $version (gate: $gate), runtime $runtime"
  fi
  case "$runtime" in
    cri-o://*) ;;
    containerd://1.* | containerd://2.0.*)
      fail "$node: $runtime cannot restore checkpoints (containerd >= 2.1 needed)" ;;
    containerd://*) ;;
    *) warn "$node: runtime $runtime is neither CRI-O nor containerd; restores are untested there" ;;
  esac
done <<<"$nodes"

# ---- 2. RBAC ---------------------------------------------------------------------------------
step "RBAC: what the agent's and the hub's ServiceAccounts may do"
can() { # can SUBJECT EXPECTED VERB RESOURCE [NAMESPACE]
  local subject=$1 expected=$2 verb=$3 resource=$4 ns=${5:-} got
  local -a nsflag=()
  if [ -n "$ns" ]; then nsflag=(-n "$ns"); fi
  got=$(kubectl auth can-i "$verb" "$resource" --as="$subject" ${nsflag[@]+"${nsflag[@]}"} 2>/dev/null || true)
  if [ "$got" = "$expected" ]; then
    ok "$subject: can-i $verb $resource${ns:+ in $ns} = $got"
  else
    fail "$subject: can-i $verb $resource${ns:+ in $ns} = ${got:-error}, expected $expected"
  fi
}
agent_sa="system:serviceaccount:$AGENT_NAMESPACE:$AGENT_NAME"
hub_sa="system:serviceaccount:$HUB_NAMESPACE:$HUB_SA"
can "$agent_sa" yes create nodes/checkpoint
can "$agent_sa" no get nodes/proxy
can "$agent_sa" no create nodes/proxy
can "$agent_sa" no create pods/exec "$HUB_NAMESPACE"
can "$agent_sa" no get secrets "$AGENT_NAMESPACE"
can "$agent_sa" no list pods "$HUB_NAMESPACE"
can "$hub_sa" yes get nodes
can "$hub_sa" yes patch pods "$HUB_NAMESPACE"
can "$hub_sa" yes create secrets "$HUB_NAMESPACE"
can "$hub_sa" no get nodes/proxy

# ---- 3. an agent on every node, healthy, reaching its kubelet ----------------------------------
step "agents: one per node, healthy, reaching their kubelet"
agent_pods=$(kubectl get pods -n "$AGENT_NAMESPACE" -l "$AGENT_SELECTOR" \
  -o jsonpath='{range .items[*]}{.metadata.name}{" "}{.spec.nodeName}{" "}{.status.phase}{"\n"}{end}' 2>/dev/null || true)
while read -r node _; do
  [ -n "$node" ] || continue
  if ! grep -q " $node Running\$" <<<"$agent_pods"; then
    fail "$node: no running agent pod (a notebook there cannot be suspended)"
  fi
done <<<"$nodes"
first_agent=""
while read -r pod node phase; do
  [ -n "$pod" ] || continue
  [ "$phase" = Running ] || continue
  [ -n "$first_agent" ] || first_agent=$pod
  if ! health=$(kubectl get --raw "/api/v1/namespaces/$AGENT_NAMESPACE/pods/$pod:9770/proxy/healthz" 2>&1); then
    fail "$node: agent $pod does not answer /healthz: $health"
    continue
  fi
  kubelet=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1]).get("kubelet", "?"))' "$health" 2>/dev/null || echo "unparsable: $health")
  case "$kubelet" in
    ok | reachable*) ok "$node: agent $pod healthy, kubelet $kubelet" ;;
    *CERTIFICATE_VERIFY_FAILED*)
      fail "$node: agent $pod cannot verify the kubelet's certificate ($kubelet); see docs/deploy.md, kubelet TLS" ;;
    *) fail "$node: agent $pod: kubelet $kubelet" ;;
  esac
done <<<"$agent_pods"

# The checkpoint endpoint itself, through one agent: a checkpoint of a pod that does not
# exist must reach the kubelet's handler (404 for the pod), not its router (404 page not
# found: the feature gate is off) or its authorizer (403: RBAC).
repository=""
tls_flag=""
if [ -n "$first_agent" ]; then
  agent_args=$(kubectl get ds -n "$AGENT_NAMESPACE" "$AGENT_NAME" -o jsonpath='{.spec.template.spec.containers[0].args}')
  repository=$(python3 -c 'import json,sys; a=[x.split("=",1)[1] for x in json.loads(sys.argv[1]) if x.startswith("--NodeAgent.repository=")]; print(a[0] if a else "")' "$agent_args")
  if python3 -c 'import json,sys; sys.exit(0 if "--NodeAgent.registry_tls_verify=False" in json.loads(sys.argv[1]) else 1)' "$agent_args"; then
    tls_flag="--tls-verify=false"
  fi
  probe=$(kubectl exec -n "$AGENT_NAMESPACE" "$first_agent" -c agent -- python3 -c '
import json, os, sys, urllib.request, urllib.error
body = json.dumps({"namespace": "jhub-suspend-check", "pod": "no-such-pod", "container": "notebook",
                   "image": sys.argv[1] + "/check-cluster:probe"}).encode()
req = urllib.request.Request("http://%s:9770/api/checkpoints" % os.environ["NODE_IP"], body, method="POST",
    headers={"Authorization": "Bearer " + os.environ["JHUB_SUSPEND_AGENT_TOKEN"], "Content-Type": "application/json"})
try:
    urllib.request.urlopen(req, timeout=60)
    print("201 unexpected success")
except urllib.error.HTTPError as e:
    print(e.code, json.loads(e.read() or b"{}").get("message", ""))
' "${repository:-invalid}" 2>&1 || true)
  case "$probe" in
    "404 "*"page not found"*) fail "kubelet checkpoint API missing (feature gate off?): $probe" ;;
    "404 "*) ok "kubelet checkpoint API reachable and authorized through agent $first_agent" ;;
    "502 "*"credentials"*) fail "the kubelet refused the agent (RBAC/authn): $probe" ;;
    "401 "*) fail "agent $first_agent refused its own token: $probe" ;;
    *) fail "unexpected answer probing the checkpoint API: $probe" ;;
  esac
else
  fail "no running agent: cannot probe the kubelet checkpoint API"
fi

# ---- 4. the registry: push and delete (the agents' credential), pull (restored pods') ----------
step "registry: push, pull and delete a tiny image"
if [ -z "$first_agent" ] || [ -z "$repository" ]; then
  fail "no running agent or no --NodeAgent.repository: cannot check the registry"
else
  ref="$repository/check-cluster:$(date +%Y%m%d%H%M%S)"
  # shellcheck disable=SC2016 # expanded by the agent's shell
  # The agent's own push (jhub_suspend.images.build_and_push), of a tiny archive.
  push_script='set -e
d=$(mktemp -d); trap "rm -rf $d" EXIT
printf "{\"name\": \"check\"}" > "$d/config.dump"
tar -cf "$d/checkpoint-check.tar" -C "$d" config.dump
python3 - "$d/checkpoint-check.tar" "$1" "$2" <<PY
import asyncio, sys
from jhub_suspend import images
cfg = images.ImageConfig(authfile="/etc/jhub-suspend/registry/.dockerconfigjson")
verify = sys.argv[3] != "--tls-verify=false"
push = images.build_and_push(sys.argv[1], sys.argv[2], {}, tls_verify=verify, config=cfg)
print(asyncio.run(push))
PY
echo pushed'
  # shellcheck disable=SC2016 # expanded by the agent's shell
  pull_script='umask 077; cat > /tmp/pull.json; skopeo inspect $2 --authfile /tmp/pull.json "docker://$1" >/dev/null; s=$?; rm -f /tmp/pull.json; exit $s'
  # shellcheck disable=SC2016 # expanded by the agent's shell
  delete_script='skopeo delete $2 --authfile /etc/jhub-suspend/registry/.dockerconfigjson "docker://$1"'
  if out=$(kubectl exec -n "$AGENT_NAMESPACE" "$first_agent" -c agent -- sh -c "$push_script" sh "$ref" "$tls_flag" 2>&1); then
    ok "push of $ref with the agents' credential and privileges"
    pull_auth=$(kubectl get secret -n "$HUB_NAMESPACE" "$PULL_SECRET" -o jsonpath='{.data.\.dockerconfigjson}' 2>/dev/null | base64 -d 2>/dev/null || true)
    if [ -z "$pull_auth" ]; then
      fail "Secret $HUB_NAMESPACE/$PULL_SECRET (restored pods' pull credential) is missing"
    elif out=$(printf '%s' "$pull_auth" | kubectl exec -i -n "$AGENT_NAMESPACE" "$first_agent" -c agent -- \
      sh -c "$pull_script" sh "$ref" "$tls_flag" 2>&1); then
      ok "pull of $ref with $PULL_SECRET (what a restored pod does)"
    else
      fail "pull with $PULL_SECRET failed: $out"
    fi
    if out=$(kubectl exec -n "$AGENT_NAMESPACE" "$first_agent" -c agent -- \
      sh -c "$delete_script" sh "$ref" "$tls_flag" 2>&1); then
      ok "delete of $ref (the registry allows deletes: retention works)"
    else
      fail "delete failed (enable deletes in the registry, e.g. REGISTRY_STORAGE_DELETE_ENABLED=true): $out"
    fi
  else
    fail "push to $repository failed: $out"
  fi
fi

# ---- 5. the eviction webhook: node drains suspend notebooks ----------------------------------------
step "eviction webhook: configured, with the CA cert-manager injects"
if ! bundle=$(kubectl get validatingwebhookconfiguration jhub-suspend-eviction -o jsonpath='{.webhooks[0].clientConfig.caBundle}' 2>&1); then
  warn "no ValidatingWebhookConfiguration jhub-suspend-eviction: a node drain kills the notebooks on it (docs/deploy.md, Node drains)"
elif [ -z "$bundle" ]; then
  fail "jhub-suspend-eviction has no caBundle: cert-manager's CA injector has not filled it (is cert-manager running? kubectl -n $HUB_NAMESPACE get certificate jhub-suspend-webhook)"
else
  ok "jhub-suspend-eviction calls the service with a caBundle; try it: kubectl drain NODE --dry-run=server"
fi

# ---- 6. optional: suspend and resume a test user's server through the hub ------------------------
step "end to end: suspend and resume one server through the hub"
if [ -z "$HUB_URL" ] || [ -z "$HUB_TOKEN" ] || [ -z "$TEST_USER" ]; then
  warn "skipped: set HUB_URL, HUB_TOKEN and TEST_USER to suspend and resume a test server"
else
  need curl
  api() { # api METHOD PATH -> body on stdout; fails on HTTP >= 400
    curl -fsS -X "$1" -H "Authorization: token $HUB_TOKEN" "${HUB_URL%/}$2"
  }
  wait_op() { # wait_op STATUS_URL -> final operation JSON
    local deadline=$((SECONDS + TIMEOUT)) op status
    while [ "$SECONDS" -lt "$deadline" ]; do
      op=$(api GET "$1") || return 1
      status=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["status"])' "$op")
      if [ "$status" != running ]; then
        printf '%s' "$op"
        return 0
      fi
      sleep 5
    done
    echo "timed out after ${TIMEOUT}s"
    return 1
  }
  field() { python3 -c 'import json,sys; d=json.loads(sys.argv[1])
for k in sys.argv[2].split("."): d=d.get(k) if isinstance(d, dict) else None
print("" if d is None else d)' "$1" "$2"; }
  # start the server (202 or 201; 400 if it is already running)
  api POST "/hub/api/users/$TEST_USER/server" >/dev/null 2>&1 || true
  ready=""
  for _ in $(seq 1 "$((TIMEOUT / 5))"); do
    model=$(api GET "/hub/api/users/$TEST_USER") || break
    ready=$(python3 -c 'import json,sys; s=json.loads(sys.argv[1]).get("servers",{}).get("",{}); print("yes" if s.get("ready") else "")' "$model")
    [ -n "$ready" ] && break
    sleep 5
  done
  if [ -z "$ready" ]; then
    fail "the test server of $TEST_USER did not become ready"
  else
    ok "server of $TEST_USER is running"
    if accepted=$(api POST "/services/suspend/api/servers/$TEST_USER/suspend") &&
      op=$(wait_op "$(field "$accepted" status_url)") &&
      [ "$(field "$op" status)" = succeeded ]; then
      ok "suspended: $(field "$op" result.checkpoint.image) ($(field "$op" result.checkpoint.size) bytes)"
      if kubectl get pod -n "$HUB_NAMESPACE" "jupyter-$TEST_USER" >/dev/null 2>&1; then
        warn "pod jupyter-$TEST_USER still exists after the suspension (named pod template?)"
      else
        ok "the pod is gone: its node's resources are free"
      fi
      if accepted=$(api POST "/services/suspend/api/servers/$TEST_USER/resume") &&
        op=$(wait_op "$(field "$accepted" status_url)") &&
        [ "$(field "$op" status)" = succeeded ]; then
        restored=$(kubectl get pod -n "$HUB_NAMESPACE" "jupyter-$TEST_USER" \
          -o jsonpath='{.metadata.annotations.jhub-suspend\.jupyter\.org/restored-from}' 2>/dev/null || true)
        if [ -n "$restored" ]; then
          ok "resumed from the checkpoint $restored"
        else
          fail "the server came back but not from the checkpoint (a fresh start): $(field "$op" message)"
        fi
      else
        fail "resume failed: ${op:-${accepted:-no answer}}"
      fi
    else
      fail "suspension failed: ${op:-${accepted:-no answer}}"
    fi
  fi
fi

echo
if [ "$failures" -gt 0 ]; then
  echo "$failures step(s) failed"
  exit 1
fi
echo "all checks passed"
