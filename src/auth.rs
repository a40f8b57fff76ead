//! Authenticating clients against the configured users: SCRAM-SHA-256 (and -PLUS over TLS) via
//! pgwire's server state machine, or MD5. Answers only "who is this"; never touches backends.

use bytes::BytesMut;
use pgwire::api::auth::sasl::scram::{ScramSecret, ScramServerAuth};
use pgwire::error::PgWireError;
use pgwire::messages::startup::Authentication;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::config::AuthMethod;
use crate::error::{sqlstate, ClientError};
use crate::protocol::{encode, frame, tag};
use crate::topology::UserSpec;
use crate::wire::{MessageIo, WireError};

const SCRAM: &str = "SCRAM-SHA-256";
const SCRAM_PLUS: &str = "SCRAM-SHA-256-PLUS";
/// Password-family messages are small; PostgreSQL caps them similarly.
const AUTH_MESSAGE_LIMIT: usize = 8192;

#[derive(Debug)]
pub enum AuthError {
    /// Tell the client and close.
    Client(ClientError),
    /// The client went away (psql does this to prompt for a password); close quietly.
    Gone(WireError),
}

impl From<WireError> for AuthError {
    fn from(e: WireError) -> AuthError {
        AuthError::Gone(e)
    }
}

fn failed(user: &str) -> AuthError {
    AuthError::Client(ClientError::fatal(
        sqlstate::INVALID_PASSWORD,
        format!("password authentication failed for user \"{user}\""),
    ))
}

fn malformed(what: &str) -> AuthError {
    AuthError::Client(ClientError::fatal(
        sqlstate::PROTOCOL_VIOLATION,
        format!("malformed {what}"),
    ))
}

/// Runs the exchange for `user_name`. `user` is None for an unknown name: the exchange still
/// runs against a random secret, so unknown and wrong-password users look the same.
/// `scram` carries the TLS certificate when channel binding is possible on this connection.
pub async fn authenticate<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut MessageIo<S>,
    user_name: &str,
    user: Option<&UserSpec>,
    scram: &ScramServerAuth,
) -> Result<(), AuthError> {
    match user.map(|u| u.auth) {
        Some(AuthMethod::Md5) => md5(io, user_name, user).await,
        _ => scram_sha_256(io, user_name, user, scram).await,
    }
}

async fn scram_sha_256<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut MessageIo<S>,
    user_name: &str,
    user: Option<&UserSpec>,
    scram: &ScramServerAuth,
) -> Result<(), AuthError> {
    let mut mechanisms = vec![SCRAM.to_owned()];
    if scram.supports_channel_binding() {
        mechanisms.insert(0, SCRAM_PLUS.to_owned());
    }
    encode::auth(&mut io.wbuf, Authentication::SASL(mechanisms));
    io.flush().await.map_err(WireError::Io)?;

    let msg = read_password_message(io).await?;
    let (mechanism, data) =
        parse_sasl_initial(frame::body(&msg)).ok_or_else(|| malformed("SASLInitialResponse"))?;
    if mechanism != SCRAM && !(mechanism == SCRAM_PLUS && scram.supports_channel_binding()) {
        return Err(AuthError::Client(ClientError::fatal(
            sqlstate::PROTOCOL_VIOLATION,
            format!("client selected an invalid SASL authentication mechanism {mechanism:?}"),
        )));
    }
    let secret = match user {
        Some(u) => ScramSecret::SaltedPassword {
            salt: u.scram_salt.clone(),
            salted_password: u.scram_salted_password.clone(),
        },
        None => ScramSecret::SaltedPassword {
            salt: rand::random::<[u8; 16]>().to_vec(),
            salted_password: rand::random::<[u8; 32]>().to_vec(),
        },
    };
    let (server_first, waiting) = scram
        .on_client_first_message_with_secret(data, secret)
        .map_err(|e| scram_error(e, user_name))?;
    encode::auth(
        &mut io.wbuf,
        Authentication::SASLContinue(server_first.into_bytes().into()),
    );
    io.flush().await.map_err(WireError::Io)?;

    let msg = read_password_message(io).await?;
    let server_final = waiting
        .on_client_final_message(frame::body(&msg))
        .map_err(|e| scram_error(e, user_name))?;
    if user.is_none() {
        // Unreachable in practice (the random secret cannot match), kept as a hard stop.
        return Err(failed(user_name));
    }
    encode::auth(
        &mut io.wbuf,
        Authentication::SASLFinal(server_final.into_bytes().into()),
    );
    Ok(())
}

