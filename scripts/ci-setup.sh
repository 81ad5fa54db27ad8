#!/usr/bin/env bash
# Installs what the test suite needs beyond cargo, on a clean Debian machine:
# Chromium for the browser end-to-end test, iproute2 and nftables for the fault-injection
# test's network namespaces (Node.js, npm and python3 are on the image; npm and PyPI
# packages are installed by the tests themselves).
set -euo pipefail
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v nft >/dev/null 2>&1 || missing+=(nftables)
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "missing and this is not root: install Debian's ${missing[*]}" >&2
        exit 1
    fi
    for attempt in 1 2 3; do
        if apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null; then
            break
        fi
        echo "apt-get failed (attempt $attempt); retrying" >&2
        sleep 5
    done
fi
command -v chromium >/dev/null
command -v ip >/dev/null && command -v nft >/dev/null
command -v node >/dev/null && command -v npm >/dev/null
command -v python3 >/dev/null
echo "ci-setup: chromium $(chromium --version 2>/dev/null | awk '{print $2}'), node $(node --version), $(nft --version)"
