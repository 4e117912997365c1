//! The dashboard in a real browser: headless Debian Chromium, driven over WebDriver
//! (chromedriver), clicks through every view of the page the coordinator serves, through
//! `backroom dashboard` with an operations certificate, and writes screenshots.
//!
//! Skips when Chromium or chromedriver is missing, unless `BACKROOM_REQUIRE_CHROMIUM` is set
//! (CI installs Debian's `chromium` and `chromium-driver`), when it fails instead.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use backroom::sandbox::issue_bundle;
use backroom_coordinator::identity::Role;
use fantoccini::{Client, ClientBuilder, Locator};

use crate::support::{free_port, run_round, shutdown, spec, start, test_options};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// A child process killed and reaped when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn browser_available() -> bool {
    let present = Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists();
    if !present {
        assert!(
            std::env::var_os("BACKROOM_REQUIRE_CHROMIUM").is_none(),
            "BACKROOM_REQUIRE_CHROMIUM is set but {CHROMIUM} or {CHROMEDRIVER} is missing \
             (apt-get install chromium chromium-driver)"
        );
        eprintln!(
            "skipped: {CHROMIUM} or {CHROMEDRIVER} missing (Debian chromium, chromium-driver)"
        );
    }
    present
}

async fn wait_for_file(path: &Path, what: &str) -> String {
    for _ in 0..200 {
        if let Ok(text) = std::fs::read_to_string(path)
            && !text.is_empty()
        {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what} did not start (no {})", path.display());
}

async fn webdriver(port: u16, profile: &Path) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": CHROMIUM,
            "args": [
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--window-size=1400,1000",
                format!("--user-data-dir={}", profile.display()),
            ],
        }),
    );
    let url = format!("http://127.0.0.1:{port}");
    // chromedriver takes a moment to listen.
    let mut last = None;
    for _ in 0..100 {
        match ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps.clone())
            .connect(&url)
            .await
        {
            Ok(client) => return client,
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("cannot open a WebDriver session on {url}: {last:?}");
}

/// Clicks the tab of `view` and waits until the page says it loaded that view without error.
async fn open_view(client: &Client, view: &str) {
    client
        .find(Locator::Id(&format!("tab-{view}")))
        .await
        .unwrap_or_else(|e| panic!("tab {view}: {e}"))
        .click()
        .await
        .unwrap_or_else(|e| panic!("click {view}: {e}"));
    wait_loaded(client, view).await;
}

