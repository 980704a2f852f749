//! The journal: its tables, and the statements that write them ([`Journal::install`],
//! [`Journal::publish`], [`Journal::prune`]) and that the durable reader runs.

use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::GenericClient;
use tokio_postgres::types::Type;

use crate::channel::{MAX_CHANNEL_BYTES, quote_identifier};
use crate::error::{Error, ErrorKind, Result};
use crate::position::Position;

/// The schema [`install`](super::install), [`publish`](super::publish),
/// [`prune`](super::prune) and [`Listener::subscribe_durable`](crate::Listener::subscribe_durable)
/// use.
///
/// ```
/// assert_eq!(pglisten::durable::DEFAULT_SCHEMA, "pglisten");
/// ```
pub const DEFAULT_SCHEMA: &str = "pglisten";

/// The prefix of the channel a durable channel's wake-up `NOTIFY` is sent on: entries
/// of the durable channel `orders` wake its subscribers through `NOTIFY "pglisten:orders"`
/// with an empty payload.
///
/// ```
/// assert_eq!(pglisten::durable::WAKE_PREFIX, "pglisten:");
/// ```
pub const WAKE_PREFIX: &str = "pglisten:";

/// The longest durable channel name, in bytes: the server's 63-byte limit on channel
/// names, minus [`WAKE_PREFIX`].
///
/// ```
/// assert_eq!(pglisten::durable::MAX_DURABLE_CHANNEL_BYTES, 54);
/// ```
pub const MAX_DURABLE_CHANNEL_BYTES: usize = MAX_CHANNEL_BYTES - WAKE_PREFIX.len();

/// The version of the journal's tables this release creates and reads.
pub(crate) const SCHEMA_VERSION: i32 = 1;

/// The wake-up channel of durable channel `name`, after checking the name.
pub(crate) fn wake_channel(name: &str) -> Result<String> {
    validate_durable_channel(name)?;
    Ok(format!("{WAKE_PREFIX}{name}"))
}

fn validate_durable_channel(name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::new(
            ErrorKind::InvalidChannel,
            format!(
                "durable channel name is empty; give a name of 1 to {MAX_DURABLE_CHANNEL_BYTES} bytes"
            ),
        ));
    }
    if name.contains('\0') {
        return Err(Error::new(
            ErrorKind::InvalidChannel,
            format!(
                "durable channel name {name:?} contains a NUL byte, which PostgreSQL cannot store"
            ),
        ));
    }
    if name.len() > MAX_DURABLE_CHANNEL_BYTES {
        return Err(Error::new(
            ErrorKind::InvalidChannel,
            format!(
                "durable channel name {name:?} is {} bytes long; durable names may have at most \
                 {MAX_DURABLE_CHANNEL_BYTES} bytes, since their wake-up channel adds the \
                 {:?} prefix to PostgreSQL's 63-byte limit",
                name.len(),
                WAKE_PREFIX
            ),
        ));
    }
    Ok(())
}

/// A journal of durable channels in one schema: install it once, publish entries into
/// it, prune old ones. The free functions [`install`](super::install),
/// [`publish`](super::publish) and [`prune`](super::prune) use the schema
/// [`DEFAULT_SCHEMA`]; make a `Journal` for another.
///
/// ```no_run
/// use pglisten::durable::Journal;
///
/// # async fn run(client: &pglisten::tokio_postgres::Client) -> pglisten::Result<()> {
/// let journal = Journal::new("events");
/// journal.install(client).await?;
/// let position = journal.publish(client, "orders", r#"{"id": 42}"#).await?;
/// println!("published at {position}");
/// # Ok(()) }
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Journal {
    schema: Arc<str>,
    sql: Arc<Sql>,
}

/// The statements of one schema, written once.
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct Sql {
    pub(crate) install: String,
    pub(crate) publish: String,
    pub(crate) prune: String,
    pub(crate) start: String,
    pub(crate) read: String,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("schema", &self.schema)
            .finish()
    }
}

impl Default for Journal {
    /// The journal in [`DEFAULT_SCHEMA`] (its statements are written once per process).
    fn default() -> Self {
        static DEFAULT: std::sync::OnceLock<Journal> = std::sync::OnceLock::new();
        DEFAULT.get_or_init(|| Journal::new(DEFAULT_SCHEMA)).clone()
    }
}

