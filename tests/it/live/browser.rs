//! A real headless Chromium, driven through chromedriver (WebDriver) with fantoccini.
//!
//! Chromium and chromedriver are Debian's `chromium` and `chromium-driver` packages,
//! which `.ci/run` installs. Without them the browser tests fail with a message saying
//! how to install them, unless `PGLISTEN_SKIP_BROWSER=1` asks to skip them (then they
//! print `SKIPPED` and pass).

use std::net::TcpListener as StdTcpListener;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};
use tokio::process::{Child, Command};

use crate::support::WAIT;

/// A browser session. Dropping it (also when a test fails) kills chromedriver and the
/// Chromium it started: they run in a process group of their own.
pub struct Browser {
    pub client: Client,
    driver: Child,
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(pid) = self.driver.id() {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// `name` in `/usr/bin` or on `PATH`.
fn find(name: &str) -> Option<PathBuf> {
    let standard = PathBuf::from("/usr/bin").join(name);
    if standard.is_file() {
        return Some(standard);
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
}

/// Starts chromedriver and a headless Chromium session, or `None` when they are missing
/// and `PGLISTEN_SKIP_BROWSER=1` says to skip.
///
/// # Panics
///
/// When they are missing and skipping was not asked for (so CI cannot pass without
/// running the browser tests), or when the session cannot be started.
pub async fn start() -> Option<Browser> {
    let (chromium, driver) = match (find("chromium"), find("chromedriver")) {
        (Some(chromium), Some(driver)) => (chromium, driver),
        _ => {
            if std::env::var("PGLISTEN_SKIP_BROWSER").is_ok_and(|v| v == "1") {
                eprintln!("SKIPPED: chromium or chromedriver is missing (PGLISTEN_SKIP_BROWSER=1)");
                return None;
            }
            panic!(
                "the browser tests need Chromium and its WebDriver: \
                 apt-get install chromium chromium-driver (/usr/bin/chromium, \
                 /usr/bin/chromedriver); set PGLISTEN_SKIP_BROWSER=1 to skip them"
            );
        }
    };
    let port = StdTcpListener::bind("127.0.0.1:0")
        .and_then(|socket| socket.local_addr())
        .expect("a free port for chromedriver")
        .port();
    let driver = Command::new(driver)
        .arg(format!("--port={port}"))
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start chromedriver");
    let capabilities = json!({
        "goog:chromeOptions": {
            "binary": chromium,
            // --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=820,700"],
        }
    });
    let Value::Object(capabilities) = capabilities else {
        unreachable!()
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    let client = loop {
        let attempt = ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities.clone())
            .connect(&format!("http://127.0.0.1:{port}"))
            .await;
        match attempt {
            Ok(client) => break client,
            // chromedriver is not listening yet.
            Err(e) if tokio::time::Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("could not start a Chromium session through chromedriver: {e}"),
        }
    };
    Some(Browser { client, driver })
}

/// One table row as the page shows it: id, name, qty, version.
pub type Row = (i32, String, i32, i64);

/// The rows of the page's table, read from its DOM.
pub async fn rows(client: &Client) -> Vec<Row> {
    let cells = client
        .execute(
            "return [...document.querySelectorAll('#rows tr')]
                 .map(tr => [...tr.cells].map(td => td.textContent));",
            vec![],
        )
        .await
        .expect("read the table");
    let parse = |cell: &Value| cell.as_str().unwrap_or_default().to_owned();
    cells
        .as_array()
        .expect("an array of rows")
        .iter()
        .map(|row| {
            let row = row.as_array().expect("an array of cells");
            assert_eq!(row.len(), 4, "a row of the page has 4 cells: {row:?}");
            (
                parse(&row[0]).parse().expect("id"),
                parse(&row[1]),
                parse(&row[2]).parse().expect("qty"),
                parse(&row[3]).parse().expect("version"),
            )
        })
        .collect()
}

/// A number the page shows in the element with id `id` (its status line).
pub async fn counter(client: &Client, id: &str) -> u64 {
    let text = client
        .execute(
            "return document.getElementById(arguments[0]).textContent;",
            vec![json!(id)],
        )
        .await
        .expect("read the status line");
    text.as_str()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("#{id} shows {text}, not a number"))
}
