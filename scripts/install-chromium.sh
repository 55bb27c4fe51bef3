#!/usr/bin/env bash
# Installs Debian's Chromium for the browser tests (no browser download from
# anywhere else works on these machines). Needs root, as apt-get does.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then exit 0; fi
if [ "$(id -u)" != 0 ]; then
  echo "Chromium is missing: run 'sudo apt-get install -y chromium' (or set CHROMIUM=/path/to/chromium)" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q chromium
