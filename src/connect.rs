//! Establishing one connection: the connection string, the transport, authentication.
//!
//! Everything about *reaching* the server lives here (TLS, failover and fresh
//! credentials plug in here); the worker only asks for an established connection and
//! then owns it.

use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::task::Poll;

use futures::stream::{Stream, StreamExt};
use tokio_postgres::{AsyncMessage, Client};

use crate::error::{Error, ErrorKind, Result};

/// The connection's messages (notifications, notices), read through `poll_message`.
pub(crate) type MessageStream =
    Pin<Box<dyn Stream<Item = Result<AsyncMessage, tokio_postgres::Error>> + Send>>;

/// Where and how to connect; parsed once, used for every attempt.
#[derive(Clone)]
pub(crate) struct ConnectSpec {
    pg: tokio_postgres::Config,
    target: String,
}

/// A connected, authenticated session, not yet set up for listening.
pub(crate) struct Established {
    pub(crate) client: Client,
    pub(crate) messages: MessageStream,
}

impl ConnectSpec {
    /// Parses a URL (`postgres://...`) or key=value connection string.
    pub(crate) fn parse(url: &str) -> Result<Self> {
        let mut pg = tokio_postgres::Config::from_str(url).map_err(|e| {
            Error::with_source(
                ErrorKind::Config,
                format!(
                    "invalid connection string ({e}): expected a URL like \
                     postgres://user@host/db or key=value pairs like \"host=db user=app\""
                ),
                e,
            )
        })?;
        if pg.get_application_name().is_none() {
            pg.application_name("pglisten");
        }
        Ok(ConnectSpec {
            target: describe_target(&pg),
            pg,
        })
    }

    /// Sets TCP keepalives and `TCP_USER_TIMEOUT` to agree with the heartbeat, unless
    /// the connection string chose its own.
    pub(crate) fn set_tcp_keepalive(&mut self, keepalive: crate::heartbeat::TcpKeepalive) {
        const DRIVER_DEFAULT_IDLE: std::time::Duration =
            std::time::Duration::from_secs(2 * 60 * 60);
        if !self.pg.get_keepalives() {
            return; // keepalives=0 in the connection string
        }
        if self.pg.get_keepalives_idle() == DRIVER_DEFAULT_IDLE {
            self.pg.keepalives_idle(keepalive.idle);
        }
        if self.pg.get_keepalives_interval().is_none() {
            self.pg.keepalives_interval(keepalive.interval);
        }
        if self.pg.get_keepalives_retries().is_none() {
            self.pg.keepalives_retries(keepalive.retries);
        }
        if self.pg.get_tcp_user_timeout().is_none() {
            self.pg.tcp_user_timeout(keepalive.user_timeout);
        }
    }

    /// Where this connects, for messages: hosts, ports, database and user; no secrets.
    pub(crate) fn target(&self) -> &str {
        &self.target
    }

    /// One attempt: connect and authenticate.
    pub(crate) async fn connect(&self) -> Result<Established> {
        let (client, mut connection) =
            self.pg.connect(tokio_postgres::NoTls).await.map_err(|e| {
                Error::connect_failed(&format!("could not connect to {}", self.target), e)
            })?;
        let messages: MessageStream = Box::pin(futures::stream::poll_fn(move |cx| {
            connection.poll_message(cx)
        }));
        Ok(Established { client, messages })
    }
}

/// Describes where a config points, without its password.
fn describe_target(pg: &tokio_postgres::Config) -> String {
    use tokio_postgres::config::Host;
    let ports = pg.get_ports();
    let hosts: Vec<String> = pg
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            match host {
                Host::Tcp(name) => format!("{name}:{port}"),
                #[cfg(unix)]
                Host::Unix(path) => format!("{}:{port}", path.display()),
            }
        })
        .collect();
    let hosts = if hosts.is_empty() {
        "localhost".to_owned()
    } else {
        hosts.join(",")
    };
    let user = pg.get_user().unwrap_or("(default user)");
    let db = pg.get_dbname().unwrap_or(user);
    format!("{hosts}/{db} as {user}")
}

/// Runs `query` while polling the connection that does its I/O.
pub(crate) async fn drive<T>(
    messages: &mut MessageStream,
    query: impl Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, tokio_postgres::Error> {
    let mut query = std::pin::pin!(query);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(result) = query.as_mut().poll(cx) {
            return Poll::Ready(result);
        }
        loop {
            match messages.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(_))) => continue,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                // The query's own future reports the closed connection.
                Poll::Ready(None) => return query.as_mut().poll(cx),
                Poll::Pending => return Poll::Pending,
            }
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_never_shows_the_password() {
        let spec = ConnectSpec::parse("postgres://app:s3cret@db.example.com:6543/orders").unwrap();
        assert_eq!(spec.target(), "db.example.com:6543/orders as app");
        let spec = ConnectSpec::parse("host=a,b port=1,2 user=u password=s3cret").unwrap();
        assert_eq!(spec.target(), "a:1,b:2/u as u");
    }

    #[test]
    fn keepalive_follows_the_heartbeat_unless_the_string_sets_its_own() {
        use std::time::Duration;
        let keepalive = crate::heartbeat::HeartbeatConfig::default().tcp_keepalive();
        let mut spec = ConnectSpec::parse("host=db user=u").unwrap();
        spec.set_tcp_keepalive(keepalive);
        assert_eq!(spec.pg.get_keepalives_idle(), keepalive.idle);
        assert_eq!(
            spec.pg.get_tcp_user_timeout(),
            Some(&keepalive.user_timeout)
        );
        let mut spec =
            ConnectSpec::parse("host=db user=u keepalives_idle=30 tcp_user_timeout=9").unwrap();
        spec.set_tcp_keepalive(keepalive);
        assert_eq!(spec.pg.get_keepalives_idle(), Duration::from_secs(30));
        assert_eq!(
            spec.pg.get_tcp_user_timeout(),
            Some(&Duration::from_secs(9))
        );
    }

    #[test]
    fn malformed_strings_are_config_errors() {
        for bad in [
            "postgres://app@db:notaport/app",
            "host=db port=",
            "sslmode=bogus",
        ] {
            let err = ConnectSpec::parse(bad).err().unwrap();
            assert_eq!(err.kind(), ErrorKind::Config, "{bad}");
        }
    }
}
