#!/usr/bin/env bash
# Builds the web client into web/dist (index.html + app.js with protobufjs bundled in).
# Needs Node.js and npm at build time only; chat-node just serves the two files
# (chat-node --ws-listen 127.0.0.1:7480 --web-dir web/dist, or client.websocket_listen
# and client.web_dir in its config).
set -euo pipefail
cd "$(dirname "$0")/../web"
if [ ! -d node_modules ] || [ package-lock.json -nt node_modules ]; then
    npm ci --no-audit --no-fund --loglevel=error
fi
npm run --silent build
echo "built $(pwd)/dist"
