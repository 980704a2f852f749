//! Throwaway PostgreSQL clusters for the integration tests, examples and
//! benchmarks of `pglisten`.
//!
//! Dependencies: std for the clusters; `tokio` for the network-fault helpers
//! [`FaultProxy`] and [`BlackHole`] (see the `proxy` module); `tokio-postgres` for the
//! plain clients [`admin`] and [`raw`]; the optional `tls` feature
//! adds `rcgen` for test certificates (module `tls`). No `unsafe`.
//!
//! Every [`Cluster`] is a real PostgreSQL server started from the installed
//! server binaries (see [`bin_dir`]), listening on `127.0.0.1` on a free port,
//! with its own data directory under [`std::env::temp_dir`]. `initdb` runs once
//! per process into a template directory; each cluster gets a copy of it, so
//! starting a cluster costs a directory copy plus `pg_ctl start`.
//!
//! When the process runs as root, the server binaries run as the `postgres`
//! OS user (PostgreSQL refuses to run as root); otherwise as the current user.
//!
//! Nothing is left behind: dropping a [`Cluster`] stops the server and removes
//! its directory, and a small watchdog process per cluster does the same when
//! the test process exits in any other way (panic, `exit`, Ctrl-C, `SIGKILL`),
//! which also covers the never-dropped [`shared`] server.
//!
//! Everything blocks (it uses `std::process`); from async code either call it
//! directly (it just blocks the thread) or wrap it in `spawn_blocking`.
//!
//! ```no_run
//! let cluster = pglisten_testkit::Cluster::builder()
//!     .setting("work_mem", "8MB")
//!     .init_sql("CREATE ROLE alice LOGIN PASSWORD 'secret'")
//!     .start()?;
//! assert_eq!(cluster.psql("SELECT 1")?.trim(), "1");
//! let url = cluster.url_with("alice", Some("secret"), "postgres");
//! # let _ = url;
//! # Ok::<(), std::io::Error>(())
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod client;
mod proxy;

pub use client::{RawConnection, admin, drive, raw, try_admin};
pub use proxy::{BlackHole, FaultProxy};

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs::{self, DirBuilder, OpenOptions, Permissions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt, chown, lchown, symlink};
use std::os::unix::process::CommandExt;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};

mod pgbouncer;
pub use pgbouncer::{PgBouncer, PoolMode};
mod server;
#[cfg(test)]
use server::has_server_binaries;
use server::psql_path;
pub use server::{PG_BIN_ENV, ServerVersion, bin_dir, server_version};
#[cfg(feature = "tls")]
pub mod tls;

/// Address every cluster listens on.
const HOST: &str = "127.0.0.1";
/// Superuser created by `initdb -U`.
const SUPERUSER: &str = "postgres";
/// Seconds `pg_ctl -w` waits for start/stop.
const PG_CTL_TIMEOUT: &str = "60";
/// How often a start is retried with a new port when the port got taken.
const PORT_ATTEMPTS: u32 = 5;
/// Lines of the server log included in start errors.
const LOG_TAIL_LINES: usize = 40;
/// Never used: the system server lives there.
const SYSTEM_PORT: u16 = 5432;

// ---------------------------------------------------------------------------
// The server user (the binaries are found in `server`)
// ---------------------------------------------------------------------------

/// uid/gid the server binaries run as; `None` means "the current user".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Ids {
    uid: u32,
    gid: u32,
}

fn effective_uid() -> io::Result<u32> {
    let status = fs::read_to_string("/proc/self/status")
        .map_err(|e| context(e, "reading /proc/self/status to find the effective uid"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .and_then(|euid| euid.parse().ok())
        .ok_or_else(|| io::Error::other("no parsable `Uid:` line in /proc/self/status"))
}

/// `Some(postgres user)` when running as root, `None` otherwise.
fn server_ids() -> io::Result<Option<Ids>> {
    if effective_uid()? != 0 {
        return Ok(None);
    }
    let passwd =
        fs::read_to_string("/etc/passwd").map_err(|e| context(e, "reading /etc/passwd"))?;
    for line in passwd.lines() {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() >= 4 && fields[0] == SUPERUSER {
            let (Ok(uid), Ok(gid)) = (fields[2].parse(), fields[3].parse()) else {
                return Err(io::Error::other(format!(
                    "unparsable `postgres` entry in /etc/passwd: {line}"
                )));
            };
            return Ok(Some(Ids { uid, gid }));
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        "running as root, but there is no `postgres` user in /etc/passwd to run the PostgreSQL \
         server as (initdb and pg_ctl refuse to run as root); create it (e.g. \
         `useradd --system postgres`) or run the tests as a non-root user",
    ))
}

// ---------------------------------------------------------------------------
// Small process and file helpers
// ---------------------------------------------------------------------------

fn context(err: io::Error, what: impl std::fmt::Display) -> io::Error {
    io::Error::new(err.kind(), format!("{what}: {err}"))
}

/// A command with a clean environment for PostgreSQL tools: stdin is
/// `/dev/null`, the working directory is `/` (the server user may not be able
/// to read the caller's one), `PG*` variables of the caller are removed, and
/// it runs as `ids` if given.
fn command(program: impl AsRef<OsStr>, ids: Option<Ids>) -> Command {
    let mut cmd = Command::new(program);
    if let Some(ids) = ids {
        cmd.uid(ids.uid).gid(ids.gid);
    }
    cmd.current_dir("/").stdin(Stdio::null());
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PG") {
            cmd.env_remove(key);
        }
    }
    cmd
}

fn describe_output(out: &Output) -> String {
    let mut text = String::new();
    for (name, bytes) in [("stderr", &out.stderr), ("stdout", &out.stdout)] {
        let s = String::from_utf8_lossy(bytes);
        let s = s.trim();
        if !s.is_empty() {
            let _ = write!(text, "\n{name}:\n{s}");
        }
    }
    text
}

