//! The SCRAM-SHA-256 client for backend logins (RFC 5802, RFC 7677), without channel binding.
//! The salted password is kept per salt and iteration count, so PBKDF2 runs once per user and
//! node, not at every login. Owns the message arithmetic only; the login loop does the I/O.
//!
//! The server chooses the iteration count, so a hostile one (anything on the path of a
//! `tls: prefer` node) could make each login cost seconds of CPU: counts above the node's
//! `max_scram_iterations` are refused, and a derivation stops as soon as the login that wanted
//! it is abandoned (its connect timed out).

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ring::{digest, hmac};

/// Iteration counts above this are refused unless the node's `max_scram_iterations` allows
/// more. PostgreSQL's default is 4096 (its `scram_iterations`); this leaves room for servers
/// hardened well beyond it while keeping a login's PBKDF2 well under a second.
pub const DEFAULT_MAX_ITERATIONS: u32 = 100_000;
/// The most `max_scram_iterations` may allow.
pub const MAX_ITERATIONS: u32 = 10_000_000;
/// Iterations between checks of the stop flag (a few hundred microseconds of work).
const STOP_CHECK_EVERY: u32 = 256;

/// Derivations running now (on the blocking pool), for tests that check abandoned ones stop.
pub static RUNNING: AtomicUsize = AtomicUsize::new(0);
/// Salts longer than this are refused (PostgreSQL's are 16 bytes).
pub const MAX_SALT: usize = 1024;
/// Different salts a user's cache keeps (one per node that stores the role separately).
const CACHE_LIMIT: usize = 64;

/// (salt, iterations) → `Hi(password, salt, iterations)`.
type BySalt = HashMap<(Vec<u8>, u32), [u8; 32]>;

/// One user's salted passwords by (salt, iterations). It is as secret as the password, which
/// the same user spec already holds; a reload with a new password builds a new, empty one.
#[derive(Default)]
pub struct SaltedPasswords {
    by_salt: Mutex<BySalt>,
}

impl SaltedPasswords {
    /// The salted password for `salt` and `iterations`, if derived before.
    pub fn get(&self, salt: &[u8], iterations: u32) -> Option<[u8; 32]> {
        self.lock().get(&(salt.to_vec(), iterations)).copied()
    }

