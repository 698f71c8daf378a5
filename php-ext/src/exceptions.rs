//! The PHP exception classes of pklock.so: one class per kind of failure, all under
//! `PkLockException extends RuntimeException`, so callers can catch as broadly or as
//! narrowly as they need.

use ext_php_rs::builders::ModuleBuilder;
use ext_php_rs::ffi::zend_class_entry;
use ext_php_rs::prelude::*;
use ext_php_rs::zend::ClassEntry;

unsafe extern "C" {
    /// Exported by PHP's SPL, which is always built in and starts before extensions.
    static spl_ce_RuntimeException: *mut zend_class_entry;
}

fn runtime_exception() -> &'static ClassEntry {
    // SAFETY: SPL sets the pointer during its MINIT, before any extension registers classes,
    // and never changes it afterwards.
    unsafe { spl_ce_RuntimeException.as_ref() }.expect("SPL's RuntimeException is registered before extensions")
}

/// Base class of every exception pklock.so throws (apart from TypeError/ValueError for bad
/// arguments).
#[php_class]
#[php(extends(ce = runtime_exception, stub = "\\RuntimeException"))]
#[derive(Default)]
pub struct PkLockException;

/// Declares exception classes (the PHP name is the struct name), each extending the one named
/// after `:`, and a function that registers them parents first (the order they are written in).
macro_rules! exception_classes {
    ($($(#[doc = $doc:literal])* $class:ident : $parent:ident;)*) => {
        $(
            $(#[doc = $doc])*
            #[php_class]
            #[php(extends($parent))]
            #[derive(Default)]
            pub struct $class;
        )*

        /// Registers [`PkLockException`] and every class declared with it.
        pub fn register(module: ModuleBuilder) -> ModuleBuilder {
            module.class::<PkLockException>()$(.class::<$class>())*
        }
    };
}

exception_classes! {
    /// Could not connect, the connection broke, lockd did not answer in time, or it broke
    /// the protocol.
    PkLockConnectionException: PkLockException;
    /// The connection broke while this client held locks: the server has released them.
    PkLockLostException: PkLockConnectionException;
    /// `synchronized()` could not get its locks within the wait.
    PkLockTimeoutException: PkLockException;
    /// lockd answered with an error; subclasses name the error code.
    PkLockServerException: PkLockException;
    /// Waiting would close a cycle of waiters: the lock was refused at once.
    PkLockDeadlockException: PkLockServerException;
    PkLockTooManyLocksException: PkLockServerException;
    PkLockTooManyWaitersException: PkLockServerException;
    PkLockTooManyKeysException: PkLockServerException;
    PkLockTooManyClientsException: PkLockServerException;
    /// A key was empty or longer than the server allows.
    PkLockBadKeyException: PkLockServerException;
    /// This owner already has a lock request waiting.
    PkLockOwnerBusyException: PkLockServerException;
    /// lockd refused the request's shape or parameters.
    PkLockBadRequestException: PkLockServerException;
    PkLockUnknownCommandException: PkLockServerException;
    PkLockFrameTooLargeException: PkLockServerException;
    /// The server needs an auth key (the `auth_key` option), or refused the one given.
    PkLockAuthException: PkLockServerException;
    PkLockShuttingDownException: PkLockServerException;
}
