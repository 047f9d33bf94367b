#!/usr/bin/env bash
# Screenshots of the console's main pages (and the recipient inbox on a
# phone-sized screen), taken by the browser test in headless Chromium:
#   scripts/screenshots.sh [DIR]   (default docs/screenshots)
# Installs Debian's chromium, chromium-driver and a CJK font if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${1:-docs/screenshots}"
missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -x /usr/bin/chromedriver ] || missing+=(chromium-driver)
fc-list :lang=zh 2>/dev/null | grep -q . || missing+=(fonts-noto-cjk)
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
mkdir -p "$dir"
QUNFA_SCREENSHOTS="$(cd "$dir" && pwd)" cargo test -p qunfa-server --test it -- --exact browser_tour
ls -1 "$dir"/*.png
