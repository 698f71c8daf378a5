#!/usr/bin/env bash
# Test that `make demo` installs only what building needs (the compiler, PHP's headers,
# clang, protoc), none of the servers and libraries only the tests and benchmarks use,
# while `make deps` (make test) installs both.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
. "$root/packaging/tests/lib.sh"

packages_of() { make -s -n -C "$root" "$1" | sed -n 's|^bin/install-deps ||p'; }
demo=" $(packages_of demo-deps) "
tests=" $(packages_of deps) "
for pkg in build-essential php-cli php-dev clang libclang-dev protobuf-compiler; do
  [[ $demo == *" $pkg "* ]] || fail "make demo does not install $pkg: $demo"
  [[ $tests == *" $pkg "* ]] || fail "make deps does not install $pkg: $tests"
done
for pkg in redis-server memcached postgresql phpunit etcd-server systemd; do
  [[ $demo != *" $pkg "* ]] || fail "make demo installs $pkg, which the demo does not use"
  [[ $tests == *" $pkg "* ]] || fail "make deps does not install $pkg: $tests"
done
echo "demo-deps: ok"
