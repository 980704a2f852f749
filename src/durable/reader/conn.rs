//! The reader's connection and its prepared statements (per journal schema).

use std::collections::HashMap;
use std::sync::Arc;

use futures::stream::StreamExt;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, Statement};
use tracing::debug;

use super::super::journal::{Journal, failed};
use crate::config::ListenerConfig;
use crate::error::Result;

pub(super) struct Conn {
    pub(super) client: Arc<Client>,
    driver: tokio::task::JoinHandle<()>,
    statements: HashMap<Arc<str>, Prepared>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

#[derive(Clone)]
pub(super) struct Prepared {
    pub(super) start: Statement,
    pub(super) read: Statement,
}

impl Conn {
    /// Connects as the listener does (same hosts, TLS, credentials and timeouts).
    pub(super) async fn open(config: &ListenerConfig) -> Result<Conn> {
        let established = config.connect.connect().await?;
        let mut messages = established.messages;
        let driver = tokio::spawn(async move {
            while let Some(message) = messages.next().await {
                if message.is_err() {
                    break;
                }
            }
        });
        let client = Arc::new(established.client);
        // Never cut off while idle (PostgreSQL 14+; older servers have no such setting),
        // and no JIT compilation: reads are short, compiling them costs more than it saves.
        let _ = client.batch_execute("SET idle_session_timeout = 0").await;
        let _ = client.batch_execute("SET jit = off").await;
        debug!(host = %established.host, "durable reader connected");
        Ok(Conn {
            client,
            driver,
            statements: HashMap::new(),
        })
    }

    /// Forgets the prepared statements (they are prepared again when next needed).
    pub(super) fn forget_statements(&mut self) {
        self.statements.clear();
    }

    /// The statements of `journal`'s schema, prepared once per connection.
    pub(super) async fn prepared(&mut self, journal: &Journal) -> Result<Prepared> {
        if let Some(prepared) = self.statements.get(journal.schema()) {
            return Ok(prepared.clone());
        }
        let sql = journal.sql();
        let start = self
            .client
            .prepare_typed(&sql.start, &[Type::TEXT])
            .await
            .map_err(|e| failed("preparing the journal's statements", e))?;
        let read = self
            .client
            .prepare_typed(
                &sql.read,
                &[Type::TEXT, Type::TEXT, Type::INT8, Type::INT8, Type::INT8],
            )
            .await
            .map_err(|e| failed("preparing the journal's statements", e))?;
        let prepared = Prepared { start, read };
        self.statements
            .insert(Arc::from(journal.schema()), prepared.clone());
        Ok(prepared)
    }
}