/// Runs `cmd` to completion; a spawn failure or non-zero exit is an error
/// naming `what`, the command, and its output.
fn run(cmd: &mut Command, what: &str) -> io::Result<Output> {
    let out = cmd
        .output()
        .map_err(|e| context(e, format_args!("{what}: could not run {cmd:?}")))?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(io::Error::other(format!(
            "{what}: {cmd:?} failed ({}){}",
            out.status,
            describe_output(&out)
        )))
    }
}

fn chown_to(path: &Path, ids: Option<Ids>) -> io::Result<()> {
    match ids {
        Some(ids) => chown(path, Some(ids.uid), Some(ids.gid))
            .map_err(|e| context(e, format_args!("chown {}", path.display()))),
        None => Ok(()),
    }
}

/// Creates `path` with mode 0700, owned by the server user.
fn create_private_dir(path: &Path, ids: Option<Ids>) -> io::Result<()> {
    DirBuilder::new().mode(0o700).create(path)?;
    fs::set_permissions(path, Permissions::from_mode(0o700))
        .map_err(|e| context(e, format_args!("chmod 0700 {}", path.display())))?;
    chown_to(path, ids)
}

/// Recursive copy preserving modes; everything ends up owned by `ids`.
fn copy_tree(src: &Path, dst: &Path, ids: Option<Ids>) -> io::Result<()> {
    let mode = fs::symlink_metadata(src)
        .map_err(|e| context(e, format_args!("stat {}", src.display())))?
        .permissions()
        .mode();
    DirBuilder::new()
        .mode(0o700)
        .create(dst)
        .map_err(|e| context(e, format_args!("mkdir {}", dst.display())))?;
    fs::set_permissions(dst, Permissions::from_mode(mode & 0o7777))?;
    chown_to(dst, ids)?;
    let entries =
        fs::read_dir(src).map_err(|e| context(e, format_args!("reading {}", src.display())))?;
    for entry in entries {
        let entry = entry?;
        let from = entry.path();
        let to = dst.join(entry.file_name());
        let file_type = entry.file_type()?;
        if file_type.is_dir() {
            copy_tree(&from, &to, ids)?;
        } else if file_type.is_symlink() {
            symlink(fs::read_link(&from)?, &to)
                .map_err(|e| context(e, format_args!("symlink {}", to.display())))?;
            if let Some(ids) = ids {
                lchown(&to, Some(ids.uid), Some(ids.gid))?;
            }
        } else {
            fs::copy(&from, &to).map_err(|e| {
                context(
                    e,
                    format_args!("copy {} -> {}", from.display(), to.display()),
                )
            })?;
            chown_to(&to, ids)?;
        }
    }
    Ok(())
}

/// postgresql.conf string literal.
fn conf_quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// `postgres://user[:password]@127.0.0.1:port/dbname`, percent-encoded.
fn format_url(port: u16, user: &str, password: Option<&str>, dbname: &str) -> String {
    let password = password
        .map(|p| format!(":{}", url_encode(p)))
        .unwrap_or_default();
    format!(
        "postgres://{}{password}@{HOST}:{port}/{}",
        url_encode(user),
        url_encode(dbname)
    )
}

/// Returns a port on 127.0.0.1 that was free a moment ago, never 5432 and
/// never one already handed out in this process.
fn free_port() -> io::Result<u16> {
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(PoisonError::into_inner);
    // Keep rejected listeners open so the kernel hands out other ports.
    let mut rejected = Vec::new();
    for _ in 0..100 {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .map_err(|e| context(e, "binding 127.0.0.1:0 to find a free port"))?;
        let port = listener.local_addr()?.port();
        if port != SYSTEM_PORT && handed_out.insert(port) {
            return Ok(port);
        }
        rejected.push(listener);
    }
    Err(io::Error::new(
        io::ErrorKind::AddrNotAvailable,
        "could not find an unused TCP port on 127.0.0.1",
    ))
}

/// The last `lines` lines of `text`.
fn tail(text: &str, lines: usize) -> &str {
    let text = text.trim_end();
    match text.rmatch_indices('\n').nth(lines.saturating_sub(1)) {
        Some((idx, _)) => &text[idx + 1..],
        None => text,
    }
}

// ---------------------------------------------------------------------------
// Watchdog
// ---------------------------------------------------------------------------

/// `sh -c` script; positional parameters: test pid, base dir, data dir,
/// pg_ctl. The outer shell checks that it can see the (alive: it is waiting
/// for us) test process in /proc, then starts the real watchdog in the
/// background with all stdio on /dev/null and exits, so the watchdog is
/// reparented to init and never becomes our zombie. The watchdog waits until
/// the test process is gone (or Drop removed the dir), then stops the server
/// and removes the base dir.
const WATCHDOG_SCRIPT: &str = r#"
pid=$1 base=$2 data=$3 pg_ctl=$4
if [ ! -d "/proc/$pid" ]; then
    echo "watchdog (uid $(id -u)) cannot see /proc/$pid; is /proc mounted with hidepid?" >&2
    exit 1
fi
(
    trap '' INT HUP
    while [ -d "/proc/$pid" ] && [ -d "$base" ]; do sleep 1; done
    [ -d "$base" ] || exit 0
    if [ -f "$data/postmaster.pid" ]; then
        "$pg_ctl" stop -D "$data" -m immediate -w -t 30
    fi
    rm -rf "$base"
) </dev/null >/dev/null 2>&1 &
"#;

/// Starts the cleanup watchdog for `base` (see [`WATCHDOG_SCRIPT`]) as the
/// server user, in its own process group so Ctrl-C of the caller's terminal
/// does not reach it.
fn spawn_watchdog(base: &Path, data: &Path, pg_ctl: &Path, ids: Option<Ids>) -> io::Result<()> {
    let mut cmd = command("/bin/sh", ids);
    cmd.arg("-c")
        .arg(WATCHDOG_SCRIPT)
        .arg("pglisten-testkit-watchdog")
        .arg(std::process::id().to_string())
        .arg(base)
        .arg(data)
        .arg(pg_ctl)
        .process_group(0);
    run(&mut cmd, "starting the cleanup watchdog").map(drop)
}

