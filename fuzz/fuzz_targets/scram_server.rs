//! Fuzz target: the proxy as SCRAM-SHA-256 (and -PLUS) server to its clients
//! (`auth::authenticate`, pgwire's SCRAM state machine behind it; MD5 for `auth: md5` users),
//! over an in-memory client whose messages come from the fuzzer.
//!
//! Input: one byte of flags (known user, -PLUS offered, MD5 user, framing by the target or raw
//! bytes, a correct client), one byte picking the mechanism, then the client-first data and,
//! after the first NUL, the client-final data. In raw mode the rest is the whole byte stream
//! the client sends, tags and lengths included.
#![no_main]

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::{Arc, LazyLock};

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use pgmeridian::auth::{authenticate, AuthError};
use pgmeridian::backend::scram::{salt_password, ScramClient};
use pgmeridian::config::AuthMethod;
use pgmeridian::protocol::frame;
use pgmeridian::topology::UserSpec;
use pgmeridian::wire::MessageIo;
use pgmeridian_fuzz::{run_now, Peer};
use pgwire::api::auth::sasl::scram::ScramServerAuth;

const PASSWORD: &str = "pw";
const ITERATIONS: u32 = 4096;
const NONCE: &str = "rOprNGfwEbeRWgbNEkqO";
const MECHANISMS: [&str; 4] = ["SCRAM-SHA-256", "SCRAM-SHA-256-PLUS", "SCRAM-SHA-1", ""];

struct Server {
    salted: [u8; 32],
    scram: Arc<UserSpec>,
    md5: Arc<UserSpec>,
    plain: ScramServerAuth,
    /// Offers SCRAM-SHA-256-PLUS (the connection has a certificate to bind to).
    plus: ScramServerAuth,
}

static SERVER: LazyLock<Server> = LazyLock::new(|| {
    let salt = b"0123456789abcdef".to_vec();
    let salted = salt_password(PASSWORD, &salt, ITERATIONS);
    let key = rcgen::KeyPair::generate().expect("a key");
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .expect("params")
        .self_signed(&key)
        .expect("a certificate");
    let mut plus = ScramServerAuth::new();
    plus.configure_certificate(cert.pem().as_bytes())
        .expect("a certificate to bind to");
    let user = |auth| {
        Arc::new(UserSpec {
            name: "app".into(),
            password: PASSWORD.into(),
            auth,
            admin: false,
            scram: pgmeridian::auth::ScramKeys::from_salted(
                salt.clone(),
                salted.to_vec(),
                ITERATIONS as usize,
            ),
            backend_scram: Default::default(),
        })
    };
    Server {
        salted,
        scram: user(AuthMethod::ScramSha256),
        md5: user(AuthMethod::Md5),
        plain: ScramServerAuth::new(),
        plus,
    }
});

/// A password message (`p`) with the right length word.
fn password_message(body: &[u8]) -> Vec<u8> {
    let mut m = vec![b'p'];
    m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    m.extend_from_slice(body);
    m
}

/// The SASL data of the last Authentication message the proxy wrote with `code`.
fn sasl_data(written: &[u8], code: u32) -> Option<Vec<u8>> {
    let mut buf = BytesMut::from(written);
    let mut found = None;
    while let Ok(Some(m)) = frame::split_message(&mut buf, 1 << 20) {
        let body = frame::body(&m);
        if m[0] == b'R' && body.len() >= 4 && body[..4] == code.to_be_bytes() {
            found = Some(body[4..].to_vec());
        }
    }
    found
}

fuzz_target!(|input: &[u8]| {
    let [flags, mechanism, rest @ ..] = input else {
        return;
    };
    let known_user = flags & 1 != 0;
    let plus_offered = flags & 2 != 0;
    let md5 = flags & 4 != 0;
    let raw = flags & 8 != 0;
    let correct = flags & 16 != 0 && !raw;
    let mechanism = MECHANISMS[usize::from(*mechanism) % MECHANISMS.len()];
    let (first, last) = match rest.iter().position(|&b| b == 0) {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    let honest = correct && last.is_empty();
    let s = &*SERVER;
    let client = Rc::new(RefCell::new(ScramClient::new(NONCE)));
    let in_peer = client.clone();
    let (first, last, rest) = (first.to_vec(), last.to_vec(), rest.to_vec());
    let peer = Peer::new(move |turn, written: &[u8]| {
        if raw {
            return (turn == 0).then(|| rest.clone());
        }
        match turn {
            0 => {
                let data = if correct {
                    in_peer.borrow().client_first()
                } else {
                    first.clone()
                };
                let mut body = mechanism.as_bytes().to_vec();
                body.push(0);
                body.extend_from_slice(&(data.len() as i32).to_be_bytes());
                body.extend_from_slice(&data);
                Some(password_message(&body))
            }
            1 if correct && last.is_empty() => {
                let server_first = sasl_data(written, 11)?;
                let mut client = in_peer.borrow_mut();
                let parsed = client.parse_server_first(&server_first, ITERATIONS).ok()?;
                let final_message = client.client_final(&server_first, &parsed, SERVER.salted);
                Some(password_message(&final_message))
            }
            1 => Some(password_message(&last)),
            _ => None,
        }
    });
    let mut io = MessageIo::new(peer);
    let scram = if plus_offered { &s.plus } else { &s.plain };
    let user = known_user.then(|| if md5 { &*s.md5 } else { &*s.scram });
    let got = run_now(authenticate(&mut io, "app", user, scram, ITERATIONS));
    // Every exchange ends: the proxy never reads on after the client's final message.
    assert!(
        io.io.turns <= 3,
        "the proxy kept reading: {} turns",
        io.io.turns
    );
    match &got {
        Ok(()) => {
            // Only the right proof for a configured SCRAM user lets a client in.
            assert!(known_user && !md5 && honest, "let in: flags {flags:#x}");
            let server_final = sasl_data(&io.wbuf, 12);
            assert!(
                server_final.is_some_and(|f| client.borrow().verify_server_final(&f).is_ok()),
                "no valid SASLFinal"
            );
        }
        Err(AuthError::Client(e)) => {
            assert!(e.fatal);
            assert!(
                ["08P01", "28P01", "28000"].contains(&e.code.as_str()),
                "{e:?}"
            );
        }
        Err(AuthError::Gone(_)) => {}
    }
    if known_user && !md5 && honest && mechanism == "SCRAM-SHA-256" {
        assert!(got.is_ok(), "a correct client was refused: {got:?}");
    }
});
