#!/usr/bin/env bash
# Builds the local cluster's node images as OCI layouts in $JHUB_SUSPEND_PREFIX/images/<name>
# (jhub_suspend.localcluster.nodeimages pushes them to the cluster's registry):
#
#   busybox   from scratch: Debian's static busybox and its applets; `sleep infinity`. The
#             containerd sandbox ("pause") image, and a tiny image for tests.
#   notebook  a Jupyter user image: Debian 12 (debootstrap) with a virtual environment in
#             /opt/notebook holding jupyterhub, jupyterlab and ipykernel at the versions of the
#             project's environment, and jhub-suspend itself (its Lab extension); user jovyan.
#
# Each image is rebuilt only when its inputs change: a hash of them is kept next to the layout
# in <name>.inputs. Run as root (debootstrap, chroot); install.sh calls it.
#
#   JHUB_SUSPEND_PREFIX  where the images go (default /opt/jhub-suspend)
#   JHUB_SUSPEND_VENV    the project's Python environment (default <repo>/.venv)
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
prefix=${JHUB_SUSPEND_PREFIX:-/opt/jhub-suspend}
venv=${JHUB_SUSPEND_VENV:-$repo/.venv}
images=$prefix/images
log_tag=images
# shellcheck source=lib.sh
. "$repo/scripts/lib.sh"  # log, debian_mirror

if [ "$(id -u)" != 0 ]; then
  echo "build-images.sh must run as root (debootstrap, chroot)." >&2
  exit 1
fi

# buildah keeps its working containers in its own storage; nothing under /etc changes. (Its run
# state is per storage, so another prefix gets its own.)
runroot=/run/jhub-suspend/buildah
[ "$prefix" = /opt/jhub-suspend ] || runroot+=-$(printf %s "$prefix" | sha256sum | cut -c1-8)
bh() {
  buildah --root "$prefix/buildah/storage" --runroot "$runroot" --storage-driver vfs "$@"
}

# Removes a working container, unmounting first whatever is still mounted inside it (deepest
# first): a mount left inside a tree must never meet its removal.
remove_container() {
  local m
  if m=$(bh mount "$1" 2>/dev/null) && [ -n "$m" ]; then
    findmnt -rn -o TARGET | { grep -F "$m/" || true; } | sort -r | while read -r t; do
      umount -l "$t" || true
    done
    bh umount "$1" >/dev/null 2>&1 || true
  fi
  bh rm "$1" >/dev/null 2>&1 || true
}

