#!/usr/bin/env bash
# Installs everything jhub-suspend's demo and tests need on a Debian 12 machine, as root.
# Idempotent: each step checks what is already there, so a second run takes seconds.
#
#   JHUB_SUSPEND_PREFIX  where system-wide parts go (default /opt/jhub-suspend)
#   JHUB_SUSPEND_VENV    the Python virtual environment (default <repo>/.venv)
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
prefix=${JHUB_SUSPEND_PREFIX:-/opt/jhub-suspend}
venv=${JHUB_SUSPEND_VENV:-$repo/.venv}
# shellcheck source=lib.sh
. "$repo/scripts/lib.sh"  # log, debian_mirror

if [ "$(id -u)" != 0 ]; then
  echo "install.sh must run as root: the local cluster creates network namespaces and runs CRIU." >&2
  exit 1
fi

apt_packages=(debootstrap prometheus docker-registry buildah skopeo chromium iproute2 procps
              curl ca-certificates python3-venv patchelf file busybox-static
              containernetworking-plugins shellcheck)
# Node.js may come from elsewhere (its own nodejs package bundles npm); take Debian's only if absent.
command -v npm >/dev/null || apt_packages+=(nodejs npm)

missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "apt: installing ${missing[*]}"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
# Debian's packages start these servers through systemd where it runs; the project starts its own.
for svc in prometheus docker-registry prometheus-node-exporter; do
  if command -v systemctl >/dev/null && systemctl is-active --quiet "$svc" 2>/dev/null; then
    systemctl stop "$svc" || true
  fi
done

# CRIU: Debian 12's 3.17 and Debian 13's 4.1 fail on this kernel; unstable's >= 4.2 works.
# It is installed into a minimal trixie tree and run through that tree's loader, so the host's
# libc is untouched (see DESIGN.md).
criu_root=$prefix/criu-root
criu_bin=$prefix/bin/criu
if ! "$criu_bin" --version 2>/dev/null | grep -qE 'Version: (4\.([2-9]|[1-9][0-9])|[5-9])'; then
  mirror=$(debian_mirror)
  log "criu: building a minimal trixie tree in $criu_root from $mirror"
  rm -rf "$criu_root.tmp"
  debootstrap --variant=minbase trixie "$criu_root.tmp" "$mirror" >"$prefix.debootstrap.log" 2>&1 \
    || { tail -n 30 "$prefix.debootstrap.log" >&2; exit 1; }
  echo "deb $mirror unstable main" > "$criu_root.tmp/etc/apt/sources.list.d/unstable.list"
  chroot "$criu_root.tmp" apt-get -q -o Acquire::Check-Valid-Until=false update >/dev/null
  DEBIAN_FRONTEND=noninteractive chroot "$criu_root.tmp" \
    apt-get install -y -q --no-install-recommends criu/unstable >/dev/null
  chroot "$criu_root.tmp" apt-get clean
  rm -rf "$criu_root"
  mv "$criu_root.tmp" "$criu_root"
  mkdir -p "$prefix/bin"
  cat > "$criu_bin" <<WRAP
#!/bin/sh
# CRIU from a trixie tree, run through that tree's loader (running it under chroot breaks mount detection).
r=$criu_root
exec "\$r/lib64/ld-linux-x86-64.so.2" --library-path "\$r/usr/lib/x86_64-linux-gnu:\$r/lib/x86_64-linux-gnu" "\$r/usr/sbin/criu" "\$@"
WRAP
  chmod +x "$criu_bin"
  "$criu_bin" --version
fi