    /// Keeps a salted password derived for `salt` and `iterations`.
    pub fn insert(&self, salt: &[u8], iterations: u32, salted: [u8; 32]) {
        let mut map = self.lock();
        if map.len() >= CACHE_LIMIT {
            map.clear();
        }
        map.insert((salt.to_vec(), iterations), salted);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BySalt> {
        self.by_salt.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// `Hi(password, salt, i)`: PBKDF2-HMAC-SHA-256, the password normalized with SASLprep as
/// PostgreSQL does (kept as is if it cannot be).
pub fn salt_password(password: &str, salt: &[u8], iterations: u32) -> [u8; 32] {
    let never = AtomicBool::new(false);
    salt_password_unless_stopped(password, salt, iterations, &never)
        .expect("not stopped: the flag is never set")
}

/// [`salt_password`] that gives up (None) soon after `stop` is set: the caller's login was
/// abandoned, and the work must not go on burning a blocking thread.
pub fn salt_password_unless_stopped(
    password: &str,
    salt: &[u8],
    iterations: u32,
    stop: &AtomicBool,
) -> Option<[u8; 32]> {
    RUNNING.fetch_add(1, Ordering::Relaxed);
    let _done = Finished;
    let normalized = stringprep::saslprep(password).unwrap_or(Cow::Borrowed(password));
    let key = hmac::Key::new(hmac::HMAC_SHA256, normalized.as_bytes());
    let mut first = Vec::with_capacity(salt.len() + 4);
    first.extend_from_slice(salt);
    first.extend_from_slice(&1u32.to_be_bytes());
    let mut u = [0u8; 32];
    u.copy_from_slice(hmac::sign(&key, &first).as_ref());
    let mut out = u;
    for i in 1..iterations {
        if i % STOP_CHECK_EVERY == 0 && stop.load(Ordering::Relaxed) {
            return None;
        }
        let next = hmac::sign(&key, &u);
        u.copy_from_slice(next.as_ref());
        out.iter_mut().zip(u.iter()).for_each(|(o, x)| *o ^= x);
    }
    Some(out)
}

/// Counts a derivation as finished however it ends.
struct Finished;

impl Drop for Finished {
    fn drop(&mut self) {
        RUNNING.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One SCRAM exchange, client side.
pub struct ScramClient {
    client_first_bare: String,
    nonce: String,
    /// After the server-first message: what the server's signature is checked against.
    expect: Option<Expected>,
}

struct Expected {
    salted: [u8; 32],
    auth_message: String,
}

/// What the server-first message says.
#[derive(Debug, PartialEq, Eq)]
pub struct ServerFirst {
    pub nonce: String,
    pub salt: Vec<u8>,
    pub iterations: u32,
}

impl ScramClient {
    /// Starts an exchange with `nonce` (printable, no commas). PostgreSQL takes the user from
    /// the startup packet, so the SCRAM user name is empty.
    pub fn new(nonce: &str) -> ScramClient {
        ScramClient::with_user("", nonce)
    }

    fn with_user(user: &str, nonce: &str) -> ScramClient {
        ScramClient {
            client_first_bare: format!("n={user},r={nonce}"),
            nonce: nonce.to_owned(),
            expect: None,
        }
    }

    /// The client-first message (no channel binding: `n,,`).
    pub fn client_first(&self) -> Vec<u8> {
        format!("n,,{}", self.client_first_bare).into_bytes()
    }

    /// Reads the server-first message; iteration counts above `max_iterations` are refused.
    pub fn parse_server_first(
        &self,
        message: &[u8],
        max_iterations: u32,
    ) -> Result<ServerFirst, String> {
        if self.expect.is_some() {
            return Err("a second server-first message".into());
        }
        let text = std::str::from_utf8(message).map_err(|_| "server-first is not UTF-8")?;
        let mut fields = text.split(',');
        let mut field = |name: &str| {
            fields
                .next()
                .and_then(|f| f.strip_prefix(name))
                .ok_or_else(|| format!("server-first lacks {name}"))
        };
        let nonce = field("r=")?.to_owned();
        let salt = STANDARD
            .decode(field("s=")?)
            .map_err(|e| format!("bad salt: {e}"))?;
        let iterations: u32 = field("i=")?
            .parse()
            .map_err(|_| "bad iteration count".to_owned())?;
        if !nonce.starts_with(&self.nonce) || nonce.len() == self.nonce.len() {
            return Err("the server's nonce does not extend ours".into());
        }
        if salt.is_empty() || salt.len() > MAX_SALT {
            return Err(format!(
                "salt of {} bytes is outside 1..={MAX_SALT}",
                salt.len()
            ));
        }
        if iterations == 0 || iterations > max_iterations {
            return Err(format!(
                "iteration count {iterations} is outside 1..={max_iterations} (the node's max_scram_iterations)"
            ));
        }
        Ok(ServerFirst {
            nonce,
            salt,
            iterations,
        })
    }

    /// The client-final message for `server_first` (its raw text and parsed form), proving
    /// knowledge of `salted`, the salted password for its salt and iteration count.
    pub fn client_final(
        &mut self,
        server_first_raw: &[u8],
        server_first: &ServerFirst,
        salted: [u8; 32],
    ) -> Vec<u8> {
        let without_proof = format!("c=biws,r={}", server_first.nonce);
        let auth_message = format!(
            "{},{},{}",
            self.client_first_bare,
            String::from_utf8_lossy(server_first_raw),
            without_proof
        );
        let client_key = mac(&salted, b"Client Key");
        let stored_key = digest::digest(&digest::SHA256, &client_key);
        let signature = mac(stored_key.as_ref(), auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(signature.iter())
            .map(|(k, s)| k ^ s)
            .collect();
        self.expect = Some(Expected {
            salted,
            auth_message,
        });
        format!("{without_proof},p={}", STANDARD.encode(proof)).into_bytes()
    }

    /// Checks the server-final message: the server must prove it knows the password too.
    pub fn verify_server_final(&self, message: &[u8]) -> Result<(), String> {
        let expect = self
            .expect
            .as_ref()
            .ok_or("server-final before client-final")?;
        let text = std::str::from_utf8(message).map_err(|_| "server-final is not UTF-8")?;
        if let Some(e) = text.strip_prefix("e=") {
            return Err(format!("server reports: {e}"));
        }
        let given = text
            .split(',')
            .next()
            .and_then(|v| v.strip_prefix("v="))
            .ok_or("server-final lacks v=")?;
        let given = STANDARD
            .decode(given)
            .map_err(|e| format!("bad server signature: {e}"))?;
        let server_key = mac(&expect.salted, b"Server Key");
        let key = hmac::Key::new(hmac::HMAC_SHA256, &server_key);
        hmac::verify(&key, expect.auth_message.as_bytes(), &given)
            .map_err(|_| "the server's signature does not match".to_owned())
    }
}

fn mac(key: &[u8], message: &[u8]) -> [u8; 32] {
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), message);
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7677, section 3: user "user", password "pencil".
    const CLIENT_NONCE: &str = "rOprNGfwEbeRWgbNEkqO";
    const SERVER_FIRST: &str =
        "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    const CLIENT_FINAL: &str = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    const SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

    #[test]
    fn the_rfc_7677_exchange() {
        let mut c = ScramClient::with_user("user", CLIENT_NONCE);
        assert_eq!(c.client_first(), b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
        let first = c
            .parse_server_first(SERVER_FIRST.as_bytes(), DEFAULT_MAX_ITERATIONS)
            .unwrap();
        assert_eq!(first.iterations, 4096);
        let salted = salt_password("pencil", &first.salt, first.iterations);
        let fin = c.client_final(SERVER_FIRST.as_bytes(), &first, salted);
        assert_eq!(String::from_utf8(fin).unwrap(), CLIENT_FINAL);
        assert_eq!(c.verify_server_final(SERVER_FINAL.as_bytes()), Ok(()));
        assert!(c
            .verify_server_final(b"v=AAAATRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
            .is_err());
        assert!(c
            .verify_server_final(b"e=invalid-proof")
            .unwrap_err()
            .contains("invalid-proof"));
    }

    #[test]
    fn hostile_server_first_messages_are_refused() {
        let c = ScramClient::new(CLIENT_NONCE);
        for (message, want) in [
            ("r=someoneelse,s=AAAA,i=4096", "nonce"),
            ("r=rOprNGfwEbeRWgbNEkqO,s=AAAA,i=4096", "nonce"),
            ("r=rOprNGfwEbeRWgbNEkqOx,s=AAAA,i=100000000", "iteration"),
            (
                "r=rOprNGfwEbeRWgbNEkqOx,s=AAAA,i=100001",
                "max_scram_iterations",
            ),
            ("r=rOprNGfwEbeRWgbNEkqOx,s=,i=4096", "salt"),
            ("r=rOprNGfwEbeRWgbNEkqOx,s=AAAA,i=0", "iteration"),
            ("r=rOprNGfwEbeRWgbNEkqOx,s=!!,i=4096", "salt"),
            ("r=rOprNGfwEbeRWgbNEkqOx,i=4096", "s="),
            ("", "r="),
        ] {
            let err = c
                .parse_server_first(message.as_bytes(), DEFAULT_MAX_ITERATIONS)
                .unwrap_err();
            assert!(err.contains(want), "{message}: {err}");
        }
        assert!(c
            .parse_server_first(&[0xff, 0xfe], DEFAULT_MAX_ITERATIONS)
            .is_err());
        assert!(
            c.parse_server_first(
                b"r=rOprNGfwEbeRWgbNEkqOx,s=AAAA,i=100001",
                DEFAULT_MAX_ITERATIONS + 1
            )
            .is_ok(),
            "a node may allow more"
        );
        assert!(
            c.verify_server_final(b"v=AAAA").is_err(),
            "before client-final"
        );
    }

    #[test]
    fn salted_passwords_are_kept_per_salt_and_iteration_count() {
        let cache = SaltedPasswords::default();
        assert_eq!(cache.get(b"a", 4096), None);
        cache.insert(b"a", 4096, [1; 32]);
        cache.insert(b"b", 4096, [2; 32]);
        assert_eq!(cache.get(b"a", 4096), Some([1; 32]));
        assert_eq!(cache.get(b"b", 4096), Some([2; 32]));
        assert_eq!(
            cache.get(b"b", 10),
            None,
            "another iteration count is another key"
        );
        for i in 0..100u32 {
            cache.insert(&i.to_be_bytes(), 4096, [3; 32]);
        }
        assert!(cache.lock().len() <= CACHE_LIMIT);
    }

    #[test]
    fn a_second_server_first_is_refused() {
        let mut c = ScramClient::with_user("user", CLIENT_NONCE);
        let first = c
            .parse_server_first(SERVER_FIRST.as_bytes(), DEFAULT_MAX_ITERATIONS)
            .unwrap();
        c.client_final(SERVER_FIRST.as_bytes(), &first, [0; 32]);
        assert!(c
            .parse_server_first(SERVER_FIRST.as_bytes(), DEFAULT_MAX_ITERATIONS)
            .is_err());
    }

    #[test]
    fn the_derivation_matches_postgresql_s_including_saslprep() {
        for password in ["pencil", "I\u{00AD}X", "\u{2168}", "pass word", ""] {
            for iterations in [1, 2, 255, 256, 257, 4096] {
                let ours = salt_password(password, b"salt", iterations);
                let theirs = pgwire::api::auth::sasl::scram::gen_salted_password(
                    password,
                    b"salt",
                    iterations as usize,
                );
                assert_eq!(
                    ours.as_slice(),
                    &theirs[..32],
                    "{password:?} i={iterations}"
                );
            }
        }
    }

    #[test]
    fn a_stopped_derivation_gives_up_quickly() {
        let stop = AtomicBool::new(true);
        let started = std::time::Instant::now();
        assert_eq!(
            salt_password_unless_stopped("pw", b"salt", u32::MAX, &stop),
            None
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let work = std::thread::spawn(move || {
            salt_password_unless_stopped("pw", b"salt", u32::MAX, &flag)
        });
        std::thread::sleep(std::time::Duration::from_millis(50));
        stop.store(true, Ordering::Relaxed);
        let started = std::time::Instant::now();
        assert_eq!(work.join().unwrap(), None);
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
    }
}
