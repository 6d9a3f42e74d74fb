#!/usr/bin/env bash
# Re-fetch the vendored uPlot from npm, check the tarball's sha256, copy its files here.
#
#   refresh.sh                      the pinned version (checks the copies are intact)
#   refresh.sh VERSION SHA256       another version, whose tarball must hash to SHA256
#
# Examples:
#   herd/dashboard/static/vendor/refresh.sh
#   herd/dashboard/static/vendor/refresh.sh 1.6.33 0123abcd...   (then edit VENDORED.md)
set -euo pipefail

PINNED_VERSION=1.6.32
PINNED_SHA256=4b8a8191e425658e3ea8c8c1314b0fc679c861ee3a1af2b20c7b16ba50b5133d

version=${1:-$PINNED_VERSION}
expected=${2:-}
if [ -z "$expected" ]; then
  if [ "$version" != "$PINNED_VERSION" ]; then
    echo "refresh.sh: give the sha256 of uplot-$version.tgz as well (npm view uplot@$version dist)" >&2
    exit 1
  fi
  expected=$PINNED_SHA256
fi

here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

(cd "$work" && npm pack --silent "uplot@$version" >/dev/null)
tarball="$work/uplot-$version.tgz"
actual=$(sha256sum "$tarball" | cut -d' ' -f1)
if [ "$actual" != "$expected" ]; then
  echo "refresh.sh: uplot-$version.tgz has sha256 $actual, expected $expected; nothing copied" >&2
  exit 1
fi
tar -xzf "$tarball" -C "$work"
cp "$work/package/dist/uPlot.iife.min.js" "$work/package/dist/uPlot.min.css" "$here/"
cp "$work/package/LICENSE" "$here/uPlot.LICENSE"
(cd "$here" && sha256sum uPlot.iife.min.js uPlot.min.css uPlot.LICENSE > SHA256SUMS)
echo "uplot $version (tarball sha256 $actual) copied to $here"
git -C "$here" diff --stat -- . 2>/dev/null || true
