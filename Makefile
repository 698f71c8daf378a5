# pklock: build, demo, test, install. `make help` lists the targets.
#
# `make demo` and `make test` work on a fresh Debian 12 machine: they install the Debian
# packages they need (as root, or through sudo), build everything and clean up after
# themselves.

CARGO      ?= cargo
PHP        ?= php
PHPUNIT    ?= phpunit
PROFILE    ?= release
TARGET_DIR ?= target
EXT        := modules/pklock.so
LOCKD      := $(TARGET_DIR)/$(PROFILE)/lockd
LOCKCTL    := $(TARGET_DIR)/$(PROFILE)/lockctl
CARGO_FLAGS := $(if $(filter release,$(PROFILE)),--release,)

# Debian packages needed to build (and so to run `make demo`): build-essential for cc,
# php-dev + clang for ext-php-rs's bindgen, protoc and the well-known .proto files it imports
# (libprotobuf-dev) for the etcd-client crate, which compiles etcd's protobufs.
DEMO_PACKAGES := build-essential pkg-config php-cli php-dev clang libclang-dev protobuf-compiler libprotobuf-dev
# ... and to test: openssl for the certificates of the TLS tests, the php-* libraries for the
# bridges and their tests, the peer servers and clients the benchmarks compare against
# (php-curl talks to etcd's lock API), php-fpm and cgi-fcgi for the php-fpm tests, composer
# to validate the PHP library's package, etcd for cluster mode, systemd for
# `systemd-analyze verify` of the unit, help2man for the .deb's man page.
DEB_PACKAGES := $(DEMO_PACKAGES) phpunit openssl php-fpm libfcgi-bin composer \
	php-symfony-lock php-malkusch-lock php-laravel-framework \
	redis-server memcached postgresql php-redis php-memcached php-pgsql php-curl \
	etcd-server etcd-client systemd help2man

# Where `make install` puts things; DESTDIR stages the whole tree elsewhere (packaging).
PREFIX     ?= /usr/local
BINDIR     ?= $(PREFIX)/bin
SYSCONFDIR ?= /etc
UNITDIR    ?= /etc/systemd/system
PHP_CONFIG ?= $(PHP)-config
# Evaluated only when used, so that make without PHP still builds lockd.
PHP_EXTENSION_DIR = $(shell $(PHP_CONFIG) --extension-dir)
PHP_VERSION       = $(shell $(PHP) -r 'echo PHP_MAJOR_VERSION, ".", PHP_MINOR_VERSION;')
PHP_MODS_DIR      = /etc/php/$(PHP_VERSION)/mods-available

# PHP runs of the Makefile scan a copy of PHP's ini directory without the ini that loads an
# installed pklock.so (bin/php-ini-without-pklock), so they load and test modules/pklock.so.
# Read once, before the targets below set PHP_INI_SCAN_DIR.
PHP_SCAN_DIRS   := $(or $(PHP_INI_SCAN_DIR),$(shell $(PHP) -r 'echo PHP_CONFIG_FILE_SCAN_DIR;' 2>/dev/null))
PHP_TEST_INI_DIR = $(abspath $(TARGET_DIR))/php-conf.d

# `make chaos`: how long the chaos test runs and how many PHP workers it keeps alive.
CHAOS_SECONDS ?= 600
CHAOS_WORKERS ?= 16

.PHONY: help deps demo-deps build ext lockd demo test test-rust test-php test-packaging test-phpize test-deb php-ini bench bench-smoke chaos chaos-cluster fuzz install uninstall deb clean

help:
	@echo "make demo     build, start lockd, run three bin/testClient.php that take turns"
	@echo "make test     install build deps, build, run cargo tests and PHPUnit"
	@echo "make build    build lockd and modules/pklock.so"
	@echo "make bench    run every benchmark against its peers (minutes); see BENCHMARKS.md"
	@echo "make chaos    SIGKILL PHP lock workers for CHAOS_SECONDS (600) and check the history; see docs/RELIABILITY.md"
	@echo "make chaos-cluster  the same against 3 lockd nodes on etcd, also killing and freezing nodes and etcd"
	@echo "make fuzz     run each fuzz target for FUZZ_SECONDS (60); see docs/FUZZING.md"
	@echo "make install  install pklock.so (enabled), lockd, its systemd unit and config; see docs/install.md"
	@echo "make uninstall  remove what make install installed"
	@echo "make deb      build target/debian/lockd_*.deb (lockd, unit, config, man page) with cargo-deb"
	@echo "make deps     apt-get install what building and testing need"

