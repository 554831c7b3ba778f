#!/usr/bin/env bash
# Debian/Ubuntu packages sentistream needs. Idempotent: installs only what is missing.
set -euo pipefail

packages=()
python3 -c 'import venv, ensurepip' 2>/dev/null || packages+=(python3-venv python3-pip)
command -v make >/dev/null || packages+=(make)
command -v redis-server >/dev/null || packages+=(redis-server)  # stream tests start their own
command -v wrk >/dev/null || packages+=(wrk)                 # HTTP load generator (benchmarks)
command -v openssl >/dev/null || packages+=(openssl)         # test certificates (TLS tests)
command -v chromium >/dev/null || packages+=(chromium)       # dashboard browser tests (Playwright)

if [ ${#packages[@]} -eq 0 ]; then
  echo "system packages: nothing to install"
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  echo "please install: ${packages[*]} (no apt-get on this machine)" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${packages[@]}"