# containerd, runc and checkpointctl: Debian unstable's, installed into the same trixie tree as
# CRIU. Copies in $prefix/bin get that tree's loader and libraries written into them (patchelf):
# runc re-executes itself, so a loader wrapper like CRIU's does not work for it. runc finds CRIU
# on PATH, and the local cluster starts containerd with $prefix/bin first on PATH.
runtime_bins=(containerd containerd-shim-runc-v2 ctr runc checkpointctl)
runtime_ok() {
  local b
  for b in "${runtime_bins[@]}"; do [ -x "$prefix/bin/$b" ] || return 1; done
  "$prefix/bin/containerd" --version 2>/dev/null | grep -qE ' v?2\.([1-9]|[1-9][0-9])\.' \
    && "$prefix/bin/runc" --version >/dev/null 2>&1 \
    && "$prefix/bin/checkpointctl" --help >/dev/null 2>&1
}
if ! runtime_ok; then
  log "runtime: installing containerd, runc and checkpointctl into $criu_root"
  runtime_pkgs=(containerd/unstable runc/unstable checkpointctl/unstable)
  if ! DEBIAN_FRONTEND=noninteractive chroot "$criu_root" \
       apt-get install -y -q --no-install-recommends "${runtime_pkgs[@]}" >/dev/null; then
    chroot "$criu_root" apt-get -q -o Acquire::Check-Valid-Until=false update >/dev/null
    DEBIAN_FRONTEND=noninteractive chroot "$criu_root" \
      apt-get install -y -q --no-install-recommends "${runtime_pkgs[@]}" >/dev/null
  fi
  chroot "$criu_root" apt-get clean
  mkdir -p "$prefix/bin"
  for b in "${runtime_bins[@]}"; do
    src=
    for d in usr/bin usr/sbin bin sbin; do
      [ -x "$criu_root/$d/$b" ] && { src=$criu_root/$d/$b; break; }
    done
    [ -n "$src" ] || { echo "runtime: $b is not in $criu_root" >&2; exit 1; }
    cp "$src" "$prefix/bin/$b.tmp"
    if file -L "$prefix/bin/$b.tmp" | grep -q 'dynamically linked'; then
      patchelf --set-interpreter "$criu_root/lib64/ld-linux-x86-64.so.2" \
        --set-rpath "$criu_root/usr/lib/x86_64-linux-gnu:$criu_root/lib/x86_64-linux-gnu" \
        "$prefix/bin/$b.tmp"
    fi
    mv -f "$prefix/bin/$b.tmp" "$prefix/bin/$b"
  done
  runtime_ok || { echo "runtime: the binaries in $prefix/bin do not run" >&2; exit 1; }
  "$prefix/bin/containerd" --version
  "$prefix/bin/runc" --version | head -n1
fi

# configurable-http-proxy, from npm, at the version the suite passed with.
chp_version=5.3.0
chp=$prefix/node/node_modules/.bin/configurable-http-proxy
chp_installed=$(node -p 'require(process.argv[1]).version' \
  "$prefix/node/node_modules/configurable-http-proxy/package.json" 2>/dev/null || true)
if [ ! -x "$chp" ] || [ "$chp_installed" != "$chp_version" ]; then
  log "npm: installing configurable-http-proxy $chp_version"
  mkdir -p "$prefix/node"
  npm install --prefix "$prefix/node" --no-audit --no-fund --save-exact \
    "configurable-http-proxy@$chp_version" >/dev/null
fi
# (uPlot, the admin page's charting library, is vendored in the package: scripts/vendor-uplot.sh.)
mkdir -p "$prefix/bin"
ln -sf "$chp" "$prefix/bin/configurable-http-proxy"

# The Python environment: the project itself, editable, with JupyterLab for the demo's notebooks,
# the local cluster's dependencies and the test and lint tools. The editable install maps the
# jhub_suspend package to this checkout, so the subpackages the wheel leaves out (localcluster,
# testing, demo: see setup.cfg) import from here too; the check below makes sure they do.
stamp=$venv/.jhub-suspend-installed
# Debian's own python3 (3.11 on bookworm): pods run as an unprivileged user (runAsUser), and
# must be able to execute the environment's interpreter, which a pyenv under /root would forbid.
base_python=/usr/bin/python3
"$base_python" -c 'import sys; assert sys.version_info >= (3, 11), sys.version' \
  || { echo "python: $base_python must be Python 3.11 or newer" >&2; exit 1; }
if [ "$(readlink -f "$venv/bin/python" 2>/dev/null)" != "$(readlink -f "$base_python")" ]; then
  log "python: creating $venv with $base_python"
  rm -rf "$venv"
  "$base_python" -m venv "$venv"
