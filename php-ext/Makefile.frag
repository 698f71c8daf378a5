# Included by the Makefile that phpize + configure generate (see config.m4): builds pklock.so
# with cargo. The workspace is this directory's parent; CARGO_TARGET_DIR, when set, is where
# cargo builds (a shared one saves rebuilding the dependencies). The debug info of the
# release profile (kept for profiling the dev build) is stripped from the installed file.

PKLOCK_WORKSPACE = $(srcdir)/..
PKLOCK_TARGET_DIR = $(if $(CARGO_TARGET_DIR),$(abspath $(CARGO_TARGET_DIR)),$(PKLOCK_WORKSPACE)/target)

# Phony: cargo, not make, knows whether the library is up to date.
.PHONY: $(phplibdir)/pklock.so
$(phplibdir)/pklock.so:
	cd $(PKLOCK_WORKSPACE) && $(PKLOCK_CARGO_ENV) $(PKLOCK_CARGO) build --release --locked -p pklock --target-dir $(PKLOCK_TARGET_DIR)
	@mkdir -p $(phplibdir)
	$(PKLOCK_STRIP) --strip-unneeded -o $@ $(PKLOCK_TARGET_DIR)/release/libpklock.so
