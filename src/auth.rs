//! Authenticating clients against the configured users: SCRAM-SHA-256 (and -PLUS over TLS) via
//! pgwire's server state machine, or MD5. Answers only "who is this"; never touches backends.
//!
//! Unknown user names are not revealed: they get SCRAM (the default method) with a salt that is
//! stable per name, derived from a secret made at process start (PostgreSQL's
//! `scram_mock_salt`), so the exchange looks like a configured user's until the proof fails.
//! Only users configured with `auth: md5` get an MD5 challenge, as in PostgreSQL.

use std::sync::LazyLock;

use bytes::BytesMut;
use pgwire::api::auth::sasl::scram::{ScramSecret, ScramServerAuth};
use pgwire::error::PgWireError;
use pgwire::messages::startup::Authentication;
use ring::hmac;
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
/// Length of the SCRAM salts the proxy makes (configured users' too).
const SALT_LEN: usize = 16;

/// The per-process secret behind unknown users' salts; made once, never leaves the process.
static MOCK_SALT_KEY: LazyLock<hmac::Key> =
    LazyLock::new(|| hmac::Key::new(hmac::HMAC_SHA256, &rand::random::<[u8; 32]>()));

/// The salt an unknown `user_name` is shown: the same at every attempt in this process, and
/// unrelated to any other name's (an HMAC of the name under the process secret).
pub fn mock_salt(user_name: &str) -> Vec<u8> {
    hmac::sign(&MOCK_SALT_KEY, user_name.as_bytes()).as_ref()[..SALT_LEN].to_vec()
}

/// A configured user's SCRAM verifier, derived once per configuration load: the proof is
/// checked against `stored_key` and the server signature made with `server_key` (two HMACs per
/// login instead of four from the salted password).
pub struct ScramKeys {
    salt: Vec<u8>,
    iterations: usize,
    stored_key: Vec<u8>,
    server_key: Vec<u8>,
}

impl ScramKeys {
    /// From `Hi(password, salt, iterations)`.
    pub fn from_salted(salt: Vec<u8>, salted_password: Vec<u8>, iterations: usize) -> ScramKeys {
        match ScramSecret::verifier_from_salted_password(salt, salted_password, iterations) {
            ScramSecret::Verifier {
                salt,
                iterations,
                stored_key,
                server_key,
            } => ScramKeys {
                salt,
                iterations,
                stored_key,
                server_key,
            },
            ScramSecret::SaltedPassword { .. } => unreachable!("pgwire derives a verifier"),
        }
    }

    /// Keys no proof can match, shown with `salt` and `iterations` (unknown users).
    fn mock(salt: Vec<u8>, iterations: usize) -> ScramKeys {
        ScramKeys {
            salt,
            iterations,
            stored_key: rand::random::<[u8; 32]>().to_vec(),
            server_key: rand::random::<[u8; 32]>().to_vec(),
        }
    }

    fn secret(&self) -> ScramSecret {
        ScramSecret::Verifier {
            salt: self.salt.clone(),
            iterations: self.iterations,
            stored_key: self.stored_key.clone(),
            server_key: self.server_key.clone(),
        }
    }
}

impl std::fmt::Debug for ScramKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScramKeys")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

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
/// `scram` carries the TLS certificate when channel binding is possible on this connection;
/// `mock_iterations` is what configured users' verifiers show (an unknown name shows it too).
pub async fn authenticate<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut MessageIo<S>,
    user_name: &str,
    user: Option<&UserSpec>,
    scram: &ScramServerAuth,
    mock_iterations: u32,
) -> Result<(), AuthError> {
    match user.map(|u| u.auth) {
        Some(AuthMethod::Md5) => md5(io, user_name, user).await,
        _ => scram_sha_256(io, user_name, user, scram, mock_iterations).await,
    }
}