fi
# constraints.txt pins every package to the version the suite passed with
# (scripts/update-constraints.py writes it).
if [ ! -f "$stamp" ] || [ "$repo/setup.cfg" -nt "$stamp" ] || [ "$repo/constraints.txt" -nt "$stamp" ]; then
  log "python: installing jhub-suspend and its test dependencies"
  # pip warns once per configured local index that lacks a package; those lines are noise.
  "$venv/bin/pip" install -q -c "$repo/constraints.txt" -e "$repo[demo,localcluster,test,lint,bench]" 2>&1 \
    | grep -vE "is neither a file nor a directory|BuildBackendWarning|^ *(!!|\*+|Please be careful|name as your package|with strategy|return)" || true
  (cd / && "$venv/bin/python" -c "import jhub_suspend, kubespawner, kubernetes_asyncio, pytest_asyncio, grpc, grpc_tools
import jhub_suspend.localcluster, jhub_suspend.testing, jhub_suspend.demo") \
    || { echo "python: the install into $venv is incomplete" >&2; exit 1; }
  touch "$stamp"
fi

# The CRI API's api.proto, from Debian's golang-k8s-cri-api-dev (only the .deb is fetched and
# unpacked; installing it would pull in hundreds of Go packages), and Python stubs generated from
# it with grpcio-tools into the environment as the package k8s_cri.
cri_proto=$prefix/share/cri-api/api.proto
cri_pkg=golang-k8s-cri-api-dev
cri_candidate() {
  chroot "$criu_root" apt-cache show --no-all-versions "$cri_pkg/unstable" 2>/dev/null \
    | sed -n 's/^Version: //p' | head -n1
}
cri_version=$(cri_candidate)
if [ -z "$cri_version" ]; then
  chroot "$criu_root" apt-get -q -o Acquire::Check-Valid-Until=false update >/dev/null
  cri_version=$(cri_candidate)
  [ -n "$cri_version" ] || { echo "cri-api: no $cri_pkg in unstable" >&2; exit 1; }
fi
if [ ! -f "$cri_proto" ] || [ "$(cat "$cri_proto.version" 2>/dev/null)" != "$cri_version" ]; then
  log "cri-api: extracting api.proto from $cri_pkg $cri_version"
  rm -rf "$criu_root/tmp/cri-api"
  mkdir -p "$criu_root/tmp/cri-api"
  chroot "$criu_root" chown _apt /tmp/cri-api  # apt downloads as _apt
  chroot "$criu_root" sh -c "cd /tmp/cri-api && apt-get download -q '$cri_pkg=$cri_version'" >/dev/null
  chroot "$criu_root" sh -c 'dpkg-deb -x /tmp/cri-api/*.deb /tmp/cri-api/root'
  mkdir -p "$(dirname "$cri_proto")"
  cp "$criu_root/tmp/cri-api/root/usr/share/gocode/src/k8s.io/cri-api/pkg/apis/runtime/v1/api.proto" \
    "$cri_proto.tmp"
  mv -f "$cri_proto.tmp" "$cri_proto"
  echo "$cri_version" > "$cri_proto.version"
  rm -rf "$criu_root/tmp/cri-api"
fi
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
cri_stamp="$(sha256sum "$cri_proto" | cut -d' ' -f1) grpcio-tools $("$venv/bin/python" -c \
  'from importlib.metadata import version; print(version("grpcio-tools"))')"
if [ "$(cat "$site/k8s_cri/.generated-from" 2>/dev/null)" != "$cri_stamp" ] \
   || ! "$venv/bin/python" -c 'from k8s_cri import api_pb2, api_pb2_grpc' 2>/dev/null; then
  log "cri-api: generating the k8s_cri stubs in $site"
  gen=$(mktemp -d)
  mkdir -p "$gen/src/k8s_cri" "$gen/out/k8s_cri"
  cp "$cri_proto" "$gen/src/k8s_cri/api.proto"
  "$venv/bin/python" -m grpc_tools.protoc -I"$gen/src" --python_out="$gen/out" \
    --pyi_out="$gen/out" --grpc_python_out="$gen/out" "$gen/src/k8s_cri/api.proto"
  cat > "$gen/out/k8s_cri/__init__.py" <<'PY'
"""The Kubernetes CRI API (runtime.v1), generated by jhub-suspend's scripts/install.sh from the
api.proto in Debian's golang-k8s-cri-api-dev."""
PY
  touch "$gen/out/k8s_cri/py.typed"
  echo "$cri_stamp" > "$gen/out/k8s_cri/.generated-from"
  rm -rf "$site/k8s_cri"
  mv "$gen/out/k8s_cri" "$site/k8s_cri"
  rm -rf "$gen"
  "$venv/bin/python" -c 'from k8s_cri import api_pb2, api_pb2_grpc; api_pb2_grpc.RuntimeServiceStub' \
    || { echo "cri-api: the generated k8s_cri does not import" >&2; exit 1; }
fi

# CRIU's configuration for runc, as a node's administrator sets it (docs/deploy.md). CRI
# checkpoints pass no TCP option, and a notebook always holds connections: its kernels' ZeroMQ
# channels on loopback, and the proxy's keep-alive and websocket connections from outside the
# pod. tcp-close lets CRIU dump them and restores them closed, so a restore on a new address
# works; ZeroMQ and JupyterLab reconnect. (tcp-established alone dumps them, but then every
# restore on a new address fails: "Can't bind inet socket back".)
if ! grep -qxE '[[:space:]]*tcp-close[[:space:]]*' /etc/criu/runc.conf 2>/dev/null; then
  log "criu: adding tcp-close to /etc/criu/runc.conf"
  mkdir -p /etc/criu
  # (a last line without its newline gets one first)
  if [ -n "$(tail -c1 /etc/criu/runc.conf 2>/dev/null)" ]; then echo >> /etc/criu/runc.conf; fi
  echo tcp-close >> /etc/criu/runc.conf
fi

# The node images (the sandbox image and the notebook image), as OCI layouts in $prefix/images.
JHUB_SUSPEND_PREFIX=$prefix JHUB_SUSPEND_VENV=$venv "$repo/scripts/build-images.sh"

log "done: criu $("$criu_bin" --version | head -n1), $("$prefix/bin/containerd" --version | awk '{print $1, $3}'), venv $venv"
