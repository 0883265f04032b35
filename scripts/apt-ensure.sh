# Sourced by scripts/setup.sh and test/kernels/lib.sh: installs the Debian
# packages of a list that are missing, and nothing else.
#   ensure_debian_packages pkg...
ensure_debian_packages() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if ((${#missing[@]})); then
    printf '%s: installing Debian packages: %s\n' "${0##*/}" "${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}