deps:
	@bin/install-deps $(DEB_PACKAGES)

demo-deps:
	@bin/install-deps $(DEMO_PACKAGES)

build: lockd ext

lockd:
	$(CARGO) build $(CARGO_FLAGS) -p lockd

ext:
	$(CARGO) build $(CARGO_FLAGS) -p pklock
	@mkdir -p modules
	@# install replaces the file instead of rewriting it in place: a PHP process that has the
	@# old one mapped (php -S, FPM) must not see its code change under it.
	install -m 0755 $(TARGET_DIR)/$(PROFILE)/libpklock.so $(EXT)

demo: demo-deps build php-ini
	bin/demo

test: deps build test-rust test-php test-packaging bench-smoke

# The semantic suites run twice: against a single lockd, and against a cluster node.
test-rust:
	$(CARGO) test $(CARGO_FLAGS) --workspace
	bin/with-etcd $(CARGO) test $(CARGO_FLAGS) -p lockd --test locking --test protocol

test-php: php-ini
	LOCKD_BIN=$(abspath $(LOCKD)) $(PHP) -d extension=$(abspath $(EXT)) $$(command -v $(PHPUNIT)) -c phpunit.xml.dist

php-ini:
	@bin/php-ini-without-pklock $(PHP_TEST_INI_DIR) "$(PHP_SCAN_DIRS)"

test-php bench-smoke bench demo: export PHP_INI_SCAN_DIR = $(PHP_TEST_INI_DIR)

# The build and install paths outside cargo: phpize (what PIE runs), make install and
# uninstall with the systemd unit, the .deb.
test-packaging: build test-phpize test-deb
	packaging/tests/demo-deps.sh
	packaging/tests/fresh-extension.sh
	packaging/tests/install.sh

test-phpize:
	packaging/tests/phpize.sh

test-deb:
	packaging/tests/deb.sh

# Every benchmark for about a second: proves they build and run; never asserts a time.
bench-smoke: build php-ini
	bench/run --smoke
	ROUNDS=1 DURATION=0.2 CONNECTIONS=2 bench/ab "--worker-threads 1" ""

# The chaos test of `make test` (php-tests/Chaos), for as long as asked. Workers run with
# php -n, so only this pklock.so is loaded; the checker keeps the whole history in memory.
chaos: build
	LOCKD_BIN=$(abspath $(LOCKD)) PKLOCK_EXT=$(abspath $(EXT)) $(PHP) -n -d memory_limit=-1 -d extension=$(abspath $(EXT)) \
		php-tests/Chaos/run.php $(CHAOS_SECONDS) $(CHAOS_WORKERS)

# The same against a cluster (php-tests/Chaos/LockdCluster.php): one etcd member and three
# lockd nodes, whose nodes are SIGKILLed and restarted, frozen past their session TTL, and
# etcd SIGKILLed and restarted with its data. Needs etcd (make deps).
chaos-cluster: build
	LOCKD_BIN=$(abspath $(LOCKD)) PKLOCK_EXT=$(abspath $(EXT)) $(PHP) -n -d memory_limit=-1 -d extension=$(abspath $(EXT)) \
		php-tests/Chaos/run.php $(CHAOS_SECONDS) $(CHAOS_WORKERS) cluster

bench: deps build php-ini
	bench/run --plot

# Fuzzing on stable Rust (docs/FUZZING.md). New inputs collect in fuzz/target/corpus/<target>,
# seeded from the committed fuzz/corpus/<target>, which `cargo test` replays. The default
# sanitizer is none: cargo-fuzz turns the others on with -Zsanitizer, a nightly flag that
# RUSTC_BOOTSTRAP=1 makes stable accept; they build in their own target dir so switching
# does not rebuild everything.
FUZZ_SECONDS   ?= 60
FUZZ_TARGETS   ?= frame request table
FUZZ_SANITIZER ?= none
FUZZ_ENV       := $(if $(filter none,$(FUZZ_SANITIZER)),,RUSTC_BOOTSTRAP=1 CARGO_TARGET_DIR=fuzz/target/$(FUZZ_SANITIZER))