impl Journal {
    /// The journal in schema `schema` (used exactly as given: quoted as an identifier,
    /// so case is kept). Nothing is checked or created until [`install`](Journal::install).
    ///
    /// ```
    /// let journal = pglisten::durable::Journal::new("app_events");
    /// assert_eq!(journal.schema(), "app_events");
    /// ```
    pub fn new(schema: &str) -> Self {
        let s = quote_identifier(schema);
        let sql = Sql {
            install: format!(
                "SELECT pg_advisory_xact_lock(hashtext('pglisten.durable.install'));
                 CREATE SCHEMA IF NOT EXISTS {s};
                 CREATE TABLE IF NOT EXISTS {s}.meta (
                     singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
                     version integer NOT NULL,
                     system_identifier bigint NOT NULL);
                 CREATE TABLE IF NOT EXISTS {s}.journal (
                     seq bigint GENERATED ALWAYS AS IDENTITY,
                     xid xid8 NOT NULL DEFAULT pg_current_xact_id(),
                     channel text NOT NULL,
                     payload text NOT NULL,
                     pid integer NOT NULL DEFAULT pg_backend_pid(),
                     created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
                     PRIMARY KEY (channel, xid, seq));
                 CREATE TABLE IF NOT EXISTS {s}.horizon (
                     channel text PRIMARY KEY,
                     xid xid8 NOT NULL,
                     seq bigint NOT NULL);
                 CREATE OR REPLACE FUNCTION {s}.publish(p_channel text, p_payload text,
                                                        OUT o_xid text, OUT o_seq bigint)
                 LANGUAGE plpgsql AS $pglisten_publish$
                 BEGIN
                     INSERT INTO {s}.journal (channel, payload) VALUES (p_channel, p_payload)
                         RETURNING xid::text, seq INTO o_xid, o_seq;
                     PERFORM pg_notify('{WAKE_PREFIX}' || p_channel, '');
                 END $pglisten_publish$;
                 INSERT INTO {s}.meta (version, system_identifier)
                     SELECT {SCHEMA_VERSION}, system_identifier FROM pg_control_system()
                     ON CONFLICT (singleton) DO UPDATE
                     SET system_identifier = excluded.system_identifier;
                 DO $pglisten_install$ BEGIN
                     IF (SELECT version FROM {s}.meta) > {SCHEMA_VERSION} THEN
                         RAISE EXCEPTION 'journal version is newer than this pglisten'
                             USING ERRCODE = 'object_not_in_prerequisite_state';
                     END IF;
                 END $pglisten_install$;"
            ),
            // A function: its plan is prepared once per session, where a statement
            // sent as text would be parsed and planned on every call.
            publish: format!("SELECT o_xid, o_seq FROM {s}.publish($1, $2)"),
            // One statement: the snapshot that decides what is below the watermark is
            // the one the delete sees.
            prune: format!(
                "WITH snap AS MATERIALIZED (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS x),
                 young AS (SELECT xid, seq FROM {s}.journal
                           WHERE created_at >= clock_timestamp() - make_interval(secs => $1)
                           ORDER BY xid, seq LIMIT 1),
                 gone AS (DELETE FROM {s}.journal j USING snap
                          WHERE j.xid < snap.x
                            AND NOT EXISTS (SELECT 1 FROM young y
                                            WHERE (y.xid, y.seq) <= (j.xid, j.seq))
                          RETURNING j.channel, j.xid, j.seq),
                 last AS (SELECT DISTINCT ON (channel) channel, xid, seq FROM gone
                          ORDER BY channel, xid DESC, seq DESC),
                 saved AS (INSERT INTO {s}.horizon AS h (channel, xid, seq)
                           SELECT channel, xid, seq FROM last
                           ON CONFLICT (channel) DO UPDATE SET xid = excluded.xid, seq = excluded.seq
                           WHERE (h.xid, h.seq) < (excluded.xid, excluded.seq)
                           RETURNING 1)
                 SELECT g.xid::text, g.seq FROM gone g ORDER BY g.xid DESC, g.seq DESC LIMIT 1"
            ),
            // What a subscription needs before it starts: the journal's version and
            // cluster, the watermark, the next transaction id, the channel's horizon.
            start: format!(
                "SELECT m.version,
                        m.system_identifier = (SELECT system_identifier FROM pg_control_system()),
                        pg_snapshot_xmin(pg_current_snapshot())::text,
                        pg_snapshot_xmax(pg_current_snapshot())::text,
                        (SELECT h.xid::text FROM {s}.horizon h WHERE h.channel = $1),
                        (SELECT h.seq FROM {s}.horizon h WHERE h.channel = $1)
                 FROM {s}.meta m"
            ),
            // One statement, so one snapshot: entries below its xmin after the cursor,
            // in delivery order, at most $4 of them and about $5 bytes (the first one
            // always); and with them the watermark, the channel's horizon, and how
            // many entries after the cursor are committed but held back. `head` is
            // materialized so that it runs once, not once per entry; the byte bound is
            // summed over the batch only (after its LIMIT).
            read: format!(
                "WITH snap AS MATERIALIZED (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS x),
                 head AS MATERIALIZED (
                   SELECT snap.x::text AS x,
                          (SELECT h.xid::text FROM {s}.horizon h WHERE h.channel = $1) AS hx,
                          (SELECT h.seq FROM {s}.horizon h WHERE h.channel = $1) AS hs,
                          (SELECT count(*) FROM {s}.journal j
                           WHERE j.channel = $1 AND j.xid >= greatest(snap.x, $2::xid8)
                             AND (j.xid > $2::xid8 OR j.seq > $3)) AS held
                   FROM snap)
                 SELECT head.x, head.hx, head.hs, head.held,
                        e.xid, e.seq, e.pid, e.payload
                 FROM head LEFT JOIN LATERAL (
                   SELECT w.xid, w.seq, w.pid, w.payload FROM (
                     SELECT b.*, sum(octet_length(b.payload)) OVER (ORDER BY b.xid, b.seq)
                                   - octet_length(b.payload) AS before
                     FROM (SELECT j.xid, j.seq, j.pid, j.payload
                           FROM {s}.journal j, snap
                           WHERE j.channel = $1 AND (j.xid, j.seq) > ($2::xid8, $3)
                             AND j.xid < snap.x
                           ORDER BY j.xid, j.seq
                           LIMIT $4) b) w
                   WHERE w.before < $5) e ON true"
            ),
        };
        Journal {
            schema: Arc::from(schema),
            sql: Arc::new(sql),
        }
    }

