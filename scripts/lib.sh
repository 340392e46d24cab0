# Shell functions shared by install.sh and build-images.sh (sourced, not run).

log() { printf '[%s %s] %s\n' "${log_tag:-install}" "$(date +%T)" "$*" >&2; }

# The Debian mirror, read from this machine's own apt sources (never written into the repo).
debian_mirror() {
  local uri
  uri=$(grep -hsE '^(URIs:|deb )' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null \
        | grep -v -- '-security' | sed -E 's/^URIs:[[:space:]]*//; s/^deb (\[[^]]*\] )?//' \
        | awk '{print $1}' | grep -E '/debian/?$' | head -n1)
  [ -n "$uri" ] || { echo "no Debian mirror found in /etc/apt/sources*" >&2; return 1; }
  echo "${uri%/}"
}
