//! No secret in any message (issue 14): property tests that embed a random secret in
//! connection strings, valid and malformed, and in a credentials hook's error, and look
//! for any piece of it in everything pglisten shows: the builder's `Debug`, the error's
//! `Display` and `Debug`, and the listener's `Debug`. And no input makes the parser
//! panic.

use std::time::Duration;

use pglisten::{Listener, TaskPlacement};
use proptest::prelude::*;

/// Every piece of `secret` long enough to identify it (6 characters; the secret's
/// random part is alphanumeric, so shorter pieces could occur in ordinary words).
fn pieces(secret: &str) -> Vec<&str> {
    (0..=secret.len().saturating_sub(6))
        .map(|i| &secret[i..i + 6])
        .collect()
}

fn assert_hidden(secret: &str, shown: &str, input: &str) {
    for piece in pieces(secret) {
        assert!(
            !shown.contains(piece),
            "`{piece}` of the secret is shown for input {input:?}:\n{shown}"
        );
    }
}

/// Builds a listener from `input` without starting anything that outlives the call, and
/// returns everything pglisten shows about it.
fn shown_for(input: &str) -> String {
    let builder = Listener::builder(input).task_placement(TaskPlacement::CallerRuntime);
    let mut shown = format!("{builder:?}\n");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        match builder.connect_lazy() {
            Ok(listener) => shown.push_str(&format!("{listener:?}")),
            Err(error) => shown.push_str(&format!("{error}\n{error:?}")),
        }
    });
    shown
}

/// Where the secret goes: a place in a key=value string or a URL, and a way to damage
/// the string around it.
fn with_secret() -> impl Strategy<Value = (String, String)> {
    let secret = "[A-Za-z0-9]{12,20}".prop_map(|s| format!("Zq{s}"));
    let cut = "[ ?&@/%'=:,#\\\\]{1,2}";
    let junk = "[a-z=&?@/' ]{0,8}";
    (
        secret,
        cut,
        0usize..11,
        junk,
        any::<prop::sample::Index>(),
        any::<prop::sample::Index>(),
    )
        .prop_map(|(secret, cut, form, junk, at, second)| {
            // The secret, possibly cut in two by characters that confuse parsers.
            let split = at.index(secret.len() - 1) + 1;
            let damaged = format!("{}{cut}{}", &secret[..split], &secret[split..]);
            // Or in three: a password with a space and an `=` in it, unquoted.
            let (a, rest) = secret.split_at(split);
            let (b, c) = rest.split_at(second.index(rest.len().max(1)));
            let input = match form {
                0 => format!("host=db user=app password={secret} {junk}"),
                1 => format!("host=db user=app password={damaged} dbname=app"),
                2 => format!("password='{damaged}' {junk} user=app"),
                3 => format!("postgres://app:{secret}@db/app?{junk}"),
                4 => format!("postgres://app:{damaged}@db/app"),
                5 => format!("postgres://app@db/app?password={damaged}&sslmode=disable"),
                6 => format!("postgresql://app:{damaged}/x@db:5432/app"),
                7 => format!("host=db password={a} {b}={c} user=app"),
                8 => format!("postgres://app@db/app?password={a}&{b}={c}"),
                9 => format!("postgres://app@db/app?password={a}&{b}{c}"),
                _ => format!("{junk} password = {damaged} {junk}"),
            };
            (secret, input)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn no_piece_of_a_password_is_ever_shown((secret, input) in with_secret()) {
        let shown = shown_for(&input);
        assert_hidden(&secret, &shown, &input);
    }

    #[test]
    fn no_input_makes_the_parser_panic(input in ".{0,80}") {
        let _ = shown_for(&input);
    }

    #[test]
    fn no_structured_input_makes_the_parser_panic(
        input in "(postgres(ql)?://)?[a-z:@/?&=%'\\[\\], 0-9.\\\\-]{0,60}"
    ) {
        let _ = shown_for(&input);
    }
}

#[test]
fn a_credentials_hook_error_is_never_shown() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for secret in ["ZqTokenAbc123456789", "Zq9f8e7d6c5b4a3210"] {
        runtime.block_on(async {
            let token = secret.to_owned();
            let error = Listener::builder("postgres://app@127.0.0.1:1/app")
                .connect_timeout(Duration::from_secs(2))
                .credentials(move || {
                    let token = token.clone();
                    async move { Err::<String, _>(format!("the token service refused {token}")) }
                })
                .connect()
                .await
                .unwrap_err();
            let shown = format!("{error}\n{error:?}");
            assert_hidden(secret, &shown, "credentials hook");
            // The application's own reporter can still reach it, as the source's source.
            let mut chain = String::new();
            let mut cause: Option<&dyn std::error::Error> = Some(&error);
            while let Some(e) = cause {
                chain.push_str(&format!("{e}\n"));
                cause = e.source();
            }
            assert!(chain.contains(secret), "{chain}");
        });
    }
}