// ---------------------------------------------------------------------------
// Template (initdb once per process)
// ---------------------------------------------------------------------------

#[derive(Debug)]
struct Template {
    bin: PathBuf,
    data: PathBuf,
    /// postgresql.conf as written by initdb.
    conf: String,
    ids: Option<Ids>,
    version: ServerVersion,
}

fn template() -> io::Result<&'static Template> {
    static TEMPLATE: OnceLock<Template> = OnceLock::new();
    static INIT: Mutex<()> = Mutex::new(());
    if let Some(t) = TEMPLATE.get() {
        return Ok(t);
    }
    // A failed attempt is not cached: the next caller retries.
    let _guard = INIT.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(t) = TEMPLATE.get() {
        return Ok(t);
    }
    let t = create_template()?;
    Ok(TEMPLATE.get_or_init(|| t))
}

fn create_template() -> io::Result<Template> {
    let bin = bin_dir()?;
    let ids = server_ids()?;
    let version = version_of(&bin, ids)?;
    // Straight to stderr, past the test harness's capture: every run says which server
    // it tested.
    let _ = writeln!(
        io::stderr(),
        "pglisten-testkit: PostgreSQL {version} from {}{}",
        bin.display(),
        if std::env::var_os(PG_BIN_ENV).is_some_and(|v| !v.is_empty()) {
            format!(" (${PG_BIN_ENV})")
        } else {
            String::new()
        }
    );
    let base = std::env::temp_dir().join(format!("pglisten-test-{}-template", std::process::id()));
    if fs::symlink_metadata(&base).is_ok() {
        // Left over by an earlier process with our pid, or a failed attempt.
        fs::remove_dir_all(&base)
            .map_err(|e| context(e, format_args!("removing stale {}", base.display())))?;
    }
    create_private_dir(&base, ids)
        .map_err(|e| context(e, format_args!("creating template dir {}", base.display())))?;
    let data = base.join("data");
    let result = spawn_watchdog(&base, &data, &bin.join("pg_ctl"), ids).and_then(|()| {
        let mut cmd = command(bin.join("initdb"), ids);
        cmd.arg("-D").arg(&data).args([
            "-A",
            "trust",
            "-U",
            SUPERUSER,
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C",
        ]);
        run(&mut cmd, "initdb of the template cluster")?;
        let conf_path = data.join("postgresql.conf");
        fs::read_to_string(&conf_path)
            .map_err(|e| context(e, format_args!("reading {}", conf_path.display())))
    });
    match result {
        Ok(conf) => Ok(Template {
            bin,
            data,
            conf,
            ids,
            version,
        }),
        Err(e) => {
            let _ = fs::remove_dir_all(&base);
            Err(e)
        }
    }
}

/// `postgres --version` of the binaries in `bin`, run as the server user (which also
/// shows that user can reach them).
fn version_of(bin: &Path, ids: Option<Ids>) -> io::Result<ServerVersion> {
    let mut cmd = command(bin.join("postgres"), ids);
    cmd.arg("--version");
    let out = run(&mut cmd, "asking the server binaries for their version").map_err(|e| {
        let hint = if ids.is_some() {
            " (the server runs as the `postgres` user: can it reach that directory?)"
        } else {
            ""
        };
        context(e, format_args!("{}{hint}", bin.display()))
    })?;
    let text = String::from_utf8_lossy(&out.stdout);
    ServerVersion::parse(&text).ok_or_else(|| {
        io::Error::other(format!(
            "unexpected `postgres --version` output from {}: {text:?}",
            bin.display()
        ))
    })
}

// ---------------------------------------------------------------------------
// Cluster
// ---------------------------------------------------------------------------

/// How [`Cluster::stop`] shuts the server down (`pg_ctl stop -m ...`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopMode {
    /// `-m fast`: roll back transactions, disconnect clients, checkpoint.
    Fast,
    /// `-m immediate`: kill everything; crash recovery on the next start.
    Immediate,
}

impl StopMode {
    fn as_arg(self) -> &'static str {
        match self {
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        }
    }
}

/// One running throwaway PostgreSQL server.
///
/// Listens on `127.0.0.1:`[`port`](Self::port) and on a unix socket in its
/// own directory; superuser `postgres` with trust authentication unless
/// [`ClusterBuilder::hba`] says otherwise. Dropping it stops the server
/// (`-m immediate`) and deletes its directory.
#[derive(Debug)]
pub struct Cluster {
    /// `<tmp>/pglisten-test-<pid>-<n>`: data dir, log, unix socket.
    base: PathBuf,
    data: PathBuf,
    log: PathBuf,
    port: u16,
    bin: PathBuf,
    ids: Option<Ids>,
    /// Serializes start/stop.
    ops: Mutex<()>,
}

impl Cluster {
    /// Starts a cluster with default settings; same as
    /// `Cluster::builder().start()`.
    ///
    /// # Errors
    ///
    /// See [`ClusterBuilder::start`].
    pub fn start() -> io::Result<Cluster> {
        Self::builder().start()
    }

