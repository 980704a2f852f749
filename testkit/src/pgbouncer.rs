//! A throwaway PgBouncer in front of a [`Cluster`], for testing how a listener behaves
//! behind a connection pooler.

use std::fs;
use std::io;
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{
    Cluster, HOST, Ids, SUPERUSER, chown_to, command, context, format_url, free_port, new_base_dir,
    run, server_ids,
};

/// PgBouncer's `pool_mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolMode {
    /// A server connection per client for the whole session: LISTEN works.
    Session,
    /// A server connection per transaction: notifications to an idle client are lost.
    Transaction,
}

impl PoolMode {
    fn as_str(self) -> &'static str {
        match self {
            PoolMode::Session => "session",
            PoolMode::Transaction => "transaction",
        }
    }
}

/// A running PgBouncer; dropping it stops it and removes its directory. A watchdog also
/// stops it if the test process dies without dropping it.
#[derive(Debug)]
pub struct PgBouncer {
    port: u16,
    base: PathBuf,
    pid_file: PathBuf,
}

/// `sh -c` script: waits until the test process is gone (or Drop removed the dir), then
/// stops PgBouncer and removes the dir. Positional parameters: test pid, base dir, pid
/// file.
const WATCHDOG_SCRIPT: &str = r#"
pid=$1 base=$2 pidfile=$3
(
    trap '' INT HUP
    while [ -d "/proc/$pid" ] && [ -d "$base" ]; do sleep 1; done
    [ -d "$base" ] || exit 0
    [ -f "$pidfile" ] && kill "$(cat "$pidfile")"
    rm -rf "$base"
) </dev/null >/dev/null 2>&1 &
"#;

impl PgBouncer {
    /// The `pgbouncer` binary, if installed (Debian package `pgbouncer`).
    pub fn binary() -> Option<PathBuf> {
        let on_path = std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("pgbouncer"))
                .find(|p| p.is_file())
        });
        on_path.or_else(|| {
            let fallback = PathBuf::from("/usr/sbin/pgbouncer");
            fallback.is_file().then_some(fallback)
        })
    }

    /// Starts PgBouncer on a free port of 127.0.0.1, in front of `cluster`'s `postgres`
    /// database, with trust authentication and the given pool mode. Returns once it
    /// accepts connections.
    ///
    /// # Errors
    ///
    /// If PgBouncer is not installed, or does not start (the message includes its log).
    pub fn start(cluster: &Cluster, mode: PoolMode) -> io::Result<PgBouncer> {
        let binary = Self::binary().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                "pgbouncer is not installed (apt-get install pgbouncer)",
            )
        })?;
        let ids = server_ids()?;
        let base = new_base_dir(ids)?;
        let pid_file = base.join("pgbouncer.pid");
        let log_file = base.join("pgbouncer.log");
        let bouncer = PgBouncer {
            port: free_port()?,
            base: base.clone(),
            pid_file: pid_file.clone(),
        };
        spawn_watchdog(&base, &pid_file, ids)?;
        let users = base.join("users.txt");
        write_owned(&users, &format!("\"{SUPERUSER}\" \"\"\n"), ids)?;
        let ini = base.join("pgbouncer.ini");
        let config = format!(
            "[databases]\n\
             postgres = host={HOST} port={upstream} dbname=postgres\n\
             [pgbouncer]\n\
             listen_addr = {HOST}\n\
             listen_port = {port}\n\
             unix_socket_dir =\n\
             auth_type = trust\n\
             auth_file = {users}\n\
             pool_mode = {mode}\n\
             default_pool_size = 4\n\
             logfile = {log}\n\
             pidfile = {pid}\n",
            upstream = cluster.port(),
            port = bouncer.port,
            users = users.display(),
            mode = mode.as_str(),
            log = log_file.display(),
            pid = pid_file.display(),
        );
        write_owned(&ini, &config, ids)?;
        let mut cmd = command(&binary, ids);
        cmd.arg("-d").arg(&ini).process_group(0);
        run(&mut cmd, "starting pgbouncer")?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect((HOST, bouncer.port)).is_err() {
            if Instant::now() > deadline {
                let log = fs::read_to_string(&log_file).unwrap_or_default();
                return Err(io::Error::other(format!(
                    "pgbouncer did not accept connections on port {} within 20 s; log:\n{log}",
                    bouncer.port
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(bouncer)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// URL of the cluster's `postgres` database through the pooler, as superuser.
    pub fn url(&self) -> String {
        format_url(self.port, SUPERUSER, None, "postgres")
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        if let Ok(pid) = fs::read_to_string(&self.pid_file) {
            let _ = std::process::Command::new("kill").arg(pid.trim()).status();
        }
        let _ = fs::remove_dir_all(&self.base);
    }
}

fn write_owned(path: &Path, contents: &str, ids: Option<Ids>) -> io::Result<()> {
    fs::write(path, contents)
        .map_err(|e| context(e, format_args!("writing {}", path.display())))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
    chown_to(path, ids)
}

fn spawn_watchdog(base: &Path, pid_file: &Path, ids: Option<Ids>) -> io::Result<()> {
    let mut cmd = command("/bin/sh", ids);
    cmd.arg("-c")
        .arg(WATCHDOG_SCRIPT)
        .arg("pglisten-testkit-pgbouncer-watchdog")
        .arg(std::process::id().to_string())
        .arg(base)
        .arg(pid_file)
        .process_group(0);
    run(&mut cmd, "starting the pgbouncer watchdog").map(drop)
}