fn scram_error(e: PgWireError, user: &str) -> AuthError {
    match e {
        PgWireError::InvalidPassword(_) => failed(user),
        other => AuthError::Client(
            ClientError::fatal(
                sqlstate::INVALID_PASSWORD,
                format!("password authentication failed for user \"{user}\""),
            )
            .with_detail(other.to_string()),
        ),
    }
}

async fn md5<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut MessageIo<S>,
    user_name: &str,
    user: Option<&UserSpec>,
) -> Result<(), AuthError> {
    let salt: [u8; 4] = rand::random();
    encode::auth(&mut io.wbuf, Authentication::MD5Password(salt.to_vec()));
    io.flush().await.map_err(WireError::Io)?;
    let msg = read_password_message(io).await?;
    let (given, _) =
        frame::read_cstr(frame::body(&msg)).ok_or_else(|| malformed("password message"))?;
    let Some(user) = user else {
        return Err(failed(user_name));
    };
    let expected = postgres_protocol::authentication::md5_hash(
        user.name.as_bytes(),
        user.password.as_bytes(),
        salt,
    );
    if constant_time_eq(given, expected.as_bytes()) {
        Ok(())
    } else {
        Err(failed(user_name))
    }
}

async fn read_password_message<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut MessageIo<S>,
) -> Result<BytesMut, AuthError> {
    let msg = io
        .read_message(AUTH_MESSAGE_LIMIT)
        .await
        .map_err(|e| match e {
            WireError::Frame(f) => AuthError::Client(ClientError::fatal(
                sqlstate::PROTOCOL_VIOLATION,
                f.to_string(),
            )),
            other => AuthError::Gone(other),
        })?;
    if msg[0] != tag::PASSWORD {
        return Err(AuthError::Client(ClientError::fatal(
            sqlstate::PROTOCOL_VIOLATION,
            format!(
                "expected a password response, got message type {:?}",
                msg[0] as char
            ),
        )));
    }
    Ok(msg)
}

/// SASLInitialResponse body: mechanism name, then an Int32 length (-1 = none) and the data.
fn parse_sasl_initial(body: &[u8]) -> Option<(&str, &[u8])> {
    let (name, rest) = frame::read_cstr(body)?;
    let (len, data) = rest.split_first_chunk::<4>()?;
    let len = i32::from_be_bytes(*len);
    let data = match len {
        -1 => &[][..],
        n if n >= 0 && n as usize == data.len() => data,
        _ => return None,
    };
    Some((std::str::from_utf8(name).ok()?, data))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sasl_initial_response_parsing_never_trusts_lengths() {
        let ok = [b"SCRAM-SHA-256\0".as_slice(), &3i32.to_be_bytes(), b"abc"].concat();
        let none = [b"SCRAM-SHA-256\0".as_slice(), &(-1i32).to_be_bytes()].concat();
        type Case = (Vec<u8>, Option<(&'static str, &'static [u8])>);
        let cases: Vec<Case> = vec![
            (ok, Some(("SCRAM-SHA-256", b"abc"))),
            (none, Some(("SCRAM-SHA-256", b""))),
            (b"SCRAM-SHA-256\0".to_vec(), None),
            (b"SCRAM-SHA-256".to_vec(), None),
            (
                [b"M\0".as_slice(), &9i32.to_be_bytes(), b"abc"].concat(),
                None,
            ),
            ([b"M\0".as_slice(), &(-5i32).to_be_bytes()].concat(), None),
            ([b"M\0".as_slice(), &i32::MAX.to_be_bytes()].concat(), None),
        ];
        for (body, want) in cases {
            assert_eq!(parse_sasl_initial(&body), want, "{body:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn sasl_initial_response_parser_never_panics(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
            let _ = parse_sasl_initial(&body);
        }
    }

    #[test]
    fn constant_time_comparison() {
        assert!(constant_time_eq(b"md5abc", b"md5abc"));
        assert!(!constant_time_eq(b"md5abc", b"md5abd"));
        assert!(!constant_time_eq(b"md5ab", b"md5abc"));
    }
}
