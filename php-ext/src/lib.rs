//! pklock.so: `PkLockClient`, the native PHP client of lockd, the pklock lock service.
//!
//! Module wiring: INI settings, classes, the request-end hook that releases what a request
//! still holds (also after a fatal error skipped the destructors), and the phpinfo() section.

mod client;
mod connection;
mod error;
mod exceptions;
mod fork;
mod ini;
mod json;
mod nodes;
#[cfg(test)]
mod scripted;
mod session;
mod transport;

use std::panic::catch_unwind;

use ext_php_rs::prelude::*;
use ext_php_rs::zend::{IniEntryDef, ModuleEntry};
use ext_php_rs::{info_table_end, info_table_row, info_table_start};

unsafe extern "C" {
    /// PHP's standard INI table for a module's phpinfo() section.
    fn display_ini_entries(module: *mut ModuleEntry);
}

fn startup(_type: i32, module_number: i32) -> i32 {
    IniEntryDef::register(ini::ENTRIES.as_slice(), module_number);
    if exceptions::register().is_err() {
        return 1;
    }
    match fork::install() {
        Ok(()) => 0,
        // Without it, a forked child would keep the parent's connections open.
        Err(_) => 1,
    }
}

/// RSHUTDOWN. A panic must not cross into PHP here (ext-php-rs does not catch it).
extern "C" fn request_shutdown(_type: i32, _module_number: i32) -> i32 {
    let _ = catch_unwind(session::end_request);
    0
}

extern "C" fn module_info(module: *mut ModuleEntry) {
    let _ = catch_unwind(|| {
        info_table_start!();
        info_table_row!("pklock support", "enabled");
        info_table_row!("version", env!("CARGO_PKG_VERSION"));
        info_table_row!("protocol", pklock_proto::PROTOCOL_VERSION.to_string());
        let sessions = session::describe_sessions();
        if sessions.is_empty() {
            info_table_row!("connections", "none in this process");
        }
        for (addr, state) in sessions {
            info_table_row!(format!("lockd at {addr}"), state);
        }
        info_table_end!();
    });
    // SAFETY: `module` is the entry PHP passed us, and our directives are registered.
    unsafe { display_ini_entries(module) };
}

#[php_module]
#[php(startup = "startup")]
pub fn get_module(module: ModuleBuilder) -> ModuleBuilder {
    module
        .class::<client::PkLockClient>()
        .request_shutdown_function(request_shutdown)
        .info_function(module_info)
}
