#!/usr/bin/env bash
# Switches the working tree's node_modules to Express 4 (no argument) for the second test run,
# or back to the lockfile's versions (`restore`). package.json and the lockfile are never changed.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "restore" ]; then
  echo "== restoring the lockfile's express"
  npm install --no-save --no-audit --no-fund
else
  echo "== installing express@4 for the express 4 run"
  npm install --no-save --no-audit --no-fund express@4 @types/express@4
fi
node -e "process.stdout.write('express ' + require('express/package.json').version + ', @types/express ' + require('@types/express/package.json').version + '\n')"
