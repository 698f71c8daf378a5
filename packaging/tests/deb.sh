#!/usr/bin/env bash
# Test of `make deb`: builds the lockd .deb with cargo-deb and inspects it: its control data
# (name, dependencies, the config as a conffile), its files (binary, unit, config, man page),
# a stripped binary that runs, a unit that systemd-analyze accepts, a man page of the options.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
. "$root/packaging/tests/lib.sh"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

rm -f "$root"/target/debian/lockd_*.deb
make -s -C "$root" deb >"$work/make.log" 2>&1 || { cat "$work/make.log"; fail "make deb"; }
debs=("$root"/target/debian/lockd_*.deb)
[ -f "${debs[0]}" ] || fail "make deb made no target/debian/lockd_*.deb"
deb=${debs[0]}

info=$(dpkg-deb -I "$deb")
grep -q "^ Package: lockd$" <<<"$info" || fail "control has no Package: lockd: $info"
grep -q "^ Depends: .*libc6" <<<"$info" || fail "control does not depend on libc6: $info"
[ "$(dpkg-deb -f "$deb" Version)" = "$("$root/target/release/lockd" --version | cut -d' ' -f2)-1" ] || fail "version differs from lockd --version"
dpkg-deb --ctrl-tarfile "$deb" | tar -xO ./conffiles | grep -x /etc/pklock/lockd.toml >/dev/null || fail "lockd.toml is not a conffile"

contents=$(dpkg-deb -c "$deb" | awk '{print $6}')
for path in ./usr/bin/lockd ./usr/bin/lockctl ./etc/pklock/lockd.toml ./usr/share/man/man1/lockd.1.gz; do
  grep -qx "$path" <<<"$contents" || fail "$path is not in the package: $contents"
done
unit_path=$(grep -E '^\./(usr/)?lib/systemd/system/lockd\.service$' <<<"$contents") || fail "no lockd.service in the package: $contents"

dpkg-deb -x "$deb" "$work/root"
assert_stripped "$work/root/usr/bin/lockd"
"$work/root/usr/bin/lockd" --version >/dev/null || fail "packaged lockd does not run"
grep -qx "ExecStart=/usr/bin/lockd --config /etc/pklock/lockd.toml" "$work/root/$unit_path" || fail "unit's ExecStart: $(grep ExecStart= "$work/root/$unit_path")"
verify_unit "$work/root/$unit_path" "$work/root/usr/bin/lockd"
zcat "$work/root/usr/share/man/man1/lockd.1.gz" | grep -F 'max\-clients' >/dev/null || fail "the man page does not list --max-clients"
echo "deb: ok ($(stat -c %s "$deb") bytes)"
