//! SCRAM-SHA-256 both ways: the proxy as server to clients (`auth::authenticate`, over an
//! in-memory peer that answers from what the proxy wrote) and as client to backends
//! (`backend::scram::ScramClient`) facing a hostile server.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::{Arc, OnceLock};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use pgmeridian::auth::{authenticate, AuthError};
use pgmeridian::backend::scram::{ScramClient, MAX_SALT};
use pgmeridian::config::AuthMethod;
use pgmeridian::protocol::frame;
use pgmeridian::topology::UserSpec;
use pgmeridian::wire::MessageIo;
use pgwire::api::auth::sasl::scram::{gen_salted_password, ScramServerAuth};
use proptest::prelude::*;

use crate::gen::{self, Length, Peer};
use crate::{cases, Case};

const PASSWORD: &str = "pw";
const ITERATIONS: u32 = 4096;

struct Server {
    user: Arc<UserSpec>,
    salted: [u8; 32],
    plain: ScramServerAuth,
    /// Offers SCRAM-SHA-256-PLUS (the connection has a certificate to bind to).
    plus: ScramServerAuth,
}

fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        let salt = b"0123456789abcdef".to_vec();
        let salted = gen_salted_password(PASSWORD, &salt, ITERATIONS as usize);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let mut plus = ScramServerAuth::new();
        plus.configure_certificate(cert.pem().as_bytes()).unwrap();
        Server {
            salted: salted.clone().try_into().unwrap(),
            user: Arc::new(UserSpec {
                name: "app".into(),
                password: PASSWORD.into(),
                auth: AuthMethod::ScramSha256,
                admin: false,
                scram: pgmeridian::auth::ScramKeys::from_salted(salt, salted, ITERATIONS as usize),
                backend_scram: Default::default(),
            }),
            plain: ScramServerAuth::new(),
            plus,
        }
    })
}

/// What the client's final message carries.
#[derive(Debug, Clone)]
enum Final {
    /// The right proof for the password, computed from the server-first message.
    Correct,
    /// A proof for another password.
    WrongPassword,
    /// Random bytes.
    Garbage(Vec<u8>),
}

#[derive(Debug, Clone)]
struct Attempt {
    known_user: bool,
    plus_offered: bool,
    mechanism: &'static str,
    /// The GS2 header and the rest of client-first, before mutation.
    first: Vec<u8>,
    first_mutations: Vec<gen::Mutation>,
    /// The SASLInitialResponse's own length field: right, -1 or something else.
    data_len: Option<i32>,
    last: Final,
    last_mutations: Vec<gen::Mutation>,
    /// The message tag and length word of the password messages.
    tag: u8,
    length: Length,
}

impl Attempt {
    /// Whether everything the client sends is what a correct client sends.
    fn clean(&self) -> bool {
        self.first_mutations
            .iter()
            .all(|m| matches!(m, gen::Mutation::None))
            && self
                .last_mutations
                .iter()
                .all(|m| matches!(m, gen::Mutation::None))
            && self.data_len.is_none()
            && self.tag == b'p'
            && matches!(self.length, Length::Right)
            && self.mechanism == "SCRAM-SHA-256"
            && self.first == b"n,,n=,r="
    }
}

