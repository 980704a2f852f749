//! Reaching the server: everything between a connection string and a session that is
//! ready to LISTEN. The worker asks for a [`Session`] and then owns it.
//!
//! - `conninfo`: connection strings as libpq reads them ([`ConnInfo`], the parsed stage).
//! - `credentials`: the [`Credentials`] hook called before every attempt.
//! - `tls`: sslmode and rustls wiring.
//! - `attempt`: one attempt over the hosts and transports ([`ConnectConfig`], the
//!   validated stage).
//! - `session`: a connection set up for listening; its small requests; a clean close.
//! - `diagnose`: driver errors and SQLSTATEs in words; the only code that reads an
//!   error's text.
//! - `driver_config`: a `tokio_postgres::Config` read as the equivalent connection
//!   string (`ListenerBuilder::from_config`).
//! - `hook`: connections opened by your own function (`ListenerBuilder::connect_with`).
//! - `messages`: reading a connection through `poll_message`, and driving a query.
//! - `tap` and `wire`: pglisten's own reader of notifications under the driver, and
//!   the protocol framing it uses.

mod attempt;
mod conninfo;
mod credentials;
mod diagnose;
mod driver_config;
mod hook;
mod messages;
mod passfile;
mod servicefile;
mod session;
mod tap;
#[cfg(feature = "tls")]
mod tls;
mod wire;

pub(crate) use attempt::{ConnectConfig, UserTlsConfig};
pub(crate) use conninfo::{ConnInfo, env_defaults};
pub use credentials::Credentials;
pub(crate) use credentials::{BoxError, CredentialsHook};
pub(crate) use diagnose::{connection_lost, listen_refused, malformed_notification};
pub(crate) use driver_config::conn_info as conn_info_from_driver;
pub(crate) use hook::{ConnectHook, connect_hook};
pub(crate) use messages::Message;
pub(crate) use session::{
    Session, close_gracefully, listening_channels, not_connected, open_session, send_notification,
    send_notifications,
};
pub(crate) use wire::WireBatch;