    /// Returns a builder for a cluster with extra settings, a custom
    /// `pg_hba.conf`, extra files or setup SQL.
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder::default()
    }

    /// TCP port the server listens on (on [`host`](Self::host)); stays the
    /// same across [`stop`](Self::stop) / [`start_again`](Self::start_again).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Host the server listens on: `"127.0.0.1"`.
    pub fn host(&self) -> &str {
        HOST
    }

    /// Connection URL for the superuser:
    /// `postgres://postgres@127.0.0.1:{port}/postgres`.
    pub fn url(&self) -> String {
        self.url_with(SUPERUSER, None, "postgres")
    }

    /// Connection URL for `user` (with optional `password`) and database
    /// `dbname` on this cluster; the parts are percent-encoded.
    pub fn url_with(&self, user: &str, password: Option<&str>, dbname: &str) -> String {
        format_url(self.port, user, password, dbname)
    }

    /// The directory of the server's unix socket (`.s.PGSQL.{port}` in it): the `host` of
    /// a connection string that connects without TCP.
    pub fn socket_dir(&self) -> &Path {
        &self.base
    }

    /// The server's data directory (`PGDATA`).
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// Stops the server with `pg_ctl stop -m fast|immediate -w`. Stopping a
    /// stopped server is a no-op.
    ///
    /// Note: clusters run with `synchronous_commit = off`, so transactions
    /// committed just before a [`StopMode::Immediate`] stop may be lost; use
    /// [`StopMode::Fast`] when the data must survive.
    ///
    /// # Errors
    ///
    /// If `pg_ctl` fails and the server is still running.
    pub fn stop(&self, mode: StopMode) -> io::Result<()> {
        let _guard = self.lock();
        self.stop_locked(mode)
    }

    /// Starts the stopped server again (`pg_ctl start -w`) on the same port
    /// with the same data directory. A no-op if it is running.
    ///
    /// # Errors
    ///
    /// If the server does not come up (e.g. the port got taken meanwhile);
    /// the message includes the tail of the server log.
    pub fn start_again(&self) -> io::Result<()> {
        let _guard = self.lock();
        if self.is_running() {
            return Ok(());
        }
        self.pg_ctl_start().map_err(|(e, _)| e)
    }

    /// [`stop`](Self::stop) with `mode`, then [`start_again`](Self::start_again).
    ///
    /// # Errors
    ///
    /// If either step fails.
    pub fn restart(&self, mode: StopMode) -> io::Result<()> {
        let _guard = self.lock();
        self.stop_locked(mode)?;
        self.pg_ctl_start().map_err(|(e, _)| e)
    }

    /// Whether the server is running (`pg_ctl status`).
    pub fn is_running(&self) -> bool {
        let mut cmd = self.pg_ctl();
        cmd.arg("status").arg("-D").arg(&self.data);
        cmd.output().is_ok_and(|out| out.status.success())
    }

    /// Runs `sql` with `psql -X -A -t -q -w -v ON_ERROR_STOP=1` as superuser
    /// `postgres` on database `postgres`, and returns its stdout (one line
    /// per row, columns separated by `|`; `trim()` it).
    ///
    /// The SQL is fed on stdin, so it may hold several statements (each runs
    /// on its own, so `CREATE DATABASE` works) and psql meta-commands. psql
    /// connects over the cluster's unix socket, so a custom
    /// [`ClusterBuilder::hba`] needs a `local` line for `postgres` (e.g.
    /// `local all postgres trust`) for this to work. Uses the psql of
    /// [`bin_dir`] if present, else `/usr/bin/psql`.
    ///
    /// # Errors
    ///
    /// If psql cannot run or exits non-zero (e.g. an SQL error); the message
    /// includes psql's stderr.
    pub fn psql(&self, sql: &str) -> io::Result<String> {
        let mut cmd = command(psql_path(&self.bin), None);
        cmd.args(["-X", "-A", "-t", "-q", "-w", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.base)
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-U", SUPERUSER, "-d", "postgres"])
            .env("PGCONNECT_TIMEOUT", "10")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .map_err(|e| context(e, format_args!("psql: could not run {cmd:?}")))?;
        // Write from a thread: psql may produce output before it has read all
        // input, and both pipes are finite.
        let writer = child.stdin.take().map(|mut stdin| {
            let sql = sql.to_owned();
            std::thread::spawn(move || stdin.write_all(sql.as_bytes()))
        });
        let out = child
            .wait_with_output()
            .map_err(|e| context(e, format_args!("psql: waiting for {cmd:?}")))?;
        let write_result = match writer.map(|w| w.join()) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(io::Error::other("stdin writer thread panicked")),
            None => Ok(()),
        };
        if !out.status.success() {
            let mut msg = format!(
                "psql on cluster port {} failed ({}): {cmd:?}{}",
                self.port,
                out.status,
                describe_output(&out)
            );
            if String::from_utf8_lossy(&out.stderr).contains("pg_hba.conf") {
                let _ = write!(
                    msg,
                    "\nhint: psql connects as `postgres` over the unix socket in {}; \
                     a custom pg_hba.conf needs e.g. `local all postgres trust`",
                    self.base.display()
                );
            }
            let _ = write!(msg, "\nSQL:\n{}", tail(sql, 20));
            return Err(io::Error::other(msg));
        }
        if let Err(e) = write_result {
            return Err(context(e, "psql: writing the SQL to stdin"));
        }
        String::from_utf8(out.stdout)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("psql output: {e}")))
    }

    fn lock(&self) -> MutexGuard<'_, ()> {
        self.ops.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn pg_ctl(&self) -> Command {
        command(self.bin.join("pg_ctl"), self.ids)
    }

    fn stop_locked(&self, mode: StopMode) -> io::Result<()> {
        if fs::symlink_metadata(self.data.join("postmaster.pid")).is_err() {
            return Ok(()); // not running (or never started)
        }
        let mut cmd = self.pg_ctl();
        cmd.args([
            "stop",
            "-w",
            "-t",
            PG_CTL_TIMEOUT,
            "-m",
            mode.as_arg(),
            "-D",
        ])
        .arg(&self.data);
        match run(&mut cmd, "stopping PostgreSQL") {
            Ok(_) => Ok(()),
            // e.g. a stale postmaster.pid after a crash
            Err(_) if !self.is_running() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `pg_ctl start -w`; on failure returns the error and whether the log
    /// says the port was taken.
    fn pg_ctl_start(&self) -> Result<(), (io::Error, bool)> {
        let log_offset = fs::metadata(&self.log).map_or(0, |m| m.len());
        let mut cmd = self.pg_ctl();
        cmd.args(["start", "-w", "-t", PG_CTL_TIMEOUT, "-D"])
            .arg(&self.data)
            .arg("-l")
            .arg(&self.log);
        let out = cmd.output().map_err(|e| {
            let e = context(
                e,
                format_args!("starting PostgreSQL: could not run {cmd:?}"),
            );
            (e, false)
        })?;
        if out.status.success() {
            return Ok(());
        }
        let log = read_from(&self.log, log_offset);
        let port_taken = log.contains("could not bind") || log.contains("Address already in use");
        let log_tail = tail(&log, LOG_TAIL_LINES);
        let e = io::Error::other(format!(
            "starting PostgreSQL on port {} failed: {cmd:?} exited with {}{}\n\
             --- tail of server log {} ---\n{}",
            self.port,
            out.status,
            describe_output(&out),
            self.log.display(),
            if log_tail.is_empty() {
                "(empty)"
            } else {
                log_tail
            },
        ));
        Err((e, port_taken))
    }

    /// Writes `name` (relative to the data dir) with mode 0600, owned by the
    /// server user; missing parent dirs are created with mode 0700.
    fn write_data_file(&self, name: &str, contents: &[u8]) -> io::Result<()> {
        let rel = Path::new(name);
        let valid = !name.is_empty() && rel.components().all(|c| matches!(c, Component::Normal(_)));
        if !valid {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("file name {name:?} must be a relative path inside the data dir"),
            ));
        }
        let path = self.data.join(rel);
        let mut dir = self.data.clone();
        if let Some(parent) = rel.parent() {
            for part in parent.components() {
                dir.push(part);
                if fs::symlink_metadata(&dir).is_err() {
                    create_private_dir(&dir, self.ids)
                        .map_err(|e| context(e, format_args!("mkdir {}", dir.display())))?;
                }
            }
        }
        let write = || -> io::Result<()> {
            let mut file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&path)?;
            file.write_all(contents)?;
            fs::set_permissions(&path, Permissions::from_mode(0o600))?;
            chown_to(&path, self.ids)
        };
        write().map_err(|e| context(e, format_args!("writing {}", path.display())))
    }

    fn write_conf(&self, template_conf: &str, settings: &[(String, String)]) -> io::Result<()> {
        let mut conf = template_conf.to_owned();
        let socket_dir = conf_quote(&self.base.to_string_lossy());
        let _ = write!(
            conf,
            "\n# ---- pglisten-testkit ----\n\
             listen_addresses = '{HOST}'\n\
             port = {}\n\
             unix_socket_directories = {socket_dir}\n\
             fsync = off\n\
             synchronous_commit = off\n\
             full_page_writes = off\n\
             shared_buffers = 16MB\n\
             max_connections = 100\n\
             logging_collector = off\n\
             password_encryption = 'scram-sha-256'\n",
            self.port
        );
        // password_encryption: the default of 14 and later. 13 stores md5 hashes by
        // default, and a role with an md5 password cannot log in on a `scram-sha-256`
        // line of pg_hba.conf: every server version behaves the same here.
        if !settings.is_empty() {
            conf.push_str("# ---- ClusterBuilder::setting ----\n");
            for (key, value) in settings {
                let _ = writeln!(conf, "{key} = {}", conf_quote(value));
            }
        }
        self.write_data_file("postgresql.conf", conf.as_bytes())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        match self.stop(StopMode::Immediate) {
            Ok(()) => {
                if let Err(e) = fs::remove_dir_all(&self.base)
                    && e.kind() != io::ErrorKind::NotFound
                {
                    eprintln!(
                        "pglisten-testkit: could not remove {}: {e}",
                        self.base.display()
                    );
                }
            }
            // Keep the dir: the watchdog retries when the process exits.
            Err(e) => eprintln!(
                "pglisten-testkit: could not stop the cluster in {} (the watchdog will retry \
                 at process exit): {e}",
                self.base.display()
            ),
        }
    }
}