    /// The schema this journal lives in.
    ///
    /// ```
    /// assert_eq!(pglisten::durable::Journal::default().schema(), "pglisten");
    /// ```
    pub fn schema(&self) -> &str {
        &self.schema
    }

    pub(crate) fn sql(&self) -> &Arc<Sql> {
        &self.sql
    }

    /// Creates the journal's schema and tables if they do not exist, and records the
    /// schema version and the cluster's system identifier (`pg_control_system()`), which
    /// subscriptions check stored positions against. Idempotent and safe to run
    /// concurrently (an advisory lock serializes it), in a transaction of yours or on
    /// its own. Needs PostgreSQL 13 or later (`xid8`).
    ///
    /// After restoring a dump into another cluster, running it again adopts the
    /// journal for the new cluster: positions stored before then can no longer be
    /// told apart, so resume from [`Cursor::Beginning`](super::Cursor::Beginning) or
    /// [`Cursor::Now`](super::Cursor::Now).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Database`] if the server refuses (no right to create the schema, a
    /// server older than 13), [`ErrorKind::ConnectionLost`] if the connection fails, and
    /// [`ErrorKind::Config`] if the journal was made by a newer pglisten.
    ///
    /// ```no_run
    /// # async fn run(client: &pglisten::tokio_postgres::Client) -> pglisten::Result<()> {
    /// pglisten::durable::Journal::new("events").install(client).await?;
    /// # Ok(()) }
    /// ```
    pub async fn install<C>(&self, client: &C) -> Result<()>
    where
        C: GenericClient + Sync,
    {
        client.batch_execute(&self.sql.install).await.map_err(|e| {
            if e.code() == Some(&tokio_postgres::error::SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE)
            {
                newer_journal(&self.schema, None)
            } else {
                failed(
                    &format!("installing the journal in schema {:?}", &*self.schema),
                    e,
                )
            }
        })
    }

