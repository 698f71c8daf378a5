dnl The phpize build of pklock.so (`phpize && ./configure && make && make install`, which
dnl is also what PIE runs): pklock.so is Rust, so there is no C to compile; configure finds
dnl cargo and Makefile.frag has cargo build the crate of this directory and puts the
dnl stripped library in modules/, where phpize's `make install` takes it from.

PHP_ARG_ENABLE([pklock],
  [whether to build pklock (PkLockClient, the client of the lockd lock server)],
  [AS_HELP_STRING([--enable-pklock], [Build pklock.so (needs cargo, clang and libclang)])],
  [yes])

PHP_ARG_WITH([cargo],
  [for cargo],
  [AS_HELP_STRING([--with-cargo=PATH], [Path to cargo [cargo on PATH or in ~/.cargo/bin]])],
  [yes],
  [no])

if test "$PHP_PKLOCK" != "no"; then
  dnl sudo and PIE often run configure with a PATH that lacks rustup's ~/.cargo/bin.
  if test "$PHP_CARGO" = "yes"; then
    AC_PATH_PROG([PKLOCK_CARGO], [cargo], [no], [$PATH:$HOME/.cargo/bin])
  else
    PKLOCK_CARGO=$PHP_CARGO
  fi
  if test "$PKLOCK_CARGO" = "no" || test ! -x "$PKLOCK_CARGO"; then
    AC_MSG_ERROR([cargo not found: install Rust (https://rustup.rs) or pass --with-cargo=PATH])
  fi
  AC_PATH_PROG([PKLOCK_STRIP], [strip], [no])
  if test "$PKLOCK_STRIP" = "no"; then
    AC_MSG_ERROR([strip not found: install binutils])
  fi

  dnl ext-php-rs finds PHP through the PHP and PHP_CONFIG environment variables, else on
  dnl PATH. Both are set only when this build targets another PHP than the one on PATH:
  dnl a change in them makes cargo rebuild ext-php-rs and everything above it.
  PKLOCK_CARGO_ENV=
  pklock_php_config=`command -v "$PHP_CONFIG"`
  if test "$pklock_php_config" != "`command -v php-config`"; then
    PKLOCK_CARGO_ENV="PHP=$PHP_EXECUTABLE PHP_CONFIG=$pklock_php_config"
  fi

  dnl Without C sources phpize would have no build directory to create, and say so.
  PHP_ADD_BUILD_DIR([modules])
  PHP_MODULES="$PHP_MODULES \$(phplibdir)/pklock.so"
  PHP_SUBST(PKLOCK_CARGO)
  PHP_SUBST(PKLOCK_STRIP)
  PHP_SUBST(PKLOCK_CARGO_ENV)
  PHP_ADD_MAKEFILE_FRAGMENT([$abs_srcdir/Makefile.frag], [$abs_srcdir], [$abs_builddir])
fi
