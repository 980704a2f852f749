//! A `tokio_postgres::Config` the application already has (deadpool-postgres's, say),
//! read into the same [`ConnInfo`] a connection string gives: each setting is written
//! as the libpq key it stands for and checked by the connection string's own rules, so
//! both ways behave alike. Pure.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio_postgres::config::{
    ChannelBinding, Host, LoadBalanceHosts, SslMode, SslNegotiation, TargetSessionAttrs,
};

use super::conninfo::{ConnInfo, build};
use crate::error::{Error, ErrorKind, Result};

/// Reads `config` as the equivalent connection string.
pub(crate) fn conn_info(config: &tokio_postgres::Config) -> Result<ConnInfo> {
    build(params(config)?)
}

/// The libpq keys and values `config` stands for.
fn params(config: &tokio_postgres::Config) -> Result<BTreeMap<String, String>> {
    let mut params = BTreeMap::new();
    let mut set = |key: &str, value: String| {
        params.insert(key.to_owned(), value);
    };
    if !config.get_hosts().is_empty() {
        let mut hosts = Vec::new();
        for host in config.get_hosts() {
            hosts.push(match host {
                Host::Tcp(name) => name.clone(),
                Host::Unix(path) => path.to_str().map(str::to_owned).ok_or_else(|| {
                    config_error(
                        "a Unix socket directory of the tokio_postgres::Config is not UTF-8",
                    )
                })?,
            });
        }
        if hosts.iter().any(|h| h.contains(',')) {
            return Err(config_error(
                "a host of the tokio_postgres::Config contains a comma, which no host name can",
            ));
        }
        set("host", hosts.join(","));
    }
    if !config.get_hostaddrs().is_empty() {
        let addrs: Vec<String> = config
            .get_hostaddrs()
            .iter()
            .map(ToString::to_string)
            .collect();
        set("hostaddr", addrs.join(","));
    }
    if !config.get_ports().is_empty() {
        let ports: Vec<String> = config.get_ports().iter().map(ToString::to_string).collect();
        set("port", ports.join(","));
    }
    if let Some(user) = config.get_user() {
        set("user", user.to_owned());
    }
    if let Some(password) = config.get_password() {
        let password = std::str::from_utf8(password)
            .map_err(|_| config_error("the password of the tokio_postgres::Config is not UTF-8"))?;
        set("password", password.to_owned());
    }
    if let Some(dbname) = config.get_dbname() {
        set("dbname", dbname.to_owned());
    }
    if let Some(options) = config.get_options() {
        set("options", options.to_owned());
    }
    if let Some(name) = config.get_application_name() {
        set("application_name", name.to_owned());
    }
    set(
        "sslmode",
        match config.get_ssl_mode() {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            // A mode added to the driver later: the strictest the driver knows.
            _ => "require",
        }
        .to_owned(),
    );
    if config.get_ssl_negotiation() == SslNegotiation::Direct {
        set("sslnegotiation", "direct".to_owned());
    }
    if let Some(timeout) = config.get_connect_timeout() {
        set("connect_timeout", whole_seconds(*timeout).to_string());
    }
    if let Some(timeout) = config.get_tcp_user_timeout() {
        set("tcp_user_timeout", timeout.as_millis().max(1).to_string());
    }
    set(
        "keepalives",
        if config.get_keepalives() { "1" } else { "0" }.to_owned(),
    );
    set(
        "keepalives_idle",
        whole_seconds(config.get_keepalives_idle()).to_string(),
    );
    if let Some(interval) = config.get_keepalives_interval() {
        set("keepalives_interval", whole_seconds(interval).to_string());
    }
    if let Some(retries) = config.get_keepalives_retries() {
        set("keepalives_count", retries.to_string());
    }
    set(
        "target_session_attrs",
        match config.get_target_session_attrs() {
            TargetSessionAttrs::Any => "any",
            TargetSessionAttrs::ReadWrite => "read-write",
            // Refused by the connection string's rules, with why.
            TargetSessionAttrs::ReadOnly => "read-only",
            _ => "unknown",
        }
        .to_owned(),
    );
    set(
        "channel_binding",
        match config.get_channel_binding() {
            ChannelBinding::Disable => "disable",
            ChannelBinding::Prefer => "prefer",
            ChannelBinding::Require => "require",
            _ => "require",
        }
        .to_owned(),
    );
    if config.get_load_balance_hosts() == LoadBalanceHosts::Random {
        set("load_balance_hosts", "random".to_owned());
    }
    Ok(params)
}