# What is left over when a build stops half-way: working containers and temporary directories.
containers=()
tmpdirs=()
cleanup() {
  set +e
  local x
  for x in "${containers[@]}"; do remove_container "$x"; done
  for x in "${tmpdirs[@]}"; do rm -rf "$x"; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

# Working containers and directories left by a run that was killed (their names end with that
# run's pid).
workdirs=$prefix/buildah/work
for d in "$workdirs"/*.[0-9]*; do
  if [ -d "$d" ] && ! kill -0 "${d##*.}" 2>/dev/null; then rm -rf "$d"; fi
done
bh containers -a --noheading --format '{{.ContainerID}} {{.ContainerName}}' 2>/dev/null \
  | { grep -E ' jhub-suspend-[a-z]+-[0-9]+$' || true; } | while read -r id name; do
      if ! kill -0 "${name##*-}" 2>/dev/null; then
        log "removing the working container $name, left by an earlier run"
        remove_container "$id"
      fi
    done

# A hash of the given files and strings.
inputs_hash() {
  local x
  for x in "$@"; do
    if [ -f "$x" ]; then sha256sum "$x" | sed "s|$repo/||"; else printf '%s\n' "$x"; fi
  done | sha256sum | cut -d' ' -f1
}

up_to_date() {  # name hash
  [ -f "$images/$1/index.json" ] && [ "$(cat "$images/$1.inputs" 2>/dev/null)" = "$2" ]
}

# Commits the working container $1 to the OCI layout $images/$2 (gzip layers, which pushes
# keep as they are), replacing the old one only once the new one is complete.
commit_layout() {
  local ctr=$1 name=$2 hash=$3 out=$images/$2
  mkdir -p "$images"
  rm -rf "$out.tmp"
  tmpdirs+=("$out.tmp")
  bh commit -q --format oci --disable-compression=false "$ctr" "oci:$out.tmp:latest" >/dev/null
  skopeo inspect "oci:$out.tmp:latest" >/dev/null
  rm -rf "$out"
  mv "$out.tmp" "$out"
  echo "$hash" > "$out.inputs"
  log "$name: $(du -sh "$out" | cut -f1) as an OCI layout in $out"
}

# --- busybox ----------------------------------------------------------------------------------

busybox_bin=/bin/busybox
[ -x "$busybox_bin" ] && file -L "$busybox_bin" | grep -q 'statically linked' \
  || { echo "$busybox_bin is not Debian's static busybox: apt-get install busybox-static" >&2; exit 1; }
busybox_hash=$(inputs_hash "$repo/scripts/build-images.sh" "$(dpkg-query -W busybox-static)")
if ! up_to_date busybox "$busybox_hash"; then
  log "busybox: building"
  ctr=$(bh from --name "jhub-suspend-busybox-$$" scratch)
  containers+=("$ctr")
  mnt=$(bh mount "$ctr")
  mkdir -p "$mnt/bin" "$mnt/etc" "$mnt/root" "$mnt/proc" "$mnt/sys" "$mnt/dev"
  install -d -m 1777 "$mnt/tmp"
  cp "$busybox_bin" "$mnt/bin/busybox"
  for applet in $("$busybox_bin" --list); do
    [ "$applet" = busybox ] || ln -sf busybox "$mnt/bin/$applet"
  done
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' \
    > "$mnt/etc/passwd"
  printf 'root:x:0:\nusers:x:100:\nnogroup:x:65534:\n' > "$mnt/etc/group"
  for applet in sh sleep cat ls echo true env ps wget nc; do
    [ -L "$mnt/bin/$applet" ] || { echo "busybox: no applet $applet" >&2; exit 1; }
  done
  bh umount "$ctr" >/dev/null
  bh config --env PATH=/bin --cmd '["sleep","infinity"]' "$ctr"
  commit_layout "$ctr" busybox "$busybox_hash"
  remove_container "$ctr"
  containers=()
fi

# --- notebook ---------------------------------------------------------------------------------

versions=$("$venv/bin/python" -c '
from importlib.metadata import version
print(" ".join(f"{p}=={version(p)}" for p in ("jupyterhub", "jupyterlab", "ipykernel")))')
notebook_hash=$(inputs_hash "$repo/scripts/build-images.sh" "$repo/setup.cfg" \
  $(find "$repo/jhub_suspend/jupyter" -type f | LC_ALL=C sort) "$versions")
if ! up_to_date notebook "$notebook_hash"; then
  log "notebook: building with $versions"
  mirror=$(debian_mirror)
  work=$workdirs/notebook.$$
  tmpdirs+=("$work")
  rm -rf "$work"
  mkdir -p "$work"

  # The wheels, on the host (the image's python3 is the same Debian 3.11 as the environment's).
  "$venv/bin/pip" wheel -q --disable-pip-version-check -w "$work/wheels" $versions 2>&1 \
    | grep -vE "is neither a file nor a directory" || true
  "$venv/bin/pip" wheel -q --disable-pip-version-check --no-deps -w "$work/project" "$repo" 2>&1 \
    | grep -vE "is neither a file nor a directory|BuildBackendWarning|^ *(!!|\*+|Please be careful|name as your package|with strategy|return)" || true
  ls "$work/wheels"/jupyterlab-*.whl "$work/project"/jhub_suspend-*.whl >/dev/null

  ctr=$(bh from --name "jhub-suspend-notebook-$$" scratch)
  containers+=("$ctr")
  rootfs=$(bh mount "$ctr")
  include=python3,python3-venv,ca-certificates
  apt-cache show tini >/dev/null 2>&1 && include+=,tini
  log "notebook: debootstrap bookworm ($include) from $mirror"
  debootstrap --variant=minbase --include="$include" bookworm "$rootfs" "$mirror" \
    >"$work/debootstrap.log" 2>&1 || { tail -n 30 "$work/debootstrap.log" >&2; exit 1; }

  # in the tree, with none of this machine's settings (PIP_*, PYTHON*) in the environment
  in_rootfs() { env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 chroot "$rootfs" "$@"; }
  log "notebook: installing the virtual environment /opt/notebook"
  in_rootfs /usr/bin/python3 -m venv /opt/notebook
  mkdir -p "$rootfs/tmp/wheels"
  cp "$work/wheels"/* "$work/project"/* "$rootfs/tmp/wheels/"
  pip_install=(in_rootfs /opt/notebook/bin/pip install -q --no-index --no-cache-dir
               --disable-pip-version-check --find-links /tmp/wheels)
  "${pip_install[@]}" $versions
  project_wheel=$(basename "$(ls "$work/project"/jhub_suspend-*.whl)")
  "${pip_install[@]}" --no-deps "/tmp/wheels/$project_wheel"
  labext=/opt/notebook/share/jupyter/labextensions/jhub-suspend
  [ -f "$rootfs$labext/package.json" ] \
    || { echo "notebook: the Lab extension is not in $labext" >&2; exit 1; }
  in_rootfs /opt/notebook/bin/jupyterhub-singleuser --version >/dev/null

  in_rootfs useradd --uid 1000 --gid 100 --create-home --home-dir /home/jovyan \
    --shell /bin/bash jovyan

  # Lean: no package lists or caches, no documentation but the copyright files.
  in_rootfs apt-get clean
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/debconf/*-old \
    "$rootfs"/var/log/*.log "$rootfs"/var/log/apt/* "$rootfs"/root/.cache "$rootfs"/tmp/* \
    "$rootfs"/usr/share/man "$rootfs"/usr/share/info
  find "$rootfs/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
  find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete
  # the runtime provides these
  : > "$rootfs/etc/resolv.conf"
  echo localhost > "$rootfs/etc/hostname"
  log "notebook: root file system $(du -sh "$rootfs" | cut -f1)"
  # tini as PID 1 reaps the kernels' orphans and passes signals on to the server's process group.
  entrypoint=()
  [ -x "$rootfs/usr/bin/tini" ] && entrypoint=(--entrypoint '["tini","-g","--"]')
  bh umount "$ctr" >/dev/null

  bh config --user 1000:100 --workingdir /home/jovyan \
    --env PATH=/opt/notebook/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env HOME=/home/jovyan "${entrypoint[@]}" --cmd '["jupyterhub-singleuser"]' "$ctr"
  commit_layout "$ctr" notebook "$notebook_hash"
  remove_container "$ctr"
  containers=()
fi
