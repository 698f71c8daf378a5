#!/usr/bin/env bash
# Test of `make install` and `make uninstall`, staged under DESTDIR: install puts the stripped
# pklock.so, its ini, the stripped lockd, a systemd unit that systemd-analyze accepts and that
# starts the installed lockd with the installed config; uninstall removes all of it, but keeps
# a config the admin changed.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
. "$root/packaging/tests/lib.sh"
dest=$(mktemp -d)
log=$(mktemp)
trap 'rm -rf "$dest" "$log"' EXIT
make_quiet() { make -s -C "$root" "$@" DESTDIR="$dest" PREFIX=/opt/pklock >"$log" 2>&1 || { cat "$log"; fail "make $*"; }; }

make_quiet install
ext_dir=$dest$(php-config --extension-dir)
php_version=$(php -r 'echo PHP_MAJOR_VERSION, ".", PHP_MINOR_VERSION;')
for file in "$ext_dir/pklock.so" "$dest/etc/php/$php_version/mods-available/pklock.ini" \
    "$dest/opt/pklock/bin/lockd" "$dest/opt/pklock/bin/lockctl" "$dest/etc/systemd/system/lockd.service" "$dest/etc/pklock/lockd.toml"; do
  [ -f "$file" ] || fail "make install did not install $file"
done
assert_stripped "$ext_dir/pklock.so"
assert_stripped "$dest/opt/pklock/bin/lockd"
assert_stripped "$dest/opt/pklock/bin/lockctl"
grep -qx "extension=pklock.so" "$dest/etc/php/$php_version/mods-available/pklock.ini" || fail "pklock.ini does not load pklock.so"
[ "$(php -n -d "extension=$ext_dir/pklock.so" -r 'echo class_exists("PkLockClient") ? "ok" : "no";')" = ok ] || fail "installed pklock.so does not load"
"$dest/opt/pklock/bin/lockd" --version >/dev/null || fail "installed lockd does not run"
unit=$dest/etc/systemd/system/lockd.service
grep -qx "ExecStart=/opt/pklock/bin/lockd --config /etc/pklock/lockd.toml" "$unit" || fail "unit's ExecStart: $(grep ExecStart= "$unit")"
verify_unit "$unit" "$dest/opt/pklock/bin/lockd"

make_quiet uninstall
left=$(find "$dest" -type f)
[ -z "$left" ] || fail "make uninstall left: $left"

# A config the admin changed survives uninstall.
make_quiet install
echo "# changed" >>"$dest/etc/pklock/lockd.toml"
make_quiet uninstall
[ -f "$dest/etc/pklock/lockd.toml" ] || fail "make uninstall removed a changed config"
[ "$(find "$dest" -type f)" = "$dest/etc/pklock/lockd.toml" ] || fail "make uninstall left: $(find "$dest" -type f)"
echo "install: ok"
