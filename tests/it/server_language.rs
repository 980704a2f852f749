//! pglisten decides nothing by the server's message text, which the server translates
//! (`lc_messages`): against a server that speaks German, every error has the same kind
//! and the same message as against one that speaks English, while the server's own
//! words (in `source()`) differ.
//!
//! Needs a German locale on the machine (`.ci/run` makes one with `localedef`); without
//! one the test says so and passes, except under CI, where it fails. Server binaries
//! from `$PGLISTEN_PG_BIN` without translations (the npm builds) are skipped the same way.

use pglisten::{ErrorKind, Listener};
use pglisten_testkit::Cluster;

use crate::support::blocking;

const GERMAN: &str = "de_DE.UTF-8";

fn has_german_locale() -> bool {
    std::process::Command::new("locale")
        .arg("-a")
        .output()
        .map(|out| {
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .any(|l| l.eq_ignore_ascii_case("de_DE.utf8") || l == GERMAN)
        })
        .unwrap_or(false)
}

/// A cluster with a password user, a user pg_hba.conf rejects, and `lc_messages`.
async fn cluster(lc_messages: &'static str) -> Cluster {
    blocking(move || {
        Cluster::builder()
            .setting("lc_messages", lc_messages)
            .hba(&[
                "local all all trust",
                "host all app 127.0.0.1/32 scram-sha-256",
                "host all nobody 127.0.0.1/32 reject",
                "host all all 127.0.0.1/32 trust",
            ])
            .init_sql("CREATE ROLE app LOGIN PASSWORD 'right'; CREATE ROLE nobody LOGIN")
            .start()
    })
    .await
    .expect("a throwaway cluster")
}

/// What each failing connection gives: kind, Display (with the port made neutral), and
/// the server's own message.
async fn failures(cluster: &Cluster) -> Vec<(ErrorKind, String, String)> {
    let port = cluster.port().to_string();
    let cases = [
        cluster.url_with("app", Some("wrong"), "postgres") + "?sslmode=disable",
        cluster.url_with("nobody", None, "postgres") + "?sslmode=disable",
        cluster.url_with("postgres", None, "no_such_database") + "?sslmode=disable",
    ];
    let mut out = Vec::new();
    for url in cases {
        let error = Listener::connect(&url).await.expect_err(&url);
        let server_said = error
            .as_db_error()
            .map(|db| db.message().to_owned())
            .unwrap_or_else(|| panic!("a server error behind {error:?}"));
        out.push((
            error.kind(),
            error.to_string().replace(&port, "PORT"),
            server_said,
        ));
    }
    out
}

#[tokio::test]
async fn errors_read_the_same_whatever_language_the_server_speaks() {
    if !has_german_locale() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must provide the {GERMAN} locale (.ci/run runs localedef)"
        );
        crate::support::skipped(
            "errors_read_the_same_whatever_language_the_server_speaks",
            &format!("no {GERMAN} locale on this machine (localedef -i de_DE -f UTF-8 {GERMAN})"),
        );
        return;
    }
    let english = cluster("C").await;
    let german = cluster(GERMAN).await;
    let in_english = failures(&english).await;
    let in_german = failures(&german).await;
    let expected_kinds = [
        ErrorKind::Authentication,
        ErrorKind::Authentication,
        ErrorKind::Connect,
    ];
    let translated = in_english
        .iter()
        .zip(&in_german)
        .any(|((_, _, said_en), (_, _, said_de))| said_en != said_de);
    if !translated && let Some(bin) = std::env::var_os(pglisten_testkit::PG_BIN_ENV) {
        // The npm builds `.ci/postgres.sh` installs ship no message translations; the
        // system's server (which CI tests this with) does.
        crate::support::skipped(
            "errors_read_the_same_whatever_language_the_server_speaks",
            &format!(
                "the server binaries in {} have no translations",
                std::path::Path::new(&bin).display()
            ),
        );
        return;
    }
    for (i, ((kind_en, shown_en, said_en), (kind_de, shown_de, said_de))) in
        in_english.iter().zip(&in_german).enumerate()
    {
        assert_ne!(
            said_en, said_de,
            "case {i}: the server did not translate its message, so this test shows nothing"
        );
        assert_eq!(*kind_en, expected_kinds[i], "case {i}: {shown_en}");
        assert_eq!(kind_en, kind_de, "case {i}: {shown_en} / {shown_de}");
        assert_eq!(shown_en, shown_de, "case {i}");
        assert!(!shown_de.contains(said_de.as_str()), "case {i}: {shown_de}");
    }
    // The rejected plain connection still gets the hint that TLS may be wanted.
    assert!(
        in_german[1].1.contains("sslmode=require"),
        "{}",
        in_german[1].1
    );
}