fn attempt() -> impl Strategy<Value = Attempt> {
    let mechanism = proptest::sample::select(vec![
        "SCRAM-SHA-256",
        "SCRAM-SHA-256-PLUS",
        "SCRAM-SHA-1",
        "",
    ]);
    let first = prop_oneof![
        4 => Just(b"n,,n=,r=".to_vec()),
        1 => Just(b"y,,n=,r=".to_vec()),
        1 => Just(b"p=tls-server-end-point,,n=,r=".to_vec()),
        1 => Just(b"n,a=app,n=app,r=".to_vec()),
        1 => Just(b"n,,m=ext,n=,r=".to_vec()),
        1 => gen::bytes(40),
    ];
    let last = prop_oneof![
        4 => Just(Final::Correct),
        1 => Just(Final::WrongPassword),
        1 => gen::bytes(120).prop_map(Final::Garbage),
    ];
    let mutations = || prop_oneof![3 => Just(Vec::new()), 1 => gen::mutations()];
    let data_len =
        prop_oneof![6 => Just(None), 1 => Just(Some(-1)), 1 => any::<i32>().prop_map(Some)];
    let tag = prop_oneof![8 => Just(b'p'), 1 => any::<u8>()];
    let length = prop_oneof![8 => Just(Length::Right), 1 => Length::strategy()];
    (
        (
            any::<bool>(),
            any::<bool>(),
            mechanism,
            first,
            mutations(),
            data_len,
        ),
        (last, mutations(), tag, length),
    )
        .prop_map(
            |(
                (known_user, plus_offered, mechanism, first, first_mutations, data_len),
                (last, last_mutations, tag, length),
            )| Attempt {
                known_user,
                plus_offered,
                mechanism,
                first,
                first_mutations,
                data_len,
                last,
                last_mutations,
                tag,
                length,
            },
        )
}

fn password_message(a: &Attempt, body: &[u8]) -> Vec<u8> {
    let mut m = vec![a.tag];
    m.extend_from_slice(&a.length.word(body.len()).to_be_bytes());
    m.extend_from_slice(body);
    m
}

/// The SASL data of the last Authentication message the proxy wrote with `code`.
fn sasl_data(written: &[u8], code: u32) -> Option<Vec<u8>> {
    let mut buf = bytes::BytesMut::from(written);
    let mut found = None;
    while let Ok(Some(m)) = frame::split_message(&mut buf, 1 << 20) {
        let body = frame::body(&m);
        if m[0] == b'R' && body.len() >= 4 && body[..4] == code.to_be_bytes() {
            found = Some(body[4..].to_vec());
        }
    }
    found
}

