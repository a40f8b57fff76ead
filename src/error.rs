//! What the client is told when something fails: a SQLSTATE, a severity and a safe message.
//! Every error that reaches a client passes through [`ClientError`]; it never carries SQL text.

use bytes::BytesMut;

use crate::protocol::encode;

/// SQLSTATE codes the proxy originates.
pub mod sqlstate {
    pub const PROTOCOL_VIOLATION: &str = "08P01";
    pub const CONNECTION_FAILURE: &str = "08006";
    pub const CLIENT_UNABLE_TO_CONNECT: &str = "08001";
    pub const INVALID_PASSWORD: &str = "28P01";
    pub const INVALID_AUTHORIZATION: &str = "28000";
    pub const INVALID_CATALOG_NAME: &str = "3D000";
    pub const ADMIN_SHUTDOWN: &str = "57P01";
    pub const CANNOT_CONNECT_NOW: &str = "57P03";
    pub const IDLE_SESSION_TIMEOUT: &str = "57P05";
    pub const TOO_MANY_CONNECTIONS: &str = "53300";
    pub const PROGRAM_LIMIT_EXCEEDED: &str = "54000";
    pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
    pub const INVALID_PARAMETER_VALUE: &str = "22023";
}

/// An error to be sent to the client as an ErrorResponse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientError {
    /// FATAL closes the session afterwards; ERROR leaves it usable.
    pub fatal: bool,
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl ClientError {
    pub fn fatal(code: impl Into<String>, message: impl Into<String>) -> ClientError {
        ClientError {
            fatal: true,
            code: code.into(),
            message: message.into(),
            detail: None,
            hint: None,
        }
    }

    /// An ERROR: the session goes on.
    pub fn error(code: impl Into<String>, message: impl Into<String>) -> ClientError {
        ClientError {
            fatal: false,
            ..ClientError::fatal(code, message)
        }
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> ClientError {
        self.detail = Some(detail.into());
        self
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> ClientError {
        self.hint = Some(hint.into());
        self
    }

    pub fn encode(&self, buf: &mut BytesMut) {
        encode::error_response(
            buf,
            if self.fatal { "FATAL" } else { "ERROR" },
            &self.code,
            &self.message,
            self.detail.as_deref(),
            self.hint.as_deref(),
        );
    }
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}
