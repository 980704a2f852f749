//! The example's table, `live.items`, and the one way it is changed: [`apply`], which
//! publishes every changed row in the same transaction.

use pglisten::durable;
use pglisten::tokio_postgres::{Client, Transaction};

use super::{BoxError, CHANNEL};

/// The table, its version stamp, and the journal (installed separately).
const SCHEMA: &str = "
    SELECT pg_advisory_xact_lock(hashtext('pglisten.examples.live'));
    CREATE SCHEMA IF NOT EXISTS live;
    CREATE SEQUENCE IF NOT EXISTS live.versions;
    CREATE TABLE IF NOT EXISTS live.items (
        id integer PRIMARY KEY,
        name text NOT NULL,
        qty integer NOT NULL,
        version bigint NOT NULL DEFAULT 0);
    -- BEFORE row triggers run once the row is locked: a later writer of a row always
    -- takes a larger version than the one it waited for.
    CREATE OR REPLACE FUNCTION live.stamp() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        NEW.version := nextval('live.versions');
        RETURN NEW;
    END $$;
    DROP TRIGGER IF EXISTS stamp ON live.items;
    CREATE TRIGGER stamp BEFORE INSERT OR UPDATE ON live.items
        FOR EACH ROW EXECUTE FUNCTION live.stamp();
";

const UPSERT: &str = "
    INSERT INTO live.items AS i (id, name, qty) VALUES ($1, $2, $3)
    ON CONFLICT (id) DO UPDATE SET name = excluded.name, qty = excluded.qty
    RETURNING json_build_object('id', i.id, 'name', i.name, 'qty', i.qty,
        'version', i.version, 'xid', pg_current_xact_id()::text)::text";

const DELETE: &str = "
    DELETE FROM live.items WHERE id = $1
    RETURNING json_build_object('id', id, 'deleted', true,
        'version', nextval('live.versions'), 'xid', pg_current_xact_id()::text)::text";

/// One statement, so one snapshot for the rows and for `pg_current_snapshot()`.
pub const SNAPSHOT: &str = "
    SELECT pg_current_snapshot()::text,
           pg_snapshot_xmin(pg_current_snapshot())::text,
           coalesce((SELECT json_agg(json_build_object('id', id, 'name', name, 'qty', qty,
                                                       'version', version) ORDER BY id)
                     FROM live.items), '[]')::text";

/// A change to one row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Insert or update row `id`.
    Set { id: i32, name: String, qty: i32 },
    /// Delete row `id` (nothing is published if there is none).
    Delete { id: i32 },
}

/// Creates the table and installs the durable journal (idempotent).
pub async fn setup(client: &Client) -> Result<(), BoxError> {
    durable::install(client).await?;
    let tx_sql = format!("BEGIN; {SCHEMA} COMMIT;");
    client.batch_execute(&tx_sql).await?;
    Ok(())
}

/// Makes `changes` in one transaction and publishes each changed row, durably and as a
/// plain notification; both are delivered if and only if the transaction commits.
pub async fn apply(client: &mut Client, changes: &[Change]) -> Result<(), BoxError> {
    let tx = client.transaction().await?;
    apply_in(&tx, changes).await?;
    tx.commit().await?;
    Ok(())
}

/// [`apply`] inside a transaction of the caller's (published if it commits).
pub async fn apply_in(tx: &Transaction<'_>, changes: &[Change]) -> Result<(), BoxError> {
    for change in changes {
        let rows = match change {
            Change::Set { id, name, qty } => tx.query(UPSERT, &[id, name, qty]).await?,
            Change::Delete { id } => tx.query(DELETE, &[id]).await?,
        };
        for row in rows {
            let payload: String = row.get(0);
            durable::publish(tx, CHANNEL, &payload).await?;
            pglisten::notify(tx, CHANNEL, &payload).await?;
        }
    }
    Ok(())
}
