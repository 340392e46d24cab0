#!/usr/bin/env bash
# Builds, HERE (no GPU needed, as root), the .criu/ folder that `run.sh criu` carries to a GPU
# machine: CRIU built from Debian's source package (unstable: the release scripts/install.sh
# installs) with its CUDA plugin, CRIU's libraries and loader, and NVIDIA's cuda-checkpoint tool,
# which CRIU 4.2's CUDA plugin runs for every lock/checkpoint/restore/unlock. See criu_cuda.md.
#
#   tests/device/build_criu.sh PATH/TO/cuda-checkpoint
#
# cuda-checkpoint is NVIDIA's binary (github NVIDIA/cuda-checkpoint, bin/x86_64_Linux/; 6 kB,
# linked against libcuda.so.1): bring it with the search tool's fetch and `git show`. It is
# carried, never committed. .criu/ must be ignored by git (add /.criu/ to .git/info/exclude).
# Needs debootstrap and Debian's mirror; about 15 minutes on 2 cores. NOT RUN YET: written in a
# session without a GPU, which stopped at the plan (criu_cuda.md).
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=/dev/null
. "$repo/scripts/lib.sh" # debian_mirror
if [ $# -ne 1 ] || [ ! -x "$1" ]; then
  echo "usage: $0 PATH/TO/cuda-checkpoint" >&2
  exit 64
fi
[ "$(id -u)" -eq 0 ] || { echo "$0 must run as root (debootstrap, chroot)" >&2; exit 1; }
cuda_checkpoint=$(realpath "$1")
root=${CRIU_BUILD_ROOT:-/tmp/criu-cuda-build}
out=$repo/.criu
mirror=$(debian_mirror)

if [ ! -x "$root/usr/bin/gcc" ]; then
  rm -rf "$root"
  debootstrap --variant=minbase trixie "$root" "$mirror"
  printf 'deb %s unstable main\ndeb-src %s unstable main\n' "$mirror" "$mirror" \
    >"$root/etc/apt/sources.list.d/unstable.list"
  chroot "$root" apt-get -q update
  # CRIU's build dependencies without its documentation's (asciidoc and its TeX are large).
  DEBIAN_FRONTEND=noninteractive chroot "$root" apt-get install -y -q --no-install-recommends \
    -t unstable build-essential dpkg-dev pkg-config python3 python3-protobuf \
    protobuf-compiler protobuf-c-compiler libprotobuf-c-dev libprotobuf-dev libnl-3-dev \
    libnet1-dev libcap-dev libaio-dev libgnutls28-dev libbsd-dev libnftables-dev \
    libdrm-dev uuid-dev
fi

# shellcheck disable=SC2016 # expanded inside the chroot
chroot "$root" sh -ec '
  mkdir -p /src && cd /src
  [ -d criu-*/criu ] || apt-get source -q -t unstable criu
  cd criu-*/
  make -j"$(nproc)" criu
  make cuda_plugin
  ./criu/criu --version
'
src=$(find "$root/src" -maxdepth 1 -type d -name 'criu-*' | head -n1)

rm -rf "$out"
mkdir -p "$out/lib" "$out/plugins" "$out/bin"
cp "$src/criu/criu" "$out/criu"
cp "$src/plugins/cuda/cuda_plugin.so" "$out/plugins/"
cp "$root/lib64/ld-linux-x86-64.so.2" "$out/"
# The libraries CRIU and the plugin load, from the build tree, run through its own loader.
for bin in "$src/criu/criu" "$src/plugins/cuda/cuda_plugin.so"; do
  "$root/lib64/ld-linux-x86-64.so.2" \
    --library-path "$root/usr/lib/x86_64-linux-gnu:$root/lib/x86_64-linux-gnu" --list "$bin" |
    awk '$3 ~ /^\// {print $3}'
done | sort -u | while read -r lib; do cp -L "$lib" "$out/lib/"; done
cp "$cuda_checkpoint" "$out/bin/cuda-checkpoint"
chmod +x "$out/bin/cuda-checkpoint"

"$out/ld-linux-x86-64.so.2" --library-path "$out/lib" "$out/criu" --version
du -sh "$out"
echo "built $out: carry it with run(command=\"bash tests/device/run.sh criu\", carry=[\".criu\"])"
