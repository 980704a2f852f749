//! Tests of the whole reading of connection strings.
use super::*;

fn plan(text: &str) -> ConnInfo {
    ConnInfo::parse(text, &[]).unwrap_or_else(|e| panic!("{text}: {e}"))
}

fn err(text: &str) -> Error {
    match ConnInfo::parse(text, &[]) {
        Ok(_) => panic!("{text} should be refused"),
        Err(e) => e,
    }
}

#[test]
fn url_with_everything() {
    let p = plan(
        "postgresql://app:p%40ss@db1.example.com:6543,[::1]:7000,db3/orders%2Fx\
         ?sslmode=verify-full&sslrootcert=/etc/ca.pem&application_name=svc",
    );
    assert_eq!(p.base.get_user(), Some("app"));
    assert_eq!(p.base.get_password(), Some(&b"p@ss"[..]));
    assert_eq!(p.base.get_dbname(), Some("orders/x"));
    assert_eq!(p.base.get_application_name(), Some("svc"));
    assert_eq!(p.sslmode, SslMode::VerifyFull);
    assert_eq!(p.sslrootcert, Some(RootCert::File("/etc/ca.pem".into())));
    let labels: Vec<String> = p.hosts.iter().map(HostEntry::label).collect();
    assert_eq!(labels, ["db1.example.com:6543", "[::1]:7000", "db3:5432"]);
    assert_eq!(
        p.describe(),
        "db1.example.com:6543,[::1]:7000,db3:5432/orders/x as app"
    );
}

#[test]
fn key_values_with_quotes_and_escapes() {
    let p = plan(
        "host=a,b port=1,2 user = 'o\\'brien' password='two words' dbname=x\\ y \
         sslmode=require",
    );
    assert_eq!(p.base.get_user(), Some("o'brien"));
    assert_eq!(p.base.get_password(), Some(&b"two words"[..]));
    assert_eq!(p.base.get_dbname(), Some("x y"));
    assert_eq!(p.sslmode, SslMode::Require);
    assert_eq!(p.hosts.len(), 2);
    assert_eq!(p.hosts[1].label(), "b:2");
}

#[test]
fn default_is_prefer_on_localhost() {
    let p = plan("user=app");
    assert_eq!(p.sslmode, SslMode::Prefer);
    assert_eq!(p.hosts[0].label(), "localhost:5432");
    assert_eq!(p.base.get_application_name(), Some("pglisten"));
}

#[test]
fn direct_tls_needs_a_required_sslmode() {
    for mode in ["disable", "allow", "prefer"] {
        let e = err(&format!("user=u sslnegotiation=direct sslmode={mode}"));
        assert!(e.to_string().contains("sslnegotiation=direct"), "{e}");
    }
    // The default sslmode is prefer.
    err("user=u sslnegotiation=direct");
    for mode in ["require", "verify-ca", "verify-full"] {
        plan(&format!("user=u sslnegotiation=direct sslmode={mode}"));
    }
    plan("user=u sslnegotiation=postgres sslmode=prefer");
}

#[test]
fn every_sslmode_parses() {
    for mode in [
        "disable",
        "allow",
        "prefer",
        "require",
        "verify-ca",
        "verify-full",
    ] {
        assert_eq!(
            plan(&format!("user=u sslmode={mode}")).sslmode.as_str(),
            mode
        );
    }
    let e = err("user=u sslmode=bogus");
    assert_eq!(e.kind(), ErrorKind::Config);
    assert!(e.to_string().contains("sslmode"), "{e}");
}

#[test]
fn system_roots_default_to_verify_full_and_refuse_weaker_modes() {
    assert_eq!(
        plan("user=u sslrootcert=system").sslmode,
        SslMode::VerifyFull
    );
    let e = err("user=u sslrootcert=system sslmode=require");
    assert!(e.to_string().contains("verify-full"), "{e}");
}

#[test]
fn hostaddr_pairs_with_host() {
    let p = plan("host=db.example.com hostaddr=127.0.0.1 port=5433 user=u");
    assert_eq!(p.hosts[0].host.as_deref(), Some("db.example.com"));
    assert_eq!(p.hosts[0].hostaddr, Some("127.0.0.1".parse().unwrap()));
    assert_eq!(p.hosts[0].label(), "db.example.com:5433");
    assert!(
        err("host=a,b hostaddr=127.0.0.1 user=u")
            .to_string()
            .contains("hostaddr")
    );
    assert!(
        err("host=a,b,c port=1,2 user=u")
            .to_string()
            .contains("port")
    );
}

#[test]
fn unsupported_keys_are_named_and_unknown_ones_never_shown() {
    let e = err("user=u sslpassword=x");
    assert_eq!(e.kind(), ErrorKind::Config);
    assert!(e.to_string().contains("`sslpassword`"), "{e}");
    assert!(e.to_string().contains("not supported"), "{e}");
    // An unknown word may be part of a secret: never shown, but a typo gets a hint.
    let e = err("postgres://u@h/db?frobnicate=1");
    assert!(!e.to_string().contains("frobnicate"), "{e}");
    let e = err("user=u sslmdoe=require");
    assert!(!e.to_string().contains("sslmdoe"), "{e}");
    assert!(e.to_string().contains("did you mean `sslmode`"), "{e}");
}

