#!/usr/bin/env bash
# Reproduces vendor/: installs the pinned uPlot from npm (package-lock.json) into a
# scratch node_modules and copies its dist files, which the hone binary embeds
# (crates/hone-api/src/ui.rs). Run after changing the version in package.json.
set -euo pipefail
cd "$(dirname "$0")"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
cp package.json package-lock.json "$scratch/"
(cd "$scratch" && npm ci --no-audit --no-fund --ignore-scripts >&2)
cp "$scratch/node_modules/uplot/dist/uPlot.iife.min.js" vendor/uPlot.iife.min.js
cp "$scratch/node_modules/uplot/dist/uPlot.min.css" vendor/uPlot.min.css
cp "$scratch/node_modules/uplot/LICENSE" vendor/uPlot.LICENSE
echo "vendor/ now holds uplot $(node -p "require('$scratch/node_modules/uplot/package.json').version")" >&2
