#!/usr/bin/env bash
# Unpacks Debian's CLI11 headers (libcli11-dev, header-only) into DEST without installing anything,
# and prints the include directory to pass as COSYFAST_CLI11_INCLUDE (cmake/deps.cmake): for
# machines that reach Debian's archive but not GitHub (CI), and for the offline GPU pack.
#   export COSYFAST_CLI11_INCLUDE="$(bash packaging/get_cli11.sh DEST)"
set -euo pipefail
dest=$(realpath -m "${1:?usage: get_cli11.sh DEST}")
if [ ! -f "$dest/usr/include/CLI/CLI.hpp" ]; then
  work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
  # apt-get download needs the package lists; a fresh container may have none yet (root can fetch them).
  (cd "$work" && apt-get download libcli11-dev >/dev/null 2>&1) ||
    { [ "$(id -u)" = 0 ] && apt-get update -qq >/dev/null 2>&1 && (cd "$work" && apt-get download libcli11-dev >/dev/null 2>&1); } ||
    { echo "get_cli11.sh: apt-get download libcli11-dev failed" >&2; exit 1; }
  mkdir -p "$dest" && dpkg-deb -x "$work"/libcli11-dev_*.deb "$dest"
fi
echo "$dest/usr/include"