async fn scram_sha_256<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut MessageIo<S>,
    user_name: &str,
    user: Option<&UserSpec>,
    scram: &ScramServerAuth,
    mock_iterations: u32,
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
    check_channel_binding_flag(mechanism, data, scram.supports_channel_binding())
        .map_err(AuthError::Client)?;
    let secret = match user {
        Some(u) => u.scram.secret(),
        // The proof cannot match random keys; the salt and iterations must not give that away.
        None => ScramKeys::mock(mock_salt(user_name), mock_iterations as usize).secret(),
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

/// The GS2 channel-binding flag of a client-first message against the mechanism the client
/// chose, as PostgreSQL checks it (`read_client_first_message`): -PLUS needs `p=`, plain SCRAM
/// must not carry `p=`, and `y` ("I could bind, but you cannot") is a downgrade when the proxy
/// offered -PLUS on this connection. Anything else is left to the SCRAM parser.
fn check_channel_binding_flag(
    mechanism: &str,
    client_first: &[u8],
    plus_offered: bool,
) -> Result<(), ClientError> {
    let malformed = |detail: &str| {
        ClientError::fatal(sqlstate::PROTOCOL_VIOLATION, "malformed SCRAM message")
            .with_detail(detail)
            .with_kind(crate::error::ErrorKind::AuthFailed)
    };
    let plus = mechanism == SCRAM_PLUS;
    match client_first.first() {
        Some(b'p') if !plus => Err(malformed(
            "The client selected SCRAM-SHA-256 without channel binding, but the SCRAM message includes channel binding data.",
        )),
        Some(b'n' | b'y') if plus => Err(malformed(
            "The client selected SCRAM-SHA-256-PLUS, but the SCRAM message does not include channel binding data.",
        )),
        Some(b'y') if plus_offered => Err(ClientError::fatal(
            sqlstate::INVALID_AUTHORIZATION,
            "SCRAM channel binding negotiation error",
        )
        .with_detail(
            "The client supports SCRAM channel binding but thinks the server does not.  However, this server does support channel binding.",
        )),
        _ => Ok(()),
    }
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

/// Equality that takes the same time wherever the first difference is.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AuthMethod;

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
    fn channel_binding_flags_are_checked_against_the_mechanism() {
        // (mechanism, client-first, -PLUS offered, expected SQLSTATE or None for "go on")
        let cases: &[(&str, &[u8], bool, Option<&str>)] = &[
            (SCRAM, b"n,,n=,r=abc", false, None),
            (SCRAM, b"n,,n=,r=abc", true, None),
            (SCRAM, b"y,,n=,r=abc", false, None),
            (SCRAM, b"y,,n=,r=abc", true, Some("28000")),
            (
                SCRAM,
                b"p=tls-server-end-point,,n=,r=abc",
                true,
                Some("08P01"),
            ),
            (SCRAM_PLUS, b"n,,n=,r=abc", true, Some("08P01")),
            (SCRAM_PLUS, b"y,,n=,r=abc", true, Some("08P01")),
            (SCRAM_PLUS, b"p=tls-server-end-point,,n=,r=abc", true, None),
            (SCRAM, b"", true, None),
            (SCRAM, b"x,,", true, None),
        ];
        for (mechanism, first, offered, want) in cases {
            let got = check_channel_binding_flag(mechanism, first, *offered);
            assert_eq!(
                got.as_ref().err().map(|e| e.code.as_str()),
                *want,
                "{mechanism} {:?} offered={offered}: {got:?}",
                String::from_utf8_lossy(first)
            );
        }
        let e = check_channel_binding_flag(SCRAM, b"y,,n=,r=a", true).unwrap_err();
        assert_eq!(e.message, "SCRAM channel binding negotiation error");
    }

    #[test]
    fn mock_salts_are_stable_per_name_and_differ_between_names() {
        assert_eq!(mock_salt("mallory"), mock_salt("mallory"));
        assert_ne!(mock_salt("mallory"), mock_salt("mallory2"));
        assert_eq!(mock_salt("x").len(), SALT_LEN);
    }

    /// What a client sees of one SCRAM attempt: the mechanisms offered, then the server-first
    /// message, or the error the exchange ended with.
    async fn first_round(
        user_name: &str,
        user: Option<std::sync::Arc<UserSpec>>,
        scram: ScramServerAuth,
        mechanism: &str,
        client_first: &str,
    ) -> (Vec<String>, Result<String, ClientError>) {
        use bytes::BufMut;
        let (server_end, client_end) = tokio::io::duplex(8192);
        let name = user_name.to_owned();
        let server = tokio::spawn(async move {
            let mut io = MessageIo::new(server_end);
            authenticate(&mut io, &name, user.as_deref(), &scram, 4096).await
        });
        let mut client = MessageIo::new(client_end);
        let offer = client.read_message(8192).await.unwrap();
        let mechanisms: Vec<String> = frame::body(&offer)[4..]
            .split(|b| *b == 0)
            .filter(|m| !m.is_empty())
            .map(|m| String::from_utf8(m.to_vec()).unwrap())
            .collect();
        let mut body = BytesMut::new();
        body.put_slice(mechanism.as_bytes());
        body.put_u8(0);
        body.put_i32(client_first.len() as i32);
        body.put_slice(client_first.as_bytes());
        client.wbuf.put_u8(tag::PASSWORD);
        client.wbuf.put_u32(body.len() as u32 + 4);
        client.wbuf.put_slice(&body);
        client.flush().await.unwrap();
        // A refusal ends the server's side (the handshake writes the error): the client then
        // reads EOF, and the refusal is the server task's result.
        let answer = match client.read_message(8192).await {
            Ok(m) => Ok(m),
            Err(_) => Err(server.await.unwrap()),
        };
        let outcome = match answer {
            Ok(m) => Ok(String::from_utf8(frame::body(&m)[4..].to_vec()).unwrap()),
            Err(Err(AuthError::Client(e))) => Err(e),
            Err(other) => panic!("unexpected end of the exchange: {other:?}"),
        };
        (mechanisms, outcome)
    }

    fn salt_of(server_first: &str) -> String {
        server_first
            .split(',')
            .find_map(|f| f.strip_prefix("s="))
            .unwrap()
            .to_owned()
    }

    fn known_user() -> std::sync::Arc<UserSpec> {
        let salt = b"0123456789abcdef".to_vec();
        std::sync::Arc::new(UserSpec {
            name: "app".into(),
            password: "pw".into(),
            auth: AuthMethod::ScramSha256,
            scram: ScramKeys::from_salted(
                salt.clone(),
                pgwire::api::auth::sasl::scram::gen_salted_password("pw", &salt, 4096),
                4096,
            ),
            backend_scram: Default::default(),
            admin: false,
        })
    }

    const FIRST: &str = "n,,n=,r=rOprNGfwEbeRWgbNEkqO";

    #[tokio::test]
    async fn unknown_users_get_what_known_users_get_and_a_stable_salt() {
        let scram = ScramServerAuth::new();
        let (known, first) =
            first_round("app", Some(known_user()), scram.clone(), SCRAM, FIRST).await;
        let known_salt = salt_of(&first.unwrap());
        let (unknown, first) = first_round("mallory", None, scram.clone(), SCRAM, FIRST).await;
        assert_eq!(known, unknown, "the same mechanisms for both");
        assert_eq!(known, [SCRAM]);
        let salt = salt_of(&first.unwrap());
        let (_, again) = first_round("mallory", None, scram.clone(), SCRAM, FIRST).await;
        assert_eq!(salt, salt_of(&again.unwrap()), "stable across attempts");
        let (_, other) = first_round("mallory2", None, scram, SCRAM, FIRST).await;
        assert_ne!(salt, salt_of(&other.unwrap()), "one salt per name");
        assert_eq!(
            salt.len(),
            known_salt.len(),
            "same salt length as a configured user's"
        );
    }

    fn scram_with_certificate() -> ScramServerAuth {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let mut scram = ScramServerAuth::new();
        scram.configure_certificate(cert.pem().as_bytes()).unwrap();
        scram
    }

    #[tokio::test]
    async fn channel_binding_downgrades_are_refused_before_the_server_first_message() {
        let scram = scram_with_certificate();
        let (offered, ok) =
            first_round("app", Some(known_user()), scram.clone(), SCRAM, FIRST).await;
        assert_eq!(offered, [SCRAM_PLUS, SCRAM]);
        assert!(ok.is_ok(), "plain SCRAM without binding is fine: {ok:?}");
        for (mechanism, first, code) in [
            (SCRAM_PLUS, FIRST, "08P01"),
            (SCRAM, "y,,n=,r=rOprNGfwEbeRWgbNEkqO", "28000"),
            (
                SCRAM,
                "p=tls-server-end-point,,n=,r=rOprNGfwEbeRWgbNEkqO",
                "08P01",
            ),
        ] {
            for user in [Some(known_user()), None] {
                let (_, got) = first_round("app", user, scram.clone(), mechanism, first).await;
                let e = got.expect_err(first);
                assert_eq!(e.code, code, "{mechanism} {first}: {e:?}");
            }
        }
    }

    #[test]
    fn constant_time_comparison() {
        assert!(constant_time_eq(b"md5abc", b"md5abc"));
        assert!(!constant_time_eq(b"md5abc", b"md5abd"));
        assert!(!constant_time_eq(b"md5ab", b"md5abc"));
    }
}
