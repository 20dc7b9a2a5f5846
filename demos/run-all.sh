#!/usr/bin/env bash
# Runs every non-interactive demo; CI runs this, so the docs cannot describe
# something that no longer works.
set -euo pipefail
cd "$(dirname "$0")"
for demo in offline-delivery resume multi-device groups-and-blocking durable-restart cluster big-o; do
  echo "##### demos/$demo.sh"
  bash "./$demo.sh"
done
echo
echo "all demos passed"
