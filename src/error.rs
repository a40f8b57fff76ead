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
    pub const READ_ONLY_SQL_TRANSACTION: &str = "25006";
    pub const INSUFFICIENT_PRIVILEGE: &str = "42501";
    pub const SYNTAX_ERROR: &str = "42601";
    pub const UNDEFINED_OBJECT: &str = "42704";
    pub const OBJECT_NOT_IN_PREREQUISITE_STATE: &str = "55000";
    pub const CONFIG_FILE_ERROR: &str = "F0000";
}

/// What went wrong, as a closed set: the `kind` label of `pgmeridian_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The client broke the wire protocol or a message limit.
    ClientProtocol,
    /// Authentication failed or was refused (wrong password, unknown user, TLS required).
    AuthFailed,
    /// The client asked for a database that is not a configured cluster.
    UnknownDatabase,
    /// The client asked for a region or location the proxy does not know.
    UnknownRegion,
    /// The client asked for something the proxy does not do (replication connections).
    Unsupported,
    /// A backend connection could not be opened or logged in to.
    BackendConnect,
    /// A backend connection the session needed ended.
    BackendLost,
    /// A write (or pinned read) was refused: no node acts as the primary.
    RefusedNoPrimary,
    /// A write was refused: more than one node claims to be the primary.
    RefusedConflict,
    /// A read was refused: no replica qualifies and `no_eligible_replica` is `error`.
    RefusedNoReplica,
    /// The client did not finish startup within `limits.startup_timeout`.
    StartupTimeout,
    /// A trusted peer's PROXY protocol header could not be read.
    ProxyProtocol,
    /// The connection limit was reached.
    TooManyClients,
    /// No server connection of a pool became free within `pooling.wait_timeout`.
    PoolTimeout,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 14] = [
        ErrorKind::ClientProtocol,
        ErrorKind::AuthFailed,
        ErrorKind::UnknownDatabase,
        ErrorKind::UnknownRegion,
        ErrorKind::Unsupported,
        ErrorKind::BackendConnect,
        ErrorKind::BackendLost,
        ErrorKind::RefusedNoPrimary,
        ErrorKind::RefusedConflict,
        ErrorKind::RefusedNoReplica,
        ErrorKind::StartupTimeout,
        ErrorKind::ProxyProtocol,
        ErrorKind::TooManyClients,
        ErrorKind::PoolTimeout,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::ClientProtocol => "client_protocol",
            ErrorKind::AuthFailed => "auth_failed",
            ErrorKind::UnknownDatabase => "unknown_database",
            ErrorKind::UnknownRegion => "unknown_region",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::BackendConnect => "backend_connect",
            ErrorKind::BackendLost => "backend_lost",
            ErrorKind::RefusedNoPrimary => "refused_no_primary",
            ErrorKind::RefusedConflict => "refused_conflict",
            ErrorKind::RefusedNoReplica => "refused_no_replica",
            ErrorKind::StartupTimeout => "startup_timeout",
            ErrorKind::ProxyProtocol => "proxy_protocol",
            ErrorKind::TooManyClients => "too_many_clients",
            ErrorKind::PoolTimeout => "pool_timeout",
        }
    }

    /// The kind an error with this SQLSTATE has unless its origin says otherwise
    /// ([`ClientError::with_kind`]): the codes the proxy originates map one to one, except
    /// 57P03 (refusals name their reason) and backend codes passed through.
    pub fn of_code(code: &str) -> ErrorKind {
        match code {
            sqlstate::INVALID_PASSWORD | sqlstate::INVALID_AUTHORIZATION => ErrorKind::AuthFailed,
            sqlstate::INVALID_CATALOG_NAME => ErrorKind::UnknownDatabase,
            sqlstate::INVALID_PARAMETER_VALUE => ErrorKind::UnknownRegion,
            sqlstate::FEATURE_NOT_SUPPORTED => ErrorKind::Unsupported,
            sqlstate::TOO_MANY_CONNECTIONS => ErrorKind::TooManyClients,
            sqlstate::CONNECTION_FAILURE | sqlstate::CLIENT_UNABLE_TO_CONNECT => {
                ErrorKind::BackendConnect
            }
            _ => ErrorKind::ClientProtocol,
        }
    }
}

/// An error to be sent to the client as an ErrorResponse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientError {
    /// FATAL closes the session afterwards; ERROR leaves it usable.
    pub fatal: bool,
    /// For the errors metric; from the SQLSTATE unless set with [`ClientError::with_kind`].
    pub kind: ErrorKind,
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl ClientError {
    pub fn fatal(code: impl Into<String>, message: impl Into<String>) -> ClientError {
        let code = code.into();
        ClientError {
            fatal: true,
            kind: ErrorKind::of_code(&code),
            code,
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

    pub fn with_kind(mut self, kind: ErrorKind) -> ClientError {
        self.kind = kind;
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