#[test]
fn a_url_password_may_hold_question_marks_and_ampersands() {
    let p = plan("postgres://app:pa?ss&word@db/app?sslmode=disable");
    assert_eq!(p.base.get_password(), Some(&b"pa?ss&word"[..]));
    assert_eq!(p.base.get_dbname(), Some("app"));
    assert_eq!(p.sslmode, SslMode::Disable);
    // A `/` before the `@`: libpq reads no user there, and so the `@` is refused.
    let e = err("postgres://app:1234/secretpart@db/app");
    assert!(!e.to_string().contains("secretpart"), "{e}");
}

#[test]
fn target_session_attrs() {
    plan("user=u target_session_attrs=primary");
    plan("user=u target_session_attrs=any");
    plan("user=u target_session_attrs=read-write");
    let e = err("user=u target_session_attrs=standby");
    assert!(e.to_string().contains("standby"), "{e}");
}

#[test]
fn driver_keys_are_checked_by_the_driver() {
    let p = plan("user=u channel_binding=require keepalives_idle=30 connect_timeout=1");
    assert_eq!(
        p.base.get_channel_binding(),
        tokio_postgres::config::ChannelBinding::Require
    );
    assert_eq!(p.host_timeout, HostTimeout::Bound(Duration::from_secs(2)));
    let e = err("user=u channel_binding=maybe");
    assert!(e.to_string().contains("channel_binding"), "{e}");
}

#[test]
fn tcp_user_timeout_is_in_milliseconds_as_in_libpq() {
    let p = plan("user=u tcp_user_timeout=1500");
    assert_eq!(
        p.base.get_tcp_user_timeout(),
        Some(&Duration::from_millis(1500))
    );
    assert_eq!(
        plan("user=u tcp_user_timeout=0")
            .base
            .get_tcp_user_timeout(),
        None
    );
    assert_eq!(
        err("user=u tcp_user_timeout=soon").kind(),
        ErrorKind::Config
    );
}

#[test]
fn client_certificate_needs_both_files() {
    assert!(err("user=u sslcert=/c").to_string().contains("sslkey"));
    assert!(err("user=u sslkey=/k").to_string().contains("sslcert"));
    let p = plan("user=u sslcert=/c sslkey=/k");
    assert_eq!(p.sslcert, Some(PathBuf::from("/c")));
}

#[test]
fn jdbc_ssl_true_means_require() {
    assert_eq!(plan("postgres://u@h/db?ssl=true").sslmode, SslMode::Require);
}

#[test]
fn environment_fills_only_what_is_missing() {
    let env = |var: &str| match var {
        "PGHOST" => Some("envhost".to_owned()),
        "PGPORT" => Some("6000".to_owned()),
        "PGUSER" => Some("envuser".to_owned()),
        "PGPASSWORD" => Some("envpass".to_owned()),
        "PGSSLMODE" => Some("verify-ca".to_owned()),
        "PGSSLROOTCERT" => Some("/ca.pem".to_owned()),
        "PGAPPNAME" => Some("envapp".to_owned()),
        "PGCONNECT_TIMEOUT" => Some("7".to_owned()),
        "PGDATABASE" => Some(String::new()), // empty: ignored
        _ => None,
    };
    let defaults = env_defaults(env);
    let p = ConnInfo::parse("postgres://urluser@urlhost/db", &defaults).unwrap();
    assert_eq!(p.base.get_user(), Some("urluser"));
    assert_eq!(p.base.get_password(), Some(&b"envpass"[..]));
    assert_eq!(p.hosts[0].label(), "urlhost:6000");
    assert_eq!(p.sslmode, SslMode::VerifyCa);
    assert_eq!(p.base.get_application_name(), Some("envapp"));
    assert_eq!(p.host_timeout, HostTimeout::Bound(Duration::from_secs(7)));
    let p = ConnInfo::parse("", &defaults).unwrap();
    assert_eq!(p.describe(), "envhost:6000/envuser as envuser");
}

#[test]
fn harmless_libpq_values_are_accepted_and_the_others_named() {
    for ok in [
        "gssencmode=disable",
        "gssencmode=prefer",
        "sslcompression=0",
        "sslcompression=1",
        "client_encoding=UTF8",
        "client_encoding=utf-8",
        "client_encoding=auto",
        "sslcertmode=disable",
        "sslcertmode=allow",
        "ssl_min_protocol_version=TLSv1.2",
        "ssl_max_protocol_version=TLSv1.3",
    ] {
        plan(&format!("user=u {ok}"));
    }
    for (bad, named) in [
        ("gssencmode=require", "gssencmode"),
        ("client_encoding=LATIN1", "client_encoding"),
        ("sslcertmode=require", "sslcertmode"),
        (
            "ssl_max_protocol_version=TLSv1.1",
            "ssl_max_protocol_version",
        ),
        (
            "ssl_min_protocol_version=TLSv1.3 ssl_max_protocol_version=TLSv1.2",
            "above",
        ),
        ("sslkeylogfile=/tmp/keys", "libpq 16 to 18"),
        ("min_protocol_version=3.2", "libpq 16 to 18"),
    ] {
        let e = err(&format!("user=u {bad}"));
        assert!(e.to_string().contains(named), "{bad}: {e}");
    }
    let versions = |text: &str| plan(&format!("user=u {text}")).tls_versions;
    assert_eq!(versions(""), TlsVersions::ANY);
    assert!(!versions("ssl_min_protocol_version=TLSv1.3").tls12);
    assert!(!versions("ssl_max_protocol_version=TLSv1.2").tls13);
    assert_eq!(versions("ssl_min_protocol_version=TLSv1"), TlsVersions::ANY);
}

