//! Fuzz target: the configuration loader (`Config::from_yaml`: YAML, `${VAR}` expansion,
//! validation) with a fixed environment, and `config::expand` itself.
//!
//! Input: the file's text (lossily UTF-8, as `check-config` would never get further with
//! invalid UTF-8). The seed to start from is the shipped example (README, "Fuzzing").
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgmeridian::config::{expand, Config};

/// What `${APP_PASSWORD}` expands to: never quoted in a problem.
const SECRET: &str = "Zq9-env-secret";

fn env(name: &str) -> Option<String> {
    match name {
        "APP_PASSWORD" => Some(SECRET.into()),
        "REGION" => Some("eu-west".into()),
        _ => None,
    }
}

/// Whether `${APP_PASSWORD}` can only have reached password fields: each mention of it is a
/// whole `password: "${APP_PASSWORD}"` line, and nothing could carry it into another field (no
/// block or single-quoted scalars that span lines, no escapes, anchors or aliases).
fn secret_only_in_passwords(text: &str) -> bool {
    let mentions = text.matches("APP_PASSWORD").count();
    let lines = text
        .lines()
        .filter(|l| l.trim_start() == "password: \"${APP_PASSWORD}\"")
        .count();
    mentions == lines && !text.contains(['|', '>', '\'', '\\', '&', '*', '!', '%'])
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match Config::from_yaml(&text, &env) {
        Ok(_) => {}
        Err(problems) => {
            assert!(!problems.is_empty());
            if secret_only_in_passwords(&text) {
                for p in &problems {
                    assert!(
                        !p.message.contains(SECRET) && !p.path.contains(SECRET),
                        "the environment's password is quoted: {p:?}"
                    );
                }
            }
        }
    }
    // `$${` is how a literal `${` is written, for any text.
    let escaped = text.replace("${", "$${");
    assert_eq!(expand(&escaped, &|_| None).as_deref(), Ok(&*text));
    if let Err(e) = expand(&text, &env) {
        assert!(!e.describe_secret(&text).contains(SECRET));
    }
});
