#!/usr/bin/env bash
# Writes the README's screenshots with a real headless Chromium, from a real
# server with a class of 30: docs/img/chat-phone.png (390x844, a phone),
# docs/img/chat-laptop.png (1280x800), docs/img/board-projector.png
# (1280x720), and the board on each projector size: docs/img/board-1024x768.png,
# board-1280x720.png, board-1366x768.png and board-1920x1080.png.
# Needs Chromium (apt-get install -y chromium, or set CHROMIUM).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-docs/img}"
mkdir -p "$out"
VIVACHAT_SCREENSHOTS="$(cd "$out" && pwd)" \
  cargo test --quiet --test browser -- --ignored --exact screenshots
ls -l "$out"/*.png
