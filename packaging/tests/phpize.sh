#!/usr/bin/env bash
# Test of the phpize build path (php-ext/config.m4), the build PIE runs: copies the checkout
# to a temporary directory, runs phpize, configure and make in the build-path that
# composer.json's php-ext section names, and loads the resulting modules/pklock.so into a
# bare PHP (php -n) that must know PkLockClient. The file must be stripped of debug info,
# every configure option composer.json announces must exist, and make install must install
# it. CARGO_TARGET_DIR (default: this checkout's target/) is shared, so only the
# workspace's own crates are compiled again.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
. "$root/packaging/tests/lib.sh"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The committed and changed files of the checkout, without build output.
(cd "$root" && git ls-files -z --cached --others --exclude-standard) | \
  (cd "$root" && xargs -0 cp --parents -t "$work")

# php_ext_setting NAME: a setting of composer.json's php-ext section; "options": the names
# of its configure options, one a line.
php_ext_setting() {
  php -n -r '$ext = json_decode(file_get_contents($argv[1]), true, 8, JSON_THROW_ON_ERROR)["php-ext"];
    echo $argv[2] === "options" ? implode("\n", array_column($ext["configure-options"] ?? [], "name")) : $ext[$argv[2]];' \
    "$root/composer.json" "$1"
}
# run LOG COMMAND...: runs COMMAND with its output in $work/LOG, shown if it fails.
run() {
  local log=$work/$1
  shift
  "$@" >"$log" 2>&1 || { cat "$log"; fail "$* failed"; }
}

[ "$(php_ext_setting extension-name)" = pklock ] || fail "composer.json: php-ext.extension-name is not pklock"
cd "$work/$(php_ext_setting build-path)"
run phpize.log phpize
run configure.log ./configure
configure_help=$(./configure --help)
for option in $(php_ext_setting options); do
  grep -q -- "--$option" <<<"$configure_help" || fail "composer.json names --$option, which configure does not know"
done
run make.log make

so=$PWD/modules/pklock.so
[ -f "$so" ] || fail "$so is missing"
assert_stripped "$so"
out=$(php -n -d "extension=$so" -r 'echo class_exists("PkLockClient") ? "ok" : "missing";' 2>&1)
[ "$out" = ok ] || fail "php -n -d extension=$so: $out"

# make install puts the module into INSTALL_ROOT's extension dir (a staging root here).
run install.log make install INSTALL_ROOT="$work/root"
[ -f "$work/root$(php-config --extension-dir)/pklock.so" ] || fail "make install did not install pklock.so"
echo "phpize: ok ($(stat -c %s "$so") bytes)"
