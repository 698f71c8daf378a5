//! The PHP exception classes of pklock.so: one class per kind of failure, all under
//! `PkLockException extends RuntimeException`, so callers can catch as broadly or as
//! narrowly as they need, and the stable numbers their `getCode()` returns.
//!
//! They are declared as plain PHP classes, without a Rust object behind them (not
//! `#[php_class]`), so they keep what `Exception` gives every subclass: its constructor
//! (`new PkLockLostException('x', 5, $previous)` works, for tests and mocks) and its object
//! handler, which records the file, line and trace of the PHP code running when pklock.so
//! throws. A `#[php_class]` replaces both: its objects would say `in :0` with a trace of
//! `#0 {main}`, and its constructor refuses to run.

use std::ptr;
use std::sync::atomic::{AtomicPtr, Ordering};

use ext_php_rs::builders::ClassBuilder;
use ext_php_rs::exception::PhpException;
use ext_php_rs::ffi::zend_class_entry;
use ext_php_rs::flags::ConstantFlags;
use ext_php_rs::zend::ClassEntry;
use pklock_proto::ErrorCode;

unsafe extern "C" {
    /// Exported by PHP's SPL, which is always built in and starts before extensions.
    static spl_ce_RuntimeException: *mut zend_class_entry;
}

fn runtime_exception() -> &'static ClassEntry {
    // SAFETY: SPL sets the pointer during its MINIT, before any extension registers classes,
    // and never changes it afterwards.
    unsafe { spl_ce_RuntimeException.as_ref() }.expect("SPL's RuntimeException is registered before extensions")
}

/// What `getCode()` of a pklock exception says, also `PkLockException`'s class constants.
/// The numbers are part of the API: never change or reuse one (docs/php-exceptions.md).
/// Below 100 the client's own findings; from 100 lockd's error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    ConnectFailed = 1,
    ConnectionLost = 2,
    LocksLost = 3,
    NotResumed = 4,
    ProtocolError = 5,
    ServerNotAuthenticated = 6,
    WaitTimeout = 7,
    ReplyTimeout = 8,
    ServerError = 100,
    BadRequest = 101,
    UnknownCommand = 102,
    FrameTooLarge = 103,
    AuthRequired = 104,
    AuthFailed = 105,
    Deadlock = 106,
    TooManyLocks = 107,
    TooManyWaiters = 108,
    TooManyKeys = 109,
    BadKey = 110,
    OwnerBusy = 111,
    TooManyClients = 112,
    ShuttingDown = 113,
    MemoryLimit = 114,
    DeadlockSearchLimit = 115,
    Unavailable = 116,
    SessionExpired = 117,
    NotAdmin = 118,
}

