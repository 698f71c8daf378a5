//! php.ini settings of pklock.so: the defaults `new PkLockClient()` uses when its arguments
//! and options leave something out.

use std::ffi::{c_char, c_int, CStr};
use std::time::Duration;

use ext_php_rs::flags::IniEntryPermission;
use ext_php_rs::zend::{IniEntryDef, IniEntryDefs};

const HOST: &CStr = c"pklock.default_host";
const PORT: &CStr = c"pklock.default_port";
const CONNECT_TIMEOUT: &CStr = c"pklock.connect_timeout";
const IO_TIMEOUT: &CStr = c"pklock.io_timeout";

/// Out-of-the-box values (what an unparsable setting falls back to).
const BUILT_IN_CONNECT_TIMEOUT: f64 = 2.0;
const BUILT_IN_IO_TIMEOUT: f64 = 5.0;

pub static ENTRIES: IniEntryDefs<5> = IniEntryDefs::new([
    IniEntryDef::new(HOST, c"127.0.0.1", IniEntryPermission::All),
    IniEntryDef::new(PORT, c"11300", IniEntryPermission::All),
    IniEntryDef::new(CONNECT_TIMEOUT, c"2.0", IniEntryPermission::All),
    IniEntryDef::new(IO_TIMEOUT, c"5.0", IniEntryPermission::All),
    IniEntryDef::end(),
]);

// Zend's accessors for one directive's current value (ext-php-rs only offers a map of all).
unsafe extern "C" {
    fn zend_ini_long(name: *const c_char, name_length: usize, orig: c_int) -> i64;
    fn zend_ini_double(name: *const c_char, name_length: usize, orig: c_int) -> f64;
    fn zend_ini_string(name: *const c_char, name_length: usize, orig: c_int) -> *const c_char;
}

pub fn default_host() -> String {
    // SAFETY: the directive is registered at MINIT; Zend returns a NUL-terminated string it
    // owns (or NULL), valid until the setting changes, and we copy it at once.
    let value = unsafe { zend_ini_string(HOST.as_ptr(), HOST.count_bytes(), 0) };
    if value.is_null() {
        return "127.0.0.1".into();
    }
    unsafe { CStr::from_ptr(value) }.to_string_lossy().into_owned()
}

pub fn default_port() -> i64 {
    // SAFETY: reads a registered directive.
    unsafe { zend_ini_long(PORT.as_ptr(), PORT.count_bytes(), 0) }
}

pub fn connect_timeout() -> Duration {
    seconds_setting(CONNECT_TIMEOUT, BUILT_IN_CONNECT_TIMEOUT)
}

pub fn io_timeout() -> Duration {
    seconds_setting(IO_TIMEOUT, BUILT_IN_IO_TIMEOUT)
}

fn seconds_setting(name: &CStr, built_in: f64) -> Duration {
    // SAFETY: reads a registered directive.
    let seconds = unsafe { zend_ini_double(name.as_ptr(), name.count_bytes(), 0) };
    Duration::try_from_secs_f64(seconds).ok().filter(|d| !d.is_zero()).unwrap_or(Duration::from_secs_f64(built_in))
}
