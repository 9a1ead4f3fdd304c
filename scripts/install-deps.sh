#!/usr/bin/env bash
# Installs the Debian packages mire needs, only those missing. Needs root (or sudo) when any is.
set -euo pipefail
packages=(cmake make g++ pkg-config libpq-dev postgresql-15 libfmt-dev doctest-dev
          nlohmann-json3-dev libcaf-dev libcpp-httplib-dev)
missing=()
for p in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  [[ "$status" == "install ok installed" ]] || missing+=("$p")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0
echo "installing missing packages: ${missing[*]}"
sudo=""
[[ $(id -u) -eq 0 ]] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
