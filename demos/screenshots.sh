#!/usr/bin/env bash
# Writes the README's screenshots with a real headless Chromium, from a real
# server with a class of 30: docs/img/chat-phone.png (390x844, a phone),
# docs/img/chat-laptop.png (1280x800), docs/img/board-projector.png
# (1280x720), the board on each projector size: docs/img/board-1024x768.png,
# board-1280x720.png, board-1366x768.png and board-1920x1080.png, and lecture
# mode (lecture-1024x768.png, lecture-1920x1080.png).
# Needs Chromium (apt-get install -y chromium, or set CHROMIUM).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-docs/img}"
mkdir -p "$out"
VIVACHAT_SCREENSHOTS="$(cd "$out" && pwd)" \
  cargo test --quiet --test browser -- --ignored --exact screenshots
# Lecture mode at 1024x768 and 1920x1080 (docs/img/lecture-WxH.png).
VIVACHAT_SCREENSHOTS="$(cd "$out" && pwd)" \
  cargo test --quiet --test browser -- --exact the_lecture_board_steps_forwards_and_backwards_through_a_scenario
ls -l "$out"/*.png