impl Code {
    /// Every code with the name of its class constant.
    const CONSTANTS: [(&'static str, Code); 27] = [
        ("CONNECT_FAILED", Code::ConnectFailed),
        ("CONNECTION_LOST", Code::ConnectionLost),
        ("LOCKS_LOST", Code::LocksLost),
        ("NOT_RESUMED", Code::NotResumed),
        ("PROTOCOL_ERROR", Code::ProtocolError),
        ("SERVER_NOT_AUTHENTICATED", Code::ServerNotAuthenticated),
        ("WAIT_TIMEOUT", Code::WaitTimeout),
        ("REPLY_TIMEOUT", Code::ReplyTimeout),
        ("SERVER_ERROR", Code::ServerError),
        ("BAD_REQUEST", Code::BadRequest),
        ("UNKNOWN_COMMAND", Code::UnknownCommand),
        ("FRAME_TOO_LARGE", Code::FrameTooLarge),
        ("AUTH_REQUIRED", Code::AuthRequired),
        ("AUTH_FAILED", Code::AuthFailed),
        ("DEADLOCK", Code::Deadlock),
        ("TOO_MANY_LOCKS", Code::TooManyLocks),
        ("TOO_MANY_WAITERS", Code::TooManyWaiters),
        ("TOO_MANY_KEYS", Code::TooManyKeys),
        ("BAD_KEY", Code::BadKey),
        ("OWNER_BUSY", Code::OwnerBusy),
        ("TOO_MANY_CLIENTS", Code::TooManyClients),
        ("SHUTTING_DOWN", Code::ShuttingDown),
        ("MEMORY_LIMIT", Code::MemoryLimit),
        ("DEADLOCK_SEARCH_LIMIT", Code::DeadlockSearchLimit),
        ("UNAVAILABLE", Code::Unavailable),
        ("SESSION_EXPIRED", Code::SessionExpired),
        ("NOT_ADMIN", Code::NotAdmin),
    ];

    pub fn of_server_error(code: ErrorCode) -> Code {
        match code {
            ErrorCode::BadRequest => Code::BadRequest,
            ErrorCode::UnknownCommand => Code::UnknownCommand,
            ErrorCode::FrameTooLarge => Code::FrameTooLarge,
            ErrorCode::AuthRequired => Code::AuthRequired,
            ErrorCode::AuthFailed => Code::AuthFailed,
            ErrorCode::Deadlock => Code::Deadlock,
            ErrorCode::TooManyLocks => Code::TooManyLocks,
            ErrorCode::TooManyWaiters => Code::TooManyWaiters,
            ErrorCode::TooManyKeys => Code::TooManyKeys,
            ErrorCode::BadKey => Code::BadKey,
            ErrorCode::OwnerBusy => Code::OwnerBusy,
            ErrorCode::TooManyClients => Code::TooManyClients,
            ErrorCode::ShuttingDown => Code::ShuttingDown,
            ErrorCode::MemoryLimit => Code::MemoryLimit,
            ErrorCode::DeadlockSearchLimit => Code::DeadlockSearchLimit,
            ErrorCode::Unavailable => Code::Unavailable,
            ErrorCode::SessionExpired => Code::SessionExpired,
            ErrorCode::NotAdmin => Code::NotAdmin,
            ErrorCode::Unknown => Code::ServerError,
        }
    }
}

/// Declares the exception classes (the PHP name is the variant's), each extending the one
/// named after `:`, in the order they are registered (parents first).
macro_rules! exception_classes {
    ($($class:ident : $parent:ident;)*) => {
        /// An exception class of pklock.so; a variant's name is the PHP class name.
        #[allow(clippy::enum_variant_names)]
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum ExceptionClass {
            PkLockException,
            $($class,)*
        }

        /// Each class's entry, by `ExceptionClass as usize`, set when it is registered.
        static ENTRIES: [AtomicPtr<zend_class_entry>; [$(ExceptionClass::$class),*].len() + 1] =
            [const { AtomicPtr::new(ptr::null_mut()) }; [$(ExceptionClass::$class),*].len() + 1];

        /// Registers the classes; called from MINIT.
        pub fn register() -> Result<(), ext_php_rs::error::Error> {
            let base = Code::CONSTANTS.iter().try_fold(
                ClassBuilder::new("PkLockException").extends((runtime_exception, "RuntimeException")),
                |class, &(name, code)| class.constant(name, code as i64, &[], ConstantFlags::Public),
            )?;
            base.registration(|entry, _| ENTRIES[ExceptionClass::PkLockException as usize].store(entry, Ordering::Release))
                .register()?;
            $(
                ClassBuilder::new(stringify!($class))
                    .extends((|| ExceptionClass::$parent.entry(), stringify!($parent)))
                    .registration(|entry, _| ENTRIES[ExceptionClass::$class as usize].store(entry, Ordering::Release))
                    .register()?;
            )*
            Ok(())
        }
    };
}

exception_classes! {
    PkLockConnectionException: PkLockException;
    PkLockLostException: PkLockConnectionException;
    PkLockTimeoutException: PkLockException;
    PkLockServerException: PkLockException;
    PkLockDeadlockException: PkLockServerException;
    PkLockTooManyLocksException: PkLockServerException;
    PkLockTooManyWaitersException: PkLockServerException;
    PkLockTooManyKeysException: PkLockServerException;
    PkLockTooManyClientsException: PkLockServerException;
    PkLockBadKeyException: PkLockServerException;
    PkLockOwnerBusyException: PkLockServerException;
    PkLockBadRequestException: PkLockServerException;
    PkLockUnknownCommandException: PkLockServerException;
    PkLockFrameTooLargeException: PkLockServerException;
    PkLockAuthException: PkLockServerException;
    PkLockShuttingDownException: PkLockServerException;
    PkLockMemoryLimitException: PkLockTooManyLocksException;
    PkLockDeadlockSearchLimitException: PkLockServerException;
    PkLockUnavailableException: PkLockServerException;
}

impl ExceptionClass {
    pub fn entry(self) -> &'static ClassEntry {
        // SAFETY: the pointer is null or the class entry PHP registered at MINIT, which lives
        // as long as the process.
        unsafe { ENTRIES[self as usize].load(Ordering::Acquire).as_ref() }.expect("exception classes are registered at MINIT")
    }

    /// The exception to throw. PHP creates it when it is thrown, through the class's
    /// handler, so that it records where the PHP code was.
    pub fn exception(self, code: Code, message: String) -> PhpException {
        PhpException::new(message, code as i32, self.entry())
    }
}