async fn wait_loaded(client: &Client, view: &str) {
    for _ in 0..150 {
        let loaded = client
            .execute("return document.body.dataset.loaded || ''", vec![])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        match loaded.as_str() {
            Some(v) if v == view => return,
            Some(v) if v == format!("{view}:error") => {
                let error = client
                    .find(Locator::Id("error"))
                    .await
                    .unwrap_or_else(|e| panic!("{e}"))
                    .text()
                    .await
                    .unwrap_or_default();
                panic!("the {view} view shows an error: {error}");
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    panic!("the {view} view never loaded");
}

async fn text_of(client: &Client, css: &str) -> String {
    client
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .text()
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
}

async fn screenshot(client: &Client, name: &str) -> PathBuf {
    let png = client.screenshot().await.unwrap_or_else(|e| panic!("{e}"));
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    let path = dir.join(format!("{name}.png"));
    std::fs::write(&path, &png).unwrap_or_else(|e| panic!("{e}"));
    // A real picture of the page, not a blank one.
    let image = image::load_from_memory(&png).unwrap_or_else(|e| panic!("{name}: {e}"));
    let rgb = image.to_rgb8();
    assert_eq!(rgb.width(), 1400, "{name}");
    let colours: std::collections::BTreeSet<[u8; 3]> = rgb.pixels().map(|p| p.0).collect();
    assert!(
        colours.len() > 20,
        "{name} looks blank ({} colours)",
        colours.len()
    );
    eprintln!("screenshot: {}", path.display());
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_rounds_models_nodes_and_metrics_to_operations_in_chromium() {
    if !browser_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut sandbox = start(test_options(dir.path(), 3)).await;
    let round = run_round(&mut sandbox, spec(3, 0.0)).await;
    for node in &sandbox.nodes {
        let mut status = node.status.clone();
        tokio::time::timeout(
            Duration::from_secs(90),
            status.wait_for(|s| s.windows_synced >= 2),
        )
        .await
        .unwrap_or_else(|_| panic!("no metric release synced"))
        .unwrap_or_else(|e| panic!("{e}"));
    }
    let ops = issue_bundle(
        &sandbox.coordinator_dir,
        Role::Operations,
        "olga",
        &dir.path().join("olga"),
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));

    // `backroom dashboard` with the operations bundle, on a free loopback port.
    let address_file = dir.path().join("dashboard.addr");
    let _proxy = Killed(
        Command::new(env!("CARGO_BIN_EXE_backroom"))
            .args(["dashboard", "--listen", "127.0.0.1:0", "--coordinator"])
            .arg(&sandbox.coordinator_url)
            .arg("--bundle")
            .arg(&ops)
            .arg("--address-file")
            .arg(&address_file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("backroom dashboard: {e}")),
    );
    let address = wait_for_file(&address_file, "backroom dashboard").await;

    let port = free_port();
    let _driver = Killed(
        Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{CHROMEDRIVER}: {e}")),
    );
    let profile = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let client = webdriver(port, profile.path()).await;
    client
        .goto(&format!("http://{address}/"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    // Rounds: the published round, with its progress and the caller named.
    wait_loaded(&client, "rounds").await;
    let rounds = text_of(&client, "#rounds-body").await;
    assert!(rounds.contains(&round.round_id), "{rounds}");
    assert!(rounds.contains("published"), "{rounds}");
    assert!(rounds.contains("3 accepted"), "{rounds}");
    let who = text_of(&client, "#who").await;
    assert!(who.contains("olga (operations)"), "{who}");
    screenshot(&client, "rounds").await;

    // Models: v1 and the version the round published, stable.
    open_view(&client, "models").await;
    let models = text_of(&client, "#models-body").await;
    assert!(models.contains("v2") && models.contains("v1"), "{models}");
    let channels = text_of(&client, "#channel-cards").await;
    assert!(channels.contains("v2"), "{channels}");

    // Nodes: three stores, as tokens (operations do not see store ids).
    open_view(&client, "nodes").await;
    let nodes = text_of(&client, "#nodes-body").await;
    assert_eq!(nodes.lines().count(), 3, "{nodes}");
    for node in &sandbox.nodes {
        assert!(
            !nodes.contains(&node.store_id),
            "a store id reached operations: {nodes}"
        );
    }
    assert!(
        text_of(&client, "#nodes-note")
            .await
            .contains("opaque tokens")
    );
    screenshot(&client, "nodes").await;

    // Shelf metrics: grouped by hour, then by day through the selector; charts drawn.
    open_view(&client, "metrics").await;
    let bars = client
        .find_all(Locator::Css("#chart-oos rect, #chart-oos text"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!bars.is_empty(), "the out-of-stock chart is empty");
    let by_hour = text_of(&client, "#metrics-body").await;
    assert!(by_hour.contains(":00"), "{by_hour}");
    screenshot(&client, "metrics-by-hour").await;
    client
        .execute(
            "const s = document.getElementById('group-by'); s.value = 'day'; \
             s.dispatchEvent(new Event('change'));",
            vec![],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    wait_loaded(&client, "metrics").await;
    let by_day = text_of(&client, "#metrics-body").await;
    assert!(by_day.contains("20"), "no date row: {by_day}");
    let page = client.source().await.unwrap_or_else(|e| panic!("{e}"));
    for node in &sandbox.nodes {
        assert!(
            !page.contains(&node.store_id),
            "a store id reached operations"
        );
    }
    screenshot(&client, "metrics-by-day").await;

    client.close().await.unwrap_or_else(|e| panic!("{e}"));
    shutdown(sandbox).await;
}