proptest! {
    #![proptest_config(cases(300))]

    /// The proxy as SCRAM server: every exchange ends (no read waits on a peer that has
    /// nothing more to say), refusals are clean FATAL errors, and a client is let in only with
    /// the right proof for a configured user; with it, it is, and the proxy proves itself.
    #[test]
    fn scram_server_lets_in_only_the_right_proof(a in attempt()) {
        let _case = Case::start("scram_server_lets_in_only_the_right_proof");
        let s = server();
        let nonce = "rOprNGfwEbeRWgbNEkqO";
        let client = Rc::new(RefCell::new(ScramClient::new(nonce)));
        let in_peer = client.clone();
        let attempt = a.clone();
        let first_sent = gen::mutate([a.first.clone(), nonce.as_bytes().to_vec()].concat(), &a.first_mutations);
        let peer = Peer::new(move |turn, written: &[u8]| match turn {
            0 => {
                let mut body = attempt.mechanism.as_bytes().to_vec();
                body.push(0);
                let len = attempt.data_len.unwrap_or(first_sent.len() as i32);
                body.extend_from_slice(&len.to_be_bytes());
                body.extend_from_slice(&first_sent);
                Some(password_message(&attempt, &body))
            }
            1 => {
                let server_first = sasl_data(written, 11)?;
                let body = match &attempt.last {
                    Final::Garbage(g) => g.clone(),
                    other => {
                        let mut client = in_peer.borrow_mut();
                        let parsed = client.parse_server_first(&server_first, ITERATIONS).ok()?;
                        let salted = match other {
                            Final::Correct => server().salted,
                            _ => gen_salted_password("not it", &parsed.salt, ITERATIONS as usize)
                                .try_into()
                                .unwrap(),
                        };
                        client.client_final(&server_first, &parsed, salted)
                    }
                };
                Some(password_message(&attempt, &gen::mutate(body, &attempt.last_mutations)))
            }
            _ => None,
        });
        let mut io = MessageIo::new(peer);
        let scram = if a.plus_offered { &s.plus } else { &s.plain };
        let user = a.known_user.then(|| s.user.as_ref());
        let got = gen::run_now(authenticate(&mut io, "app", user, scram, ITERATIONS));
        prop_assert!(io.io.turns <= 3, "the proxy kept reading: {} turns", io.io.turns);
        match &got {
            Ok(()) => {
                prop_assert!(a.known_user && matches!(a.last, Final::Correct), "let in: {a:?}");
                // The proxy's SASLFinal is queued for the caller to send with its greeting.
                let server_final = sasl_data(&io.wbuf, 12);
                prop_assert!(server_final.is_some_and(|f| client.borrow().verify_server_final(&f).is_ok()), "no valid SASLFinal");
            }
            Err(AuthError::Client(e)) => {
                prop_assert!(e.fatal);
                prop_assert!(["08P01", "28P01", "28000"].contains(&e.code.as_str()), "{e:?}");
            }
            Err(AuthError::Gone(_)) => {}
        }
        if a.known_user && matches!(a.last, Final::Correct) && a.clean() {
            prop_assert!(got.is_ok(), "a correct client was refused: {got:?} {a:?}");
        }
    }

    /// The proxy as SCRAM client of a hostile backend: a server-first message is accepted only
    /// with a nonce extending ours, a salt of 1..=1024 bytes and an iteration count within the
    /// node's limit; a server-final signature is accepted only when it is the right one.
    #[test]
    fn scram_client_accepts_only_sound_server_messages(
        nonce_ext in prop_oneof![Just(String::new()), "[!-+--~]{1,30}"],
        salt in prop_oneof![Just(Vec::new()), gen::bytes(40), Just(vec![7u8; MAX_SALT + 1])],
        iterations in prop_oneof![Just("4096".to_owned()), Just("0".into()), Just("4294967296".into()),
            Just("-1".into()), Just("10000001".into()), any::<u32>().prop_map(|i| i.to_string())],
        extra in prop_oneof![Just(String::new()), Just(",x=1".into()), Just(",,".into())],
        muts in prop_oneof![3 => Just(Vec::new()), 1 => gen::mutations()],
        server_final in prop_oneof![Just(None), gen::bytes(80).prop_map(Some)],
        max_iterations in prop_oneof![Just(4096u32), Just(100_000), Just(u32::MAX)],
    ) {
        let _case = Case::start("scram_client_accepts_only_sound_server_messages");
        let nonce = "abcdefgh";
        let mut client = ScramClient::new(nonce);
        let raw = format!("r={nonce}{nonce_ext},s={},i={iterations}{extra}", STANDARD.encode(&salt));
        let raw = gen::mutate(raw.into_bytes(), &muts);
        let Ok(first) = client.parse_server_first(&raw, max_iterations) else {
            return Ok(());
        };
        prop_assert!(first.nonce.starts_with(nonce) && first.nonce.len() > nonce.len());
        prop_assert!(!first.salt.is_empty() && first.salt.len() <= MAX_SALT);
        prop_assert!(first.iterations >= 1 && first.iterations <= max_iterations);
        // A cheap stand-in for the salted password: only the signature check is under test.
        let salted = [9u8; 32];
        let _ = client.client_final(&raw, &first, salted);
        match server_final {
            Some(garbage) => prop_assert!(client.verify_server_final(&garbage).is_err()),
            None => {
                // The right signature, computed as a server would.
                let bare = format!("n=,r={nonce}");
                let without_proof = format!("c=biws,r={}", first.nonce);
                let auth = format!("{bare},{},{without_proof}", String::from_utf8_lossy(&raw));
                let mac = |k: &[u8], m: &[u8]| {
                    ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, k), m)
                };
                let server_key = mac(&salted, b"Server Key");
                let sig = mac(server_key.as_ref(), auth.as_bytes());
                let message = format!("v={}", STANDARD.encode(sig.as_ref()));
                prop_assert!(client.verify_server_final(message.as_bytes()).is_ok());
                let mut wrong = message.into_bytes();
                let last = wrong.len() - 2;
                wrong[last] ^= 1;
                prop_assert!(client.verify_server_final(&wrong).is_err());
            }
        }
    }
}
