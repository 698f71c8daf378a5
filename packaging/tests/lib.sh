# Helpers of the packaging tests (sourced).

# fail MESSAGE...: says which test failed and why, and exits.
fail() {
  echo "$(basename "$0"): $*" >&2
  exit 1
}

# verify_unit UNIT_FILE LOCKD_BINARY: systemd-analyze verify of a lockd unit whose ExecStart
# binary is LOCKD_BINARY instead of where it will be installed (verify needs it to exist).
# Any complaint fails, warnings included (systemd-analyze exits 0 on those).
verify_unit() {
  local dir
  dir=$(mktemp -d)
  sed "s|^ExecStart=[^ ]*|ExecStart=$2|" "$1" >"$dir/lockd.service"
  local out
  out=$(systemd-analyze verify "$dir/lockd.service" 2>&1) || { rm -rf "$dir"; fail "systemd-analyze verify $1: $out"; }
  rm -rf "$dir"
  [ -z "$out" ] || fail "systemd-analyze verify $1: $out"
}

# assert_stripped FILE: FILE carries no debug info.
assert_stripped() {
  if readelf -S "$1" | grep '\.debug_info' >/dev/null; then
    fail "$1 has debug info ($(stat -c %s "$1") bytes)"
  fi
}