/// Reads `path` from byte `offset` on, lossily; empty on any error.
fn read_from(path: &Path, offset: u64) -> String {
    let mut bytes = Vec::new();
    if let Ok(mut file) = fs::File::open(path) {
        let _ = file
            .seek(SeekFrom::Start(offset))
            .and_then(|_| file.read_to_end(&mut bytes));
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

// ---------------------------------------------------------------------------
// Builder
// ---------------------------------------------------------------------------

/// Configures a [`Cluster`] before it starts; see [`Cluster::builder`].
#[must_use]
#[derive(Clone, Debug, Default)]
pub struct ClusterBuilder {
    settings: Vec<(String, String)>,
    hba: Option<Vec<String>>,
    files: Vec<(String, Vec<u8>)>,
    init_sql: Vec<String>,
}

impl ClusterBuilder {
    /// Appends `key = 'value'` to `postgresql.conf` (after the testkit's own
    /// settings, so it can override them, e.g. `max_connections`), e.g.
    /// `.setting("ssl", "on")`. The value is quoted and escaped.
    pub fn setting(mut self, key: &str, value: &str) -> Self {
        self.settings.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Replaces `pg_hba.conf` with these lines. The default trusts everyone
    /// on the unix socket and on `127.0.0.1/32` and `::1/128` (all users, all
    /// databases, and replication connections).
    ///
    /// [`Cluster::psql`] connects over the unix socket, so keep e.g.
    /// `local all postgres trust` if you use it. [`init_sql`](Self::init_sql)
    /// always works: with custom lines it runs under the default file, and
    /// the cluster is then restarted with yours.
    pub fn hba(mut self, lines: &[&str]) -> Self {
        self.hba = Some(lines.iter().map(|l| (*l).to_owned()).collect());
        self
    }

    /// Writes a file into the data directory before the first start: a path
    /// relative to the data dir, mode 0600, owned by the server user, e.g.
    /// `server.crt`/`server.key` (with `.setting("ssl", "on")`) or
    /// `standby.signal`. Do not use it for `postgresql.conf` (use
    /// [`setting`](Self::setting)); `pg_hba.conf` written here wins over
    /// [`hba`](Self::hba).
    pub fn file(mut self, name: &str, contents: &[u8]) -> Self {
        self.files.push((name.to_owned(), contents.to_vec()));
        self
    }

    /// SQL run via [`Cluster::psql`] once after the first start, e.g.
    /// `CREATE ROLE`. May be called several times; runs in order.
    pub fn init_sql(mut self, sql: &str) -> Self {
        self.init_sql.push(sql.to_owned());
        self
    }

    /// Creates and starts the cluster (running `initdb` first if this is the
    /// first cluster of the process).
    ///
    /// # Errors
    ///
    /// If the binaries are missing, initdb, copying, starting or `init_sql`
    /// fail (start errors include the tail of the server log), or an input is
    /// invalid (setting keys must be `[A-Za-z0-9_.]+`; values and hba lines
    /// must not contain line breaks; file names must be relative paths).
    /// Nothing is left behind on error.
    pub fn start(self) -> io::Result<Cluster> {
        self.start_inner(None)
    }

    fn validate(&self) -> io::Result<()> {
        let invalid = |msg: String| Err(io::Error::new(io::ErrorKind::InvalidInput, msg));
        let has_break = |s: &str| s.contains(['\n', '\r', '\0']);
        for (key, value) in &self.settings {
            let key_ok = !key.is_empty()
                && key
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
            if !key_ok {
                return invalid(format!("invalid setting name {key:?}"));
            }
            if has_break(value) {
                return invalid(format!("value of setting {key:?} contains a line break"));
            }
        }
        for line in self.hba.iter().flatten() {
            if has_break(line) {
                return invalid(format!("pg_hba.conf line {line:?} contains a line break"));
            }
        }
        Ok(())
    }

    /// `first_port`: try this port first (tests of the port-taken retry).
    fn start_inner(self, first_port: Option<u16>) -> io::Result<Cluster> {
        self.validate()?;
        let tpl = template()?;
        let base = new_base_dir(tpl.ids)?;
        let data = base.join("data");
        let pg_ctl = tpl.bin.join("pg_ctl");
        if let Err(e) = spawn_watchdog(&base, &data, &pg_ctl, tpl.ids) {
            let _ = fs::remove_dir_all(&base);
            return Err(e);
        }
        let mut cluster = Cluster {
            log: base.join("postgres.log"),
            base,
            data,
            port: 0,
            bin: tpl.bin.clone(),
            ids: tpl.ids,
            ops: Mutex::new(()),
        };
        // From here on, dropping `cluster` cleans up on errors.
        copy_tree(&tpl.data, &cluster.data, tpl.ids)
            .map_err(|e| context(e, "copying the template data dir"))?;
        fs::set_permissions(&cluster.data, Permissions::from_mode(0o700))?;

        let default_hba = [
            "local all all trust",
            "host all all 127.0.0.1/32 trust",
            "host all all ::1/128 trust",
            "local replication all trust",
            "host replication all 127.0.0.1/32 trust",
            "host replication all ::1/128 trust",
        ]
        .map(String::from)
        .to_vec();
        // With custom hba lines *and* init_sql, run init_sql under the default
        // file, then restart with the custom one.
        let two_phase = self.hba.is_some() && !self.init_sql.is_empty();
        let first_hba = match &self.hba {
            Some(lines) if !two_phase => lines,
            _ => &default_hba,
        };
        cluster.write_data_file("pg_hba.conf", hba_contents(first_hba).as_bytes())?;
        for (name, contents) in &self.files {
            cluster.write_data_file(name, contents)?;
        }

        let mut next_port = first_port;
        let mut attempt = 1;
        loop {
            cluster.port = match next_port.take() {
                Some(port) => port,
                None => free_port()?,
            };
            cluster.write_conf(&tpl.conf, &self.settings)?;
            match cluster.pg_ctl_start() {
                Ok(()) => break,
                Err((_, true)) if attempt < PORT_ATTEMPTS => attempt += 1,
                Err((e, _)) => return Err(e),
            }
        }

        for sql in &self.init_sql {
            cluster
                .psql(sql)
                .map_err(|e| context(e, "ClusterBuilder::init_sql"))?;
        }
        if two_phase && let Some(lines) = &self.hba {
            cluster.stop(StopMode::Fast)?;
            // Files win over hba(), as documented.
            if !self.files.iter().any(|(name, _)| name == "pg_hba.conf") {
                cluster.write_data_file("pg_hba.conf", hba_contents(lines).as_bytes())?;
            }
            cluster.start_again()?;
        }
        Ok(cluster)
    }
}

fn hba_contents(lines: &[String]) -> String {
    let mut text = String::from("# written by pglisten-testkit\n");
    for line in lines {
        text.push_str(line);
        text.push('\n');
    }
    text
}

/// Creates `<tmp>/pglisten-test-<pid>-<n>` (mode 0700, server user).
fn new_base_dir(ids: Option<Ids>) -> io::Result<PathBuf> {
    static COUNTER: AtomicU64 = AtomicU64::new(1);
    loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("pglisten-test-{}-{n}", std::process::id()));
        match create_private_dir(&dir, ids) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                let _ = fs::remove_dir(&dir);
                return Err(context(e, format_args!("creating {}", dir.display())));
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Shared server
// ---------------------------------------------------------------------------

/// The database an example uses: `$DATABASE_URL` when set (and not empty), otherwise
/// a throwaway [`Cluster`] that lives as long as this value.
#[derive(Debug)]
pub struct ExampleDatabase {
    url: String,
    _cluster: Option<Cluster>,
}

impl ExampleDatabase {
    /// Uses `$DATABASE_URL`, or starts a throwaway server (saying so on stdout).
    /// Blocking: from async code, call it through `tokio::task::spawn_blocking`.
    ///
    /// # Errors
    ///
    /// If no server can be started (see [`Cluster::start`]).
    pub fn from_env_or_start() -> io::Result<ExampleDatabase> {
        match std::env::var("DATABASE_URL") {
            Ok(url) if !url.is_empty() => Ok(ExampleDatabase {
                url,
                _cluster: None,
            }),
            _ => {
                println!("DATABASE_URL is not set: starting a throwaway PostgreSQL...");
                let cluster = Cluster::start()?;
                println!("  server on port {}\n", cluster.port());
                Ok(ExampleDatabase {
                    url: cluster.url(),
                    _cluster: Some(cluster),
                })
            }
        }
    }

    /// Its connection URL.
    pub fn url(&self) -> &str {
        &self.url
    }
}

/// The per-process shared database returned by [`shared`].
#[derive(Debug)]
pub struct SharedDb {
    url: String,
    /// Kept alive for the process; never dropped (the watchdog stops it).
    cluster: Option<Cluster>,
}

impl SharedDb {
    /// Connection URL (superuser on a testkit cluster, or `$DATABASE_URL`).
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// `true` if the URL came from `$DATABASE_URL` and no server was started.
    pub fn is_external(&self) -> bool {
        self.cluster.is_none()
    }
}

/// Returns the one shared database of this process, for tests that do not
/// stop, restart or otherwise disturb the server (use distinct channel and
/// table names per test: tests run in parallel).
///
/// If `$DATABASE_URL` is set (and not empty) it is used and nothing is
/// started. Otherwise a [`Cluster`] is started on the first call and kept
/// until the process exits.
///
/// # Panics
///
/// If the server cannot be started (the error is cached; every later call
/// panics with the same message). Use [`try_shared`] to get the error.
pub fn shared() -> &'static SharedDb {
    match try_shared() {
        Ok(db) => db,
        Err(e) => panic!("pglisten-testkit: could not start the shared PostgreSQL server: {e}"),
    }
}

/// Like [`shared`], but returns the start error instead of panicking.
///
/// # Errors
///
/// If the shared server could not be started (by this or an earlier call).
pub fn try_shared() -> io::Result<&'static SharedDb> {
    static SHARED: OnceLock<Result<SharedDb, (io::ErrorKind, String)>> = OnceLock::new();
    let result = SHARED.get_or_init(|| {
        if let Some(url) = std::env::var_os("DATABASE_URL").filter(|u| !u.is_empty()) {
            return match url.into_string() {
                Ok(url) => Ok(SharedDb { url, cluster: None }),
                Err(_) => Err((
                    io::ErrorKind::InvalidInput,
                    "DATABASE_URL is not valid UTF-8".to_owned(),
                )),
            };
        }
        match Cluster::start() {
            Ok(cluster) => Ok(SharedDb {
                url: cluster.url(),
                cluster: Some(cluster),
            }),
            Err(e) => Err((e.kind(), e.to_string())),
        }
    });
    match result {
        Ok(db) => Ok(db),
        Err((kind, msg)) => Err(io::Error::new(*kind, msg.clone())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpStream;
    use std::os::unix::fs::MetadataExt;
    use std::time::{Duration, Instant};

    /// psql over TCP with a URL (checks the URLs and the hba).
    fn psql_url(url: &str, sql: &str) -> io::Result<String> {
        let mut cmd = command(psql_path(&bin_dir()?), None);
        cmd.args(["-X", "-A", "-t", "-q", "-w", "-v", "ON_ERROR_STOP=1", "-d"])
            .arg(url)
            .arg("-c")
            .arg(sql);
        let out = run(&mut cmd, "psql")?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    fn q(cluster: &Cluster, sql: &str) -> String {
        cluster.psql(sql).unwrap().trim().to_owned()
    }

    /// Bounded poll.
    fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if f() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn refuses(port: u16) -> bool {
        TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err()
    }

    #[test]
    fn bin_dir_has_server_binaries() {
        let bin = bin_dir().unwrap();
        assert!(has_server_binaries(&bin), "{}", bin.display());
        assert_eq!(bin, fs::canonicalize(&bin).unwrap());
    }

    #[test]
    fn the_reported_version_is_the_one_that_runs() {
        let version = server_version().unwrap();
        let c = Cluster::start().unwrap();
        let num: u32 = q(&c, "show server_version_num").parse().unwrap();
        assert_eq!(num / 10000, version.major(), "{version}");
        assert!(
            q(&c, "show server_version").starts_with(&version.to_string()),
            "{version}"
        );
    }

    #[test]
    fn passwords_are_stored_as_scram_on_every_version() {
        let c = Cluster::builder()
            .init_sql("create role pw_user login password 'pw'")
            .start()
            .unwrap();
        assert_eq!(q(&c, "show password_encryption"), "scram-sha-256");
        assert_eq!(
            q(
                &c,
                "select left(rolpassword, 13) from pg_authid where rolname = 'pw_user'"
            ),
            "SCRAM-SHA-256"
        );
    }

    #[test]
    fn start_and_select_1() {
        let c = Cluster::start().unwrap();
        assert_eq!(q(&c, "select 1"), "1");
        assert_eq!(c.host(), "127.0.0.1");
        assert_ne!(c.port(), SYSTEM_PORT);
        assert!(c.is_running());
        assert_eq!(
            c.url(),
            format!("postgres://postgres@127.0.0.1:{}/postgres", c.port())
        );
        assert_eq!(
            psql_url(&c.url(), "select current_user").unwrap(),
            "postgres"
        );
        assert_eq!(q(&c, "show port"), c.port().to_string());
        assert_eq!(q(&c, "show fsync"), "off");
        assert_eq!(q(&c, "show shared_buffers"), "16MB");
        // Several statements, one output line per row; CREATE DATABASE works.
        assert_eq!(
            q(&c, "create database d1; select 2; select 'a', 3"),
            "2\na|3"
        );

        let meta = fs::metadata(c.data_dir()).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o700);
        let expected_uid = template()
            .unwrap()
            .ids
            .map_or_else(|| fs::metadata("/proc/self").unwrap().uid(), |ids| ids.uid);
        assert_eq!(meta.uid(), expected_uid);
    }

    #[test]
    fn two_clusters_have_different_ports() {
        let a = Cluster::start().unwrap();
        let b = Cluster::start().unwrap();
        assert_ne!(a.port(), b.port());
        assert_ne!(a.data_dir(), b.data_dir());
        q(&a, "create table only_in_a (x int)");
        assert_eq!(
            q(
                &a,
                "select count(*) from pg_class where relname = 'only_in_a'"
            ),
            "1"
        );
        assert_eq!(
            q(
                &b,
                "select count(*) from pg_class where relname = 'only_in_a'"
            ),
            "0"
        );
    }

    #[test]
    fn stop_fast_then_start_again_keeps_data() {
        let c = Cluster::start().unwrap();
        let port = c.port();
        q(&c, "create table t (x int); insert into t values (42)");
        c.stop(StopMode::Fast).unwrap();
        assert!(!c.is_running());
        assert!(refuses(port));
        assert!(c.psql("select 1").is_err());
        c.stop(StopMode::Fast).unwrap(); // idempotent
        c.start_again().unwrap();
        c.start_again().unwrap(); // no-op while running
        assert_eq!(c.port(), port);
        assert_eq!(q(&c, "select x from t"), "42");
        c.restart(StopMode::Fast).unwrap();
        assert_eq!(q(&c, "select x from t"), "42");
    }

    #[test]
    fn stop_immediate_works() {
        let c = Cluster::start().unwrap();
        c.stop(StopMode::Immediate).unwrap();
        assert!(!c.is_running());
        assert!(refuses(c.port()));
        c.stop(StopMode::Immediate).unwrap();
        c.start_again().unwrap();
        assert_eq!(q(&c, "select 1"), "1");
        c.restart(StopMode::Immediate).unwrap();
        assert_eq!(q(&c, "select 1"), "1");
    }

    #[test]
    fn drop_stops_server_and_removes_dir() {
        let c = Cluster::start().unwrap();
        let port = c.port();
        let base = c.data_dir().parent().unwrap().to_path_buf();
        assert!(
            base.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(&format!("pglisten-test-{}-", std::process::id()))
        );
        assert!(!refuses(port));
        drop(c);
        assert!(!base.exists());
        assert!(eventually(Duration::from_secs(5), || refuses(port)));
    }

    #[test]
    fn builder_applies_settings_hba_files_init_sql() {
        let c = Cluster::builder()
            .setting("work_mem", "7MB")
            .setting("cluster_name", "it's testkit")
            .hba(&["local all all trust", "host all all 127.0.0.1/32 trust"])
            .file("extra/hello.txt", b"hello")
            .init_sql("create role alice login")
            .init_sql("create table t (x int); insert into t values (1)")
            .start()
            .unwrap();
        assert_eq!(q(&c, "show work_mem"), "7MB");
        assert_eq!(q(&c, "show cluster_name"), "it's testkit");
        assert_eq!(q(&c, "select count(*) from pg_hba_file_rules"), "2");
        assert_eq!(q(&c, "select pg_read_file('extra/hello.txt')"), "hello");
        assert_eq!(
            q(&c, "select count(*) from pg_roles where rolname = 'alice'"),
            "1"
        );
        assert_eq!(q(&c, "select x from t"), "1");
        let meta = fs::metadata(c.data_dir().join("extra/hello.txt")).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600);
        if let Some(ids) = template().unwrap().ids {
            assert_eq!((meta.uid(), meta.gid()), (ids.uid, ids.gid));
        }
        assert_eq!(
            psql_url(
                &c.url_with("alice", None, "postgres"),
                "select current_user"
            )
            .unwrap(),
            "alice"
        );
    }

    #[test]
    fn custom_hba_with_password_and_init_sql() {
        let c = Cluster::builder()
            .hba(&["host all all 127.0.0.1/32 scram-sha-256"])
            .init_sql("create role alice login password 'p@ss:/word'")
            .start()
            .unwrap();
        let ok = c.url_with("alice", Some("p@ss:/word"), "postgres");
        assert_eq!(psql_url(&ok, "select current_user").unwrap(), "alice");
        let no_password = c.url_with("alice", None, "postgres");
        assert!(psql_url(&no_password, "select 1").is_err());
        // No `local` line: psql() fails, with a hint.
        let err = c.psql("select 1").unwrap_err().to_string();
        assert!(err.contains("hint"), "{err}");
    }

    #[test]
    fn start_failure_reports_log_tail() {
        let err = Cluster::builder()
            .setting("shared_buffers", "not-a-size")
            .start()
            .unwrap_err()
            .to_string();
        assert!(err.contains("tail of server log"), "{err}");
        assert!(err.contains("shared_buffers"), "{err}");
    }

    #[test]
    fn failing_init_sql_is_an_error() {
        let err = Cluster::builder()
            .init_sql("select * from no_such_table")
            .start()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("init_sql") && err.contains("no_such_table"),
            "{err}"
        );
    }

    #[test]
    fn taken_port_is_retried_with_another() {
        let taken = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = taken.local_addr().unwrap().port();
        let c = Cluster::builder().start_inner(Some(port)).unwrap();
        assert_ne!(c.port(), port);
        assert_eq!(q(&c, "select 1"), "1");
    }

    #[test]
    fn invalid_builder_input_is_rejected() {
        for builder in [
            Cluster::builder().setting("bad key", "x"),
            Cluster::builder().setting("work_mem", "1MB\nfsync = on"),
            Cluster::builder().hba(&["local all all trust\nhost all all 0.0.0.0/0 trust"]),
            Cluster::builder().file("../escape", b""),
            Cluster::builder().file("/etc/evil", b""),
        ] {
            let err = builder.start().unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{err}");
        }
    }

    #[test]
    fn url_with_encodes_parts() {
        assert_eq!(
            format_url(1234, "al ice", Some("p@ss:/w"), "my db"),
            "postgres://al%20ice:p%40ss%3A%2Fw@127.0.0.1:1234/my%20db"
        );
        assert_eq!(
            format_url(1234, "bob", None, "x"),
            "postgres://bob@127.0.0.1:1234/x"
        );
    }

    #[test]
    fn shared_returns_the_same_url() {
        let a = shared();
        let b = shared();
        assert!(std::ptr::eq(a, b));
        assert_eq!(a.url(), b.url());
        if !a.is_external() {
            assert_eq!(psql_url(&a.url(), "select 1").unwrap(), "1");
        }
    }

    #[test]
    fn helpers() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
        assert_eq!(conf_quote(r"it's \x"), r"'it''s \\x'");
    }
}
