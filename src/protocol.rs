//! PostgreSQL v3 wire format, pure: framing, startup packets, the few message bodies the proxy
//! inspects, and the messages it originates. No sockets and no tokio in here.

pub mod backend;
pub mod encode;
pub mod frame;
pub mod startup;

/// Frontend (client → server) message tags the proxy cares about.
pub mod tag {
    pub const QUERY: u8 = b'Q';
    pub const PARSE: u8 = b'P';
    pub const BIND: u8 = b'B';
    pub const DESCRIBE: u8 = b'D';
    pub const EXECUTE: u8 = b'E';
    pub const CLOSE: u8 = b'C';
    pub const SYNC: u8 = b'S';
    pub const FLUSH: u8 = b'H';
    pub const FUNCTION_CALL: u8 = b'F';
    pub const COPY_DATA: u8 = b'd';
    pub const COPY_DONE: u8 = b'c';
    pub const COPY_FAIL: u8 = b'f';
    pub const TERMINATE: u8 = b'X';
    pub const PASSWORD: u8 = b'p';

    /// Backend (server → client) tags.
    pub mod backend {
        pub const AUTHENTICATION: u8 = b'R';
        pub const BACKEND_KEY_DATA: u8 = b'K';
        pub const PARAMETER_STATUS: u8 = b'S';
        pub const READY_FOR_QUERY: u8 = b'Z';
        pub const ERROR_RESPONSE: u8 = b'E';
        pub const NOTICE_RESPONSE: u8 = b'N';
        pub const NOTIFICATION_RESPONSE: u8 = b'A';
        pub const COPY_IN_RESPONSE: u8 = b'G';
        pub const COPY_OUT_RESPONSE: u8 = b'H';
        pub const COPY_BOTH_RESPONSE: u8 = b'W';
        pub const NEGOTIATE_PROTOCOL_VERSION: u8 = b'v';
    }
}

#[cfg(test)]
mod fuzz_tests;