#[test]
fn the_environments_session_settings_become_startup_options() {
    let defaults = env_defaults(|v| match v {
        "PGTZ" => Some("Europe/Paris".to_owned()),
        "PGDATESTYLE" => Some("ISO, DMY".to_owned()),
        "PGOPTIONS" => Some("-c work_mem=4MB".to_owned()),
        _ => None,
    });
    let p = ConnInfo::parse("user=u", &defaults).unwrap();
    let options = p.base.get_options().unwrap();
    assert!(options.contains("-c work_mem=4MB"), "{options}");
    assert!(options.contains("-c timezone=Europe/Paris"), "{options}");
    assert!(options.contains("-c datestyle=ISO,\\ DMY"), "{options}");
    // Not options of a connection string.
    err("user=u timezone=UTC");
}

#[test]
fn keepalives_count_is_libpqs_name_for_the_probe_count() {
    let p = plan("user=u keepalives_count=7");
    assert_eq!(p.base.get_keepalives_retries(), Some(7));
    let e = err("user=u keepalives_retries=7");
    assert!(e.to_string().contains("keepalives_count"), "{e}");
    let e = err("user=u keepalives_count=many");
    assert!(e.to_string().contains("keepalives_count"), "{e}");
}

#[test]
fn environment_variables_pglisten_cannot_honour_are_refused_by_name() {
    for (var, value) in [
        ("PGREQUIREAUTH", "scram-sha-256"),
        ("PGKRBSRVNAME", "postgres"),
        ("PGMAXPROTOCOLVERSION", "3.2"),
    ] {
        let defaults = env_defaults(|v| (v == var).then(|| value.to_owned()));
        assert_eq!(defaults.len(), 1, "{var} is read");
        let Err(e) = ConnInfo::parse("user=u", &defaults) else {
            panic!("{var} accepted");
        };
        assert!(e.to_string().contains(var), "{e}");
    }
    let defaults = env_defaults(|v| (v == "PGSSLSNI").then(|| "0".to_owned()));
    assert!(!ConnInfo::parse("user=u", &defaults).unwrap().sslsni);
}

#[test]
fn percent_encoding_is_exactly_two_hex_digits_and_never_nul() {
    for bad in [
        "postgres://u@h/db%+1",
        "postgres://u@h/db%-1",
        "postgres://u@h/db% 1",
        "postgres://u@h/db%0",
        "postgres://u@h/d%00b",
        "postgres://u:pa%00ss@h/db",
    ] {
        let e = err(bad);
        assert!(e.to_string().contains("URL"), "{bad}: {e}");
    }
    assert_eq!(plan("postgres://u@h/d%41b").base.get_dbname(), Some("dAb"));
}

#[test]
fn messages_never_show_values() {
    for bad in [
        "postgres://u:s3cr%zzet@h/db",
        "user=u password='s3cret",
        "user=u password=s3cret port=x",
    ] {
        let e = err(bad);
        assert!(!format!("{e} {e:?}").contains("s3cr"), "{bad}: {e:?}");
    }
}

#[test]
fn unix_socket_hosts() {
    let p = plan("host=/var/run/postgresql user=u");
    assert!(p.hosts[0].is_unix_socket());
    let p = plan("postgres://u@%2Ftmp/db");
    assert!(p.hosts[0].is_unix_socket());
}

#[test]
fn keepalive_follows_the_heartbeat_unless_the_string_sets_its_own() {
    use std::time::Duration;
    let keepalive = crate::heartbeat::HeartbeatConfig::default().tcp_keepalive();
    let mut info = ConnInfo::parse("host=db user=u", &[]).unwrap();
    info.set_tcp_keepalive(keepalive);
    assert_eq!(info.base.get_keepalives_idle(), keepalive.idle);
    assert_eq!(
        info.base.get_tcp_user_timeout(),
        Some(&keepalive.user_timeout)
    );
    let mut info = ConnInfo::parse(
        "host=db user=u keepalives_idle=30 tcp_user_timeout=9000",
        &[],
    )
    .unwrap();
    info.set_tcp_keepalive(keepalive);
    assert_eq!(info.base.get_keepalives_idle(), Duration::from_secs(30));
    assert_eq!(
        info.base.get_tcp_user_timeout(),
        Some(&Duration::from_secs(9))
    );
}
