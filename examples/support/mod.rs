//! Not part of what you copy: where the examples get a database. With `DATABASE_URL`
//! set they use it; otherwise they start a throwaway PostgreSQL (through pglisten's
//! test kit, which needs the server binaries, `initdb` and `pg_ctl`) that lives as long
//! as the returned [`Database`]. Everything else in the examples uses only pglisten and
//! tokio-postgres, as your code would.

/// A database for an example to use, and its URL.
pub struct Database {
    url: String,
    // Stops the throwaway server when dropped (nothing when DATABASE_URL was given).
    _server: pglisten_testkit::ExampleDatabase,
}

impl Database {
    pub fn url(&self) -> &str {
        &self.url
    }
}

/// `DATABASE_URL`, or a throwaway server started for this run.
pub async fn database() -> Result<Database, Box<dyn std::error::Error>> {
    let server =
        tokio::task::spawn_blocking(pglisten_testkit::ExampleDatabase::from_env_or_start).await??;
    Ok(Database {
        url: server.url().to_owned(),
        _server: server,
    })
}
