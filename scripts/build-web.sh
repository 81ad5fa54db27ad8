#!/usr/bin/env bash
# Builds the web client into web/dist (index.html + app.js with protobufjs bundled in).
# Needs Node.js and npm at build time only; chat-node just serves the two files
# (client.web_dir = "web/dist", client.websocket_listen = "127.0.0.1:7480").
set -euo pipefail
cd "$(dirname "$0")/../web"
if [ ! -d node_modules ] || [ package-lock.json -nt node_modules ]; then
    npm ci --no-audit --no-fund --loglevel=error
fi
npm run --silent build
echo "built $(pwd)/dist"
