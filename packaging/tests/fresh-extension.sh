#!/usr/bin/env bash
# Test that the Makefile's PHP runs load the freshly built modules/pklock.so even when an
# installed one is enabled: `make php-ini` (bin/php-ini-without-pklock) must copy PHP's scan
# dir without the ini that loads the installed copy and keep the others, and PHP must then
# map only the fresh file.
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
fresh=$root/modules/pklock.so
[ -f "$fresh" ] || { echo "fresh-extension: $fresh is missing; run make ext" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# An "installed" pklock.so enabled as make install enables it, next to an unrelated ini.
mkdir -p "$work/installed" "$work/conf.d"
cp "$fresh" "$work/installed/pklock.so"
echo "extension=$work/installed/pklock.so" >"$work/conf.d/20-pklock.ini"
echo "memory_limit=77M" >"$work/conf.d/10-other.ini"

# What PHP maps and says: the pklock.so files in its address space, its memory_limit.
probe='preg_match_all("#\S*pklock\.so#", file_get_contents("/proc/self/maps"), $m);
  echo implode(",", array_unique($m[0])), " ", ini_get("memory_limit");'

# Without the filtered scan dir the installed copy wins: the check below can tell them apart.
unfiltered=$(PHP_INI_SCAN_DIR=$work/conf.d php -d "extension=$fresh" -r "$probe" 2>&1)
grep -q "already loaded" <<<"$unfiltered" || { echo "fresh-extension: expected the double load to warn: $unfiltered" >&2; exit 1; }

PHP_INI_SCAN_DIR=$work/conf.d make -s -C "$root" php-ini PHP_TEST_INI_DIR="$work/filtered"
filtered=$(PHP_INI_SCAN_DIR=$work/filtered php -d "extension=$fresh" -r "$probe" 2>&1)
expected="$(readlink -f "$fresh") 77M"
[ "$filtered" = "$expected" ] || { echo "fresh-extension: got '$filtered', expected '$expected'" >&2; exit 1; }
echo "fresh-extension: ok"
