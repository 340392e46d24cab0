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
log() { printf '[install] %s\n' "$*" >&2; }

if [ "$(id -u)" != 0 ]; then
  echo "install.sh must run as root: the local cluster creates network namespaces and runs CRIU." >&2
  exit 1
fi

apt_packages=(debootstrap prometheus docker-registry buildah skopeo chromium iproute2 procps
              curl ca-certificates python3-venv)
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

# The Debian mirror, read from this machine's own apt sources (never written into the repo).
debian_mirror() {
  local uri
  uri=$(grep -hsE '^(URIs:|deb )' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null \
        | grep -v -- '-security' | sed -E 's/^URIs:[[:space:]]*//; s/^deb (\[[^]]*\] )?//' \
        | awk '{print $1}' | grep -E '/debian/?$' | head -n1)
  [ -n "$uri" ] || { echo "no Debian mirror found in /etc/apt/sources*" >&2; return 1; }
  echo "${uri%/}"
}

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

# configurable-http-proxy, from npm.
chp=$prefix/node/node_modules/.bin/configurable-http-proxy
if [ ! -x "$chp" ]; then
  log "npm: installing configurable-http-proxy"
  mkdir -p "$prefix/node"
  npm install --prefix "$prefix/node" --no-audit --no-fund configurable-http-proxy >/dev/null
fi
# uPlot, the admin page's charting library, served by the suspend service (no CDN).
if [ ! -f "$prefix/node/node_modules/uplot/dist/uPlot.iife.min.js" ]; then
  log "npm: installing uplot"
  mkdir -p "$prefix/node"
  npm install --prefix "$prefix/node" --no-audit --no-fund uplot >/dev/null
fi
mkdir -p "$prefix/bin"
ln -sf "$chp" "$prefix/bin/configurable-http-proxy"

# The Python environment: the project itself, editable, with JupyterLab for the demo's notebooks
# and the test and lint tools.
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
if [ ! -f "$stamp" ] || [ "$repo/setup.cfg" -nt "$stamp" ]; then
  log "python: installing jhub-suspend and its test dependencies"
  # pip warns once per configured local index that lacks a package; those lines are noise.
  "$venv/bin/pip" install -q -e "$repo[demo,test,lint]" 2>&1 \
    | grep -vE "is neither a file nor a directory|BuildBackendWarning|^ *(!!|\*+|Please be careful|name as your package|with strategy|return)" || true
  "$venv/bin/python" -c "import jhub_suspend, kubespawner, kubernetes_asyncio, pytest_asyncio" \
    || { echo "python: the install into $venv is incomplete" >&2; exit 1; }
  touch "$stamp"
fi
log "done: criu $("$criu_bin" --version | head -n1), venv $venv"
