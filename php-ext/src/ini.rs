//! php.ini settings of pklock.so: the defaults `new PkLockClient()` uses when its arguments
//! and options leave something out.

use std::ffi::{c_char, c_int, CStr};
use std::path::PathBuf;
use std::time::Duration;

use ext_php_rs::ffi::{php_printf, zend_ini_entry};
use ext_php_rs::flags::IniEntryPermission;
use ext_php_rs::zend::{IniEntryDef, IniEntryDefs};
use pklock_proto::auth::AuthKey;

use crate::transport::TlsSettings;

const SERVERS: &CStr = c"pklock.servers";
const NODE_ORDER: &CStr = c"pklock.node_order";
const HOST: &CStr = c"pklock.default_host";
const PORT: &CStr = c"pklock.default_port";
const CONNECT_TIMEOUT: &CStr = c"pklock.connect_timeout";
const IO_TIMEOUT: &CStr = c"pklock.io_timeout";
const AUTH_KEY: &CStr = c"pklock.auth_key";
const TLS: &CStr = c"pklock.tls";
const TLS_CA: &CStr = c"pklock.tls_ca";
const TLS_VERIFY: &CStr = c"pklock.tls_verify";

/// Out-of-the-box values (what an unparsable setting falls back to).
const BUILT_IN_CONNECT_TIMEOUT: f64 = 2.0;
const BUILT_IN_IO_TIMEOUT: f64 = 5.0;

pub static ENTRIES: IniEntryDefs<11> = IniEntryDefs::new([
    // A list of nodes (`host:port,host:port`), taking precedence over default_host.
    IniEntryDef::new(SERVERS, c"", IniEntryPermission::All),
    // How a client orders a list's nodes (nodes::NodeOrder).
    IniEntryDef::new(NODE_ORDER, c"host", IniEntryPermission::All),
    IniEntryDef::new(HOST, c"127.0.0.1", IniEntryPermission::All),
    IniEntryDef::new(PORT, c"11300", IniEntryPermission::All),
    IniEntryDef::new(CONNECT_TIMEOUT, c"2.0", IniEntryPermission::All),
    IniEntryDef::new(IO_TIMEOUT, c"5.0", IniEntryPermission::All),
    // php.ini or php-fpm's php_admin_value only: a script cannot point the key at another
    // server, and phpinfo() shows whether it is set, never what it is.
    IniEntryDef { displayer: Some(display_secret), ..IniEntryDef::new(AUTH_KEY, c"", IniEntryPermission::System) },
    IniEntryDef::new(TLS, c"0", IniEntryPermission::All),
    IniEntryDef::new(TLS_CA, c"", IniEntryPermission::All),
    IniEntryDef::new(TLS_VERIFY, c"1", IniEntryPermission::All),
    IniEntryDef::end(),
]);

/// Zend's `ZEND_INI_DISPLAY_ORIG`: the displayer is asked for the master value.
const DISPLAY_ORIG: c_int = 1;

/// phpinfo()'s cell for `pklock.auth_key`.
unsafe extern "C" fn display_secret(entry: *mut zend_ini_entry, kind: c_int) {
    // SAFETY: Zend passes a registered entry; its value strings are null or valid.
    let entry = unsafe { &*entry };
    let value = if kind == DISPLAY_ORIG && entry.modified != 0 { entry.orig_value } else { entry.value };
    let set = !value.is_null() && unsafe { (*value).len } > 0;
    let shown = if set { c"(set, hidden)" } else { c"no value" };
    // SAFETY: a constant format with one string argument.
    unsafe { php_printf(c"%s".as_ptr(), shown.as_ptr()) };
}

// Zend's accessors for one directive's current value (ext-php-rs only offers a map of all).
unsafe extern "C" {
    fn zend_ini_long(name: *const c_char, name_length: usize, orig: c_int) -> i64;
    fn zend_ini_double(name: *const c_char, name_length: usize, orig: c_int) -> f64;
    fn zend_ini_string(name: *const c_char, name_length: usize, orig: c_int) -> *const c_char;
}

/// `pklock.servers`, unless empty (or only blanks).
pub fn servers() -> Option<String> {
    string_setting(SERVERS).filter(|servers| !servers.trim().is_empty())
}

/// `pklock.node_order`, as written (the constructor says what is wrong with it).
pub fn node_order() -> String {
    string_setting(NODE_ORDER).unwrap_or_default()
}

pub fn default_host() -> String {
    string_setting(HOST).unwrap_or_else(|| "127.0.0.1".into())
}

/// `pklock.auth_key`, unless empty.
pub fn auth_key() -> Option<AuthKey> {
    // SAFETY: as in default_host().
    let value = unsafe { zend_ini_string(AUTH_KEY.as_ptr(), AUTH_KEY.count_bytes(), 0) };
    if value.is_null() {
        return None;
    }
    AuthKey::new(unsafe { CStr::from_ptr(value) }.to_bytes()).ok()
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

/// `pklock.tls`, `pklock.tls_ca` (empty: the system's CAs) and `pklock.tls_verify`.
pub fn tls() -> TlsSettings {
    TlsSettings {
        enabled: bool_setting(TLS),
        ca: string_setting(TLS_CA).filter(|ca| !ca.is_empty()).map(PathBuf::from),
        verify: bool_setting(TLS_VERIFY),
    }
}

fn string_setting(name: &CStr) -> Option<String> {
    // SAFETY: the directive is registered at MINIT; Zend returns a NUL-terminated string it
    // owns (or NULL), valid until the setting changes, and we copy it at once.
    let value = unsafe { zend_ini_string(name.as_ptr(), name.count_bytes(), 0) };
    if value.is_null() {
        return None;
    }
    Some(unsafe { CStr::from_ptr(value) }.to_string_lossy().into_owned())
}

/// A boolean the way PHP reads one (zend_ini_parse_bool): `ini_set()` keeps "On" as it is,
/// while php.ini turns it into "1".
fn bool_setting(name: &CStr) -> bool {
    string_setting(name).is_some_and(|value| {
        let value = value.trim();
        ["on", "yes", "true"].iter().any(|word| value.eq_ignore_ascii_case(word))
            || value.parse::<i64>().is_ok_and(|n| n != 0)
    })
}

fn seconds_setting(name: &CStr, built_in: f64) -> Duration {
    // SAFETY: reads a registered directive.
    let seconds = unsafe { zend_ini_double(name.as_ptr(), name.count_bytes(), 0) };
    Duration::try_from_secs_f64(seconds).ok().filter(|d| !d.is_zero()).unwrap_or(Duration::from_secs_f64(built_in))
}