    /// Appends an entry to durable channel `channel` and wakes its subscribers, through
    /// any client or transaction of yours. Inside a transaction the entry is delivered
    /// only if the transaction commits, at the place of the transaction's id, whenever
    /// it commits. Returns the entry's position.
    ///
    /// The payload has no limit beyond PostgreSQL's (1 GB for a `text` value); wake-ups
    /// are `NOTIFY` with an empty payload on the channel [`WAKE_PREFIX`] + `channel`, and
    /// identical wake-ups of one transaction are sent once.
    ///
    /// # Errors
    ///
    /// [`ErrorKind::InvalidChannel`] for an empty name, a name with NUL or longer than
    /// [`MAX_DURABLE_CHANNEL_BYTES`]; [`ErrorKind::InvalidPayload`] for a payload with
    /// NUL (both before the server is asked); [`ErrorKind::Database`] if the server
    /// refuses (for example when the journal is not installed).
    ///
    /// ```no_run
    /// # async fn run(client: &mut pglisten::tokio_postgres::Client) -> pglisten::Result<()> {
    /// let journal = pglisten::durable::Journal::new("events");
    /// let tx = client.transaction().await?;
    /// tx.execute("UPDATE orders SET status = 'paid' WHERE id = 42", &[]).await?;
    /// journal.publish(&tx, "orders", r#"{"id": 42, "status": "paid"}"#).await?;
    /// tx.commit().await?;
    /// # Ok(()) }
    /// ```
    pub async fn publish<C>(&self, client: &C, channel: &str, payload: &str) -> Result<Position>
    where
        C: GenericClient + Sync,
    {
        validate_durable_channel(channel)?;
        if payload.contains('\0') {
            return Err(Error::new(
                ErrorKind::InvalidPayload,
                "payload contains a NUL byte, which PostgreSQL text cannot hold",
            ));
        }
        let rows = client
            .query_typed(
                &self.sql.publish,
                &[(&channel, Type::TEXT), (&payload, Type::TEXT)],
            )
            .await
            .map_err(|e| failed(&format!("publishing on durable channel {channel:?}"), e))?;
        let row = rows
            .first()
            .ok_or_else(|| Error::new(ErrorKind::Database, "the journal insert returned no row"))?;
        Ok(Position::new(
            parse_xid(row.get(0))?,
            row.get::<_, i64>(1) as u64,
        ))
    }

    /// Deletes the oldest entries: the longest prefix of the delivery order whose
    /// entries are all below the watermark (no running transaction can add before them)
    /// and older than `older_than`. In the same statement it records, for each channel,
    /// the last position deleted as that channel's horizon; subscriptions whose cursor is
    /// before it then get [`ErrorKind::Pruned`]. Returns the last position deleted
    /// (`None` if nothing was).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`] for an `older_than` above 100 years;
    /// [`ErrorKind::Database`] if the server refuses.
    ///
    /// ```no_run
    /// # async fn run(client: &pglisten::tokio_postgres::Client) -> pglisten::Result<()> {
    /// use std::time::Duration;
    /// let journal = pglisten::durable::Journal::new("events");
    /// if let Some(horizon) = journal.prune(client, Duration::from_secs(7 * 24 * 3600)).await? {
    ///     println!("pruned up to {horizon}");
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn prune<C>(&self, client: &C, older_than: Duration) -> Result<Option<Position>>
    where
        C: GenericClient + Sync,
    {
        const CENTURY: Duration = Duration::from_secs(100 * 366 * 24 * 3600);
        if older_than > CENTURY {
            return Err(Error::new(
                ErrorKind::Config,
                format!(
                    "prune's older_than ({older_than:?}) is above 100 years; give a shorter age"
                ),
            ));
        }
        let seconds = older_than.as_secs_f64();
        let rows = client
            .query_typed(&self.sql.prune, &[(&seconds, Type::FLOAT8)])
            .await
            .map_err(|e| {
                failed(
                    &format!("pruning the journal in schema {:?}", &*self.schema),
                    e,
                )
            })?;
        match rows.first() {
            None => Ok(None),
            Some(row) => Ok(Some(Position::new(
                parse_xid(row.get(0))?,
                row.get::<_, i64>(1) as u64,
            ))),
        }
    }
}