/// Seconds, rounded up (a bound of 1.5 s must not become 1 s, nor 0.5 s "no bound").
fn whole_seconds(duration: Duration) -> u64 {
    duration.as_secs() + u64::from(duration.subsec_nanos() > 0)
}

fn config_error(message: &str) -> Error {
    Error::new(ErrorKind::Config, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connect::conninfo::{HostTimeout, SslMode as Mode};

    fn read(config: &tokio_postgres::Config) -> ConnInfo {
        conn_info(config).expect("a valid configuration")
    }

    #[test]
    fn reads_what_the_equivalent_connection_string_says() {
        let text = "host=db1,db2 port=5433,5434 user=app password='s3 cret' dbname=orders \
                    application_name=worker sslmode=require connect_timeout=7 \
                    load_balance_hosts=random";
        let config: tokio_postgres::Config = text.parse().unwrap();
        let from_config = read(&config);
        let from_string = ConnInfo::parse(text, &[]).unwrap();
        assert_eq!(from_config.hosts, from_string.hosts);
        assert_eq!(from_config.sslmode, Mode::Require);
        assert_eq!(from_config.host_timeout, from_string.host_timeout);
        assert_eq!(
            from_config.host_timeout,
            HostTimeout::Bound(Duration::from_secs(7))
        );
        assert!(from_config.random_order);
        assert_eq!(from_config.base.get_user(), Some("app"));
        assert_eq!(from_config.base.get_password(), Some(&b"s3 cret"[..]));
        assert_eq!(from_config.base.get_dbname(), Some("orders"));
        assert_eq!(from_config.base.get_application_name(), Some("worker"));
        assert_eq!(from_config.describe(), from_string.describe());
    }

    #[test]
    fn defaults_are_the_drivers() {
        let mut config = tokio_postgres::Config::new();
        config.host("db").user("app");
        let info = read(&config);
        assert_eq!(info.sslmode, Mode::Prefer);
        assert_eq!(info.host_timeout, HostTimeout::Unset);
        assert_eq!(info.describe(), "db:5432/app as app");
        assert_eq!(info.base.get_application_name(), Some("pglisten"));
        // Keepalives as the driver's default, so the heartbeat's can replace them.
        assert!(info.base.get_keepalives());
        assert_eq!(
            info.base.get_keepalives_idle(),
            tokio_postgres::Config::new().get_keepalives_idle()
        );
    }

    #[test]
    fn unix_sockets_and_addresses_are_kept() {
        let mut config = tokio_postgres::Config::new();
        config
            .host_path("/var/run/postgresql")
            .host("db.example.com")
            .hostaddr("10.0.0.1".parse().unwrap())
            .hostaddr("10.0.0.2".parse().unwrap())
            .user("app");
        let info = read(&config);
        assert_eq!(info.hosts.len(), 2);
        assert_eq!(info.hosts[0].host.as_deref(), Some("/var/run/postgresql"));
        assert_eq!(info.hosts[1].hostaddr, Some("10.0.0.2".parse().unwrap()));
    }

    #[test]
    fn what_cannot_work_is_refused_with_why() {
        let mut config = tokio_postgres::Config::new();
        config
            .host("db")
            .user("app")
            .target_session_attrs(TargetSessionAttrs::ReadOnly);
        let err = conn_info(&config).err().unwrap();
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(err.to_string().contains("standby"), "{err}");

        let mut config = tokio_postgres::Config::new();
        config.host("db").user("app").password(vec![0xff, 0xfe]);
        let err = conn_info(&config).err().unwrap();
        assert!(err.to_string().contains("not UTF-8"), "{err}");
    }

    #[test]
    fn a_config_without_a_user_says_where_to_put_one() {
        let mut config = tokio_postgres::Config::new();
        config.host("db");
        let info = read(&config);
        let err =
            crate::connect::ConnectConfig::new(info, None, None, Duration::from_secs(10), true)
                .err()
                .unwrap();
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(err.to_string().contains("config.user"), "{err}");
    }

    #[test]
    fn sub_second_bounds_round_up() {
        assert_eq!(whole_seconds(Duration::from_millis(1500)), 2);
        assert_eq!(whole_seconds(Duration::from_millis(1)), 1);
        assert_eq!(whole_seconds(Duration::from_secs(3)), 3);
        assert_eq!(whole_seconds(Duration::ZERO), 0);
    }
}
