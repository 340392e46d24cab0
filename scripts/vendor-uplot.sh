#!/usr/bin/env bash
# Refreshes uPlot, the admin page's charting library, vendored in
# jhub_suspend/service/static/vendor/uplot/ so that every install of the package serves it (the
# hub image included; no CDN, the pages work offline). Not run by install.sh: the files are
# committed. Run it to move to another version, then commit what it changed:
#
#   scripts/vendor-uplot.sh 1.6.32
set -euo pipefail
version=${1:?usage: scripts/vendor-uplot.sh VERSION}
repo=$(cd "$(dirname "$0")/.." && pwd)
dest=$repo/jhub_suspend/service/static/vendor/uplot
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "uplot@$version" >/dev/null)
tar -xzf "$work/uplot-$version.tgz" -C "$work"
integrity=$(cd "$work" && npm view "uplot@$version" dist.integrity)
mkdir -p "$dest"
cp "$work/package/dist/uPlot.iife.min.js" "$work/package/dist/uPlot.min.css" "$work/package/LICENSE" "$dest/"
cat > "$dest/VERSION" <<TXT
uplot $version (npm, $integrity)
dist/uPlot.iife.min.js, dist/uPlot.min.css and LICENSE, unmodified; refresh with scripts/vendor-uplot.sh
TXT
grep -q "(v$version)" "$dest/uPlot.iife.min.js" || { echo "uplot: not version $version" >&2; exit 1; }
echo "uplot $version vendored in $dest"
