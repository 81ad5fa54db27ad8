#!/usr/bin/env bash
# The whole test suite, on a fresh machine too: installs what the tests need beyond
# cargo (Debian's Chromium, through scripts/ci-setup.sh), then runs every test.
# The tests themselves fetch npm packages (web client) and PyPI packages (Python client).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ci-setup.sh
cargo test --workspace "$@"
