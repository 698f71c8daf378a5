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
CARGO_FLAGS := $(if $(filter release,$(PROFILE)),--release,)

# Debian packages needed to build and test (build-essential for cc, php-dev + clang for
# ext-php-rs's bindgen, the php-* libraries for the bridges and their tests, and the peer
# servers and clients the benchmarks compare against).
DEB_PACKAGES := build-essential pkg-config php-cli php-dev phpunit clang libclang-dev \
	php-symfony-lock php-malkusch-lock \
	redis-server memcached postgresql php-redis php-memcached php-pgsql

.PHONY: help deps build ext lockd demo test test-rust test-php bench bench-smoke install clean

help:
	@echo "make demo     build, start lockd, run three bin/testClient.php that take turns"
	@echo "make test     install build deps, build, run cargo tests and PHPUnit"
	@echo "make build    build lockd and modules/pklock.so"
	@echo "make bench    run every benchmark against its peers (minutes); see BENCHMARKS.md"
	@echo "make install  copy pklock.so into PHP's extension dir and enable it"
	@echo "make deps     apt-get install what building and testing need"

deps:
	@bin/install-deps $(DEB_PACKAGES)

build: lockd ext

lockd:
	$(CARGO) build $(CARGO_FLAGS) -p lockd

ext:
	$(CARGO) build $(CARGO_FLAGS) -p pklock
	@mkdir -p modules
	@# install replaces the file instead of rewriting it in place: a PHP process that has the
	@# old one mapped (php -S, FPM) must not see its code change under it.
	install -m 0755 $(TARGET_DIR)/$(PROFILE)/libpklock.so $(EXT)

demo: deps build
	bin/demo

test: deps build test-rust test-php bench-smoke

test-rust:
	$(CARGO) test $(CARGO_FLAGS) --workspace

test-php:
	LOCKD_BIN=$(abspath $(LOCKD)) $(PHP) -d extension=$(abspath $(EXT)) $$(command -v $(PHPUNIT)) -c phpunit.xml.dist

# Every benchmark for about a second: proves they build and run; never asserts a time.
bench-smoke: build
	bench/run --smoke

bench: deps build
	bench/run --plot

install: ext
	install -m 0755 $(EXT) "$$($(PHP)-config --extension-dir)/pklock.so"
	@for dir in /etc/php/*/mods-available; do \
		[ -d "$$dir" ] && echo "extension=pklock.so" > "$$dir/pklock.ini"; \
	done; command -v phpenmod >/dev/null && phpenmod pklock || true
	@echo "pklock.so installed; check with: php -m | grep pklock"

clean:
	$(CARGO) clean
	rm -rf modules