fuzz:
	@$(CARGO) fuzz --version >/dev/null 2>&1 || $(CARGO) install cargo-fuzz --locked
	@for t in $(FUZZ_TARGETS); do \
		mkdir -p fuzz/target/corpus/$$t && \
		$(FUZZ_ENV) $(CARGO) fuzz run --sanitizer $(FUZZ_SANITIZER) $$t fuzz/target/corpus/$$t fuzz/corpus/$$t -- \
			-max_total_time=$(FUZZ_SECONDS) $$([ -f fuzz/dict/$$t.dict ] && echo -dict=fuzz/dict/$$t.dict) \
			|| exit 1; \
	done

# Installed files are stripped (install -s); the build keeps its debug info for profiling.
# An existing config is kept; the ini is enabled with phpenmod unless staging (DESTDIR).
# install does not build: under sudo, rustup's cargo is usually not on PATH.
install:
	@for file in $(EXT) $(LOCKD) $(LOCKCTL); do \
		[ -f "$$file" ] || { echo "$$file is missing: run make build first" >&2; exit 1; }; \
	done
	install -D -m 0755 -s $(EXT) "$(DESTDIR)$(PHP_EXTENSION_DIR)/pklock.so"
	install -D -m 0644 php-ext/pklock.ini "$(DESTDIR)$(PHP_MODS_DIR)/pklock.ini"
	install -D -m 0755 -s $(LOCKD) "$(DESTDIR)$(BINDIR)/lockd"
	install -D -m 0755 -s $(LOCKCTL) "$(DESTDIR)$(BINDIR)/lockctl"
	@mkdir -p "$(DESTDIR)$(UNITDIR)"
	sed -e 's|/usr/bin/lockd|$(BINDIR)/lockd|' -e 's|/etc/pklock/|$(SYSCONFDIR)/pklock/|' \
		packaging/lockd.service > "$(DESTDIR)$(UNITDIR)/lockd.service"
	[ -e "$(DESTDIR)$(SYSCONFDIR)/pklock/lockd.toml" ] || \
		install -D -m 0644 packaging/lockd.toml "$(DESTDIR)$(SYSCONFDIR)/pklock/lockd.toml"
	@if [ -z "$(DESTDIR)" ]; then \
		command -v phpenmod >/dev/null && phpenmod -v $(PHP_VERSION) pklock; \
		command -v systemctl >/dev/null && [ -d /run/systemd/system ] && systemctl daemon-reload; \
		echo "installed; check with: php -m | grep pklock; systemctl enable --now lockd"; \
	fi; true

# Removes what install put, and the config only when it is still the one install wrote.
uninstall:
	@if [ -z "$(DESTDIR)" ] && command -v phpdismod >/dev/null; then phpdismod -v $(PHP_VERSION) pklock; fi
	rm -f "$(DESTDIR)$(PHP_EXTENSION_DIR)/pklock.so" "$(DESTDIR)$(PHP_MODS_DIR)/pklock.ini" \
		"$(DESTDIR)$(BINDIR)/lockd" "$(DESTDIR)$(BINDIR)/lockctl" "$(DESTDIR)$(UNITDIR)/lockd.service"
	@if cmp -s packaging/lockd.toml "$(DESTDIR)$(SYSCONFDIR)/pklock/lockd.toml"; then \
		rm -f "$(DESTDIR)$(SYSCONFDIR)/pklock/lockd.toml"; \
		rmdir "$(DESTDIR)$(SYSCONFDIR)/pklock" 2>/dev/null; \
	elif [ -e "$(DESTDIR)$(SYSCONFDIR)/pklock/lockd.toml" ]; then \
		echo "kept $(DESTDIR)$(SYSCONFDIR)/pklock/lockd.toml: it was changed"; \
	fi; true
	@if [ -z "$(DESTDIR)" ] && command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi; true

# The Debian package of lockd (binary, unit, config, man page): [package.metadata.deb] in
# lockd/Cargo.toml. --strip: the release profile keeps debug info for profiling, the package does not.
deb: lockd
	@$(CARGO) deb --version >/dev/null 2>&1 || $(CARGO) install cargo-deb --locked
	packaging/lockd-man $(LOCKD) > $(TARGET_DIR)/lockd.1
	$(CARGO) deb -p lockd --no-build --strip

clean:
	$(CARGO) clean
	rm -rf modules