/// An `xid8` column in binary form (8 bytes, big-endian), read without a text
/// conversion on either side: the read returns one per entry.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Xid8(pub(crate) u64);

impl<'a> tokio_postgres::types::FromSql<'a> for Xid8 {
    fn from_sql(
        _: &Type,
        raw: &'a [u8],
    ) -> std::result::Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        let bytes: [u8; 8] = raw
            .try_into()
            .map_err(|_| format!("an xid8 of {} bytes instead of 8", raw.len()))?;
        Ok(Xid8(u64::from_be_bytes(bytes)))
    }

    fn accepts(ty: &Type) -> bool {
        ty.name() == "xid8"
    }
}

/// Reads an `xid8` sent as text.
pub(crate) fn parse_xid(text: &str) -> Result<u64> {
    text.parse().map_err(|_| {
        Error::new(
            ErrorKind::Database,
            format!("the server sent {text:?} as a transaction id"),
        )
    })
}

pub(crate) fn newer_journal(schema: &str, found: Option<i32>) -> Error {
    let found = found.map(|v| format!(" ({v})")).unwrap_or_default();
    Error::new(
        ErrorKind::Config,
        format!(
            "the journal in schema {schema:?} has a version{found} newer than this pglisten \
             knows ({SCHEMA_VERSION}); upgrade pglisten"
        ),
    )
}

/// A statement on the journal failed: the server refused it (with a hint when the
/// journal is not installed) or the connection was lost.
pub(crate) fn failed(what: &str, e: tokio_postgres::Error) -> Error {
    use tokio_postgres::error::SqlState;
    match e.code() {
        Some(code)
            if *code == SqlState::UNDEFINED_TABLE || *code == SqlState::INVALID_SCHEMA_NAME =>
        {
            Error::with_source(
                ErrorKind::Database,
                format!(
                    "{what} failed: the journal is not installed; run pglisten::durable::install \
                     (or Journal::install) once"
                ),
                e,
            )
        }
        Some(code) => Error::with_source(
            ErrorKind::Database,
            format!(
                "{what} failed: the server refused it (SQLSTATE {})",
                code.code()
            ),
            e,
        ),
        None => Error::with_source(
            ErrorKind::ConnectionLost,
            format!("{what} failed: the connection was lost"),
            e,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durable_names_leave_room_for_the_prefix() {
        assert_eq!(wake_channel("orders").unwrap(), "pglisten:orders");
        let longest = "x".repeat(MAX_DURABLE_CHANNEL_BYTES);
        assert_eq!(wake_channel(&longest).unwrap().len(), MAX_CHANNEL_BYTES);
        let e = wake_channel(&format!("{longest}x")).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidChannel);
        assert!(e.to_string().contains("54"), "{e}");
        assert_eq!(
            wake_channel("").unwrap_err().kind(),
            ErrorKind::InvalidChannel
        );
        assert_eq!(
            wake_channel("a\0b").unwrap_err().kind(),
            ErrorKind::InvalidChannel
        );
    }

    #[test]
    fn xid8_binary_form() {
        use tokio_postgres::types::FromSql;
        let xid8 = Type::from_oid(5069).unwrap_or(Type::INT8);
        let raw = 742u64.to_be_bytes();
        assert_eq!(Xid8::from_sql(&xid8, &raw).unwrap().0, 742);
        assert!(Xid8::from_sql(&xid8, &raw[..4]).is_err());
        assert!(!Xid8::accepts(&Type::INT8));
    }

    #[test]
    fn schema_is_quoted() {
        let journal = Journal::new("we\"ird");
        // publish calls the schema's function; the table is named in install.
        assert!(journal.sql().publish.contains("\"we\"\"ird\".publish("));
        assert!(journal.sql().install.contains("\"we\"\"ird\".journal"));
    }
}
