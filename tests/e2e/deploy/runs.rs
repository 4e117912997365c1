//! The deploy kit's files run: the guide's main path verbatim, the compose file's enrolment,
//! and the Kubernetes Deployment's configuration, each as far as plain processes on loopback
//! allow.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{
    backroom, deploy, output, read, repo, scrub, skip, str_of, text, yaml_documents, yaml_python,
};
use crate::support::free_port;

/// A `PATH` whose `backroom` is this build's (linked into `dir/bin`), for scripts written for an
/// installed binary.
fn path_with_backroom(dir: &Path) -> String {
    let bin = dir.join("bin");
    std::fs::create_dir(&bin).unwrap_or_else(|e| panic!("{e}"));
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_backroom"), bin.join("backroom"))
        .unwrap_or_else(|e| panic!("{e}"));
    format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

/// A process group (a shell and what it started), killed when dropped.
struct Group(Child);

impl Group {
    fn spawn(command: &mut Command) -> Self {
        Group(
            command
                .process_group(0)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}")),
        )
    }

    /// Waits for the group's leader to exit, at most `limit`; `None` if it is still running.
    fn wait(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.0.try_wait().unwrap_or_else(|e| panic!("{e}")) {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.0.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.0.wait();
    }
}

/// `backroom nodes` through `connection` until `accept` likes its rows (node, version), at
/// most `limit`.
fn wait_for_nodes(
    connection: &[(&str, String)],
    limit: Duration,
    accept: impl Fn(&[(String, u64)]) -> bool,
) -> Result<Vec<(String, u64)>, String> {
    let deadline = Instant::now() + limit;
    loop {
        let out = output(
            backroom()
                .arg("nodes")
                .envs(connection.iter().map(|(k, v)| (k, v))),
        );
        let rows: Vec<(String, u64)> = text(&out.stdout)
            .lines()
            .skip(1)
            .filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                Some((fields.first()?.to_string(), fields.get(2)?.parse().ok()?))
            })
            .collect();
        if out.status.success() && accept(&rows) {
            return Ok(rows);
        }
        if Instant::now() >= deadline {
            return Err(format!("{}{}", text(&out.stdout), text(&out.stderr)));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The shell blocks of `deploy/GUIDE.md` between `<!-- guide-test: begin -->` and
/// `<!-- guide-test: end -->`, in order.
fn guide_blocks() -> Vec<String> {
    let guide = read(&deploy().join("GUIDE.md"));
    let start = guide
        .find("<!-- guide-test: begin -->")
        .unwrap_or_else(|| panic!("GUIDE.md has no guide-test: begin marker"));
    let end = guide
        .find("<!-- guide-test: end -->")
        .unwrap_or_else(|| panic!("GUIDE.md has no guide-test: end marker"));
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in guide[start..end].lines() {
        match (&mut current, line.trim_end()) {
            (None, "```sh") => current = Some(String::new()),
            (Some(block), "```") => {
                blocks.push(std::mem::take(block));
                current = None;
            }
            (Some(block), _) => {
                block.push_str(line);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    assert!(current.is_none(), "an unclosed shell block in GUIDE.md");
    blocks
}

/// The guide's main path, verbatim, in a temporary $PILOT: enrolment, `config check`, the
/// coordinator and three store nodes from `deploy/pilot/`, a training round to publication,
/// metrics. Only the port differs (the environment overrides move the daemons and the CLI to a
/// free one), and the binary is this build's. Then every store must run the new version.
#[test]
fn the_guide_runs_a_three_store_pilot_from_the_shipped_configurations() {
    let blocks = guide_blocks();
    let script = blocks.join("\n");
    for needed in [
        "backroom enroll",
        "config check",
        "backroom coordinator",
        "backroom node",
        "round start",
    ] {
        assert!(
            script.contains(needed),
            "the guide's main path lacks `{needed}`"
        );
    }
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let pilot = dir.path().join("pilot");
    std::fs::create_dir(&pilot).unwrap_or_else(|e| panic!("{e}"));
    let port = free_port();
    let url = format!("https://127.0.0.1:{port}");
    let path = path_with_backroom(dir.path());
    let log = dir.path().join("guide.log");
    let log_file = std::fs::File::create(&log).unwrap_or_else(|e| panic!("{e}"));
    let mut command = Command::new("bash");
    scrub(&mut command);
    command
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(repo())
        .env("PATH", path)
        .env("PILOT", &pilot)
        .env("BACKROOM_COORDINATOR_LISTEN", format!("127.0.0.1:{port}"))
        .env("BACKROOM_NODE_COORDINATOR_URL", &url)
        .env("BACKROOM_COORDINATOR", &url)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().unwrap_or_else(|e| panic!("{e}")))
        .stderr(log_file);
    let started = Instant::now();
    let mut group = Group::spawn(&mut command);
    let logs = |pilot: &Path| {
        let mut all = read(&log);
        for name in ["coordinator", "node-1", "node-2", "node-3"] {
            let text =
                std::fs::read_to_string(pilot.join(format!("{name}.log"))).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            all.push_str(&format!(
                "\n--- {name}.log (last lines):\n{}",
                lines[lines.len().saturating_sub(15)..].join("\n")
            ));
        }
        all
    };
    let status = group.wait(Duration::from_secs(900));
    assert!(
        status.is_some_and(|s| s.success()),
        "the guide's commands ended {status:?}:\n{}",
        logs(&pilot)
    );
    let guide_output = read(&log);
    assert!(
        guide_output.lines().any(|l| l.contains("published v2")),
        "no round was published:\n{guide_output}"
    );
    let connection = [
        ("BACKROOM_COORDINATOR", url.clone()),
        (
            "BACKROOM_BUNDLE",
            pilot.join("bundles/alice").display().to_string(),
        ),
    ];
    let nodes = wait_for_nodes(&connection, Duration::from_secs(120), |rows| {
        rows.len() == 3 && rows.iter().all(|(_, version)| *version == 2)
    })
    .unwrap_or_else(|last| panic!("not every store installed v2: {last}\n{}", logs(&pilot)));
    let ids: Vec<&str> = nodes.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, ["store-1", "store-2", "store-3"]);
    eprintln!(
        "the guide's pilot: round published and v2 installed on 3 stores in {:.0} s",
        started.elapsed().as_secs_f64()
    );
}

/// The compose file's enrolment script, run against directories here in place of its volumes:
/// it issues the bundles, runs again without harm, and leaves the coordinator to issue a
/// server certificate for its service name, which a store node configured by
/// `deploy/compose/node-1.toml` (tls_server_name "coordinator") connects with.
#[test]
fn the_compose_enrolment_gives_the_coordinator_a_certificate_for_its_service_name() {
    let Some(python) = yaml_python() else {
        return skip("no python3 with PyYAML to read deploy/compose/compose.yaml");
    };
    let compose_dir = deploy().join("compose");
    let compose = yaml_documents(&python, &compose_dir.join("compose.yaml"));
    let enroll = &compose[0]["services"]["enroll"];
    assert_eq!(enroll["entrypoint"], serde_json::json!(["/bin/sh", "-c"]));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let data = dir.path().join("coordinator-data");
    let bundles = dir.path().join("bundles");
    std::fs::create_dir_all(&bundles).unwrap_or_else(|e| panic!("{e}"));
    // Compose's `$$` is the shell's `$`; the volumes are directories here.
    let script = str_of(&enroll["command"][0], "the enroll command")
        .replace("$$", "$")
        .replace("/var/lib/backroom", &data.display().to_string())
        .replace("/etc/backroom/bundles", &bundles.display().to_string());
    let path = path_with_backroom(dir.path());
    for run in ["first", "second"] {
        let out = output(Command::new("sh").args(["-c", &script]).env("PATH", &path));
        assert!(
            out.status.success(),
            "{run} run: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        assert!(
            !data.join("pki/server.pem").exists(),
            "{run} run left enroll's server certificate"
        );
    }
    for who in ["store-1", "store-2", "store-3", "admin"] {
        assert!(
            bundles.join(who).join("cert.pem").is_file(),
            "no bundle for {who}"
        );
    }

    let port = free_port();
    let url = format!("https://127.0.0.1:{port}");
    let mut coordinator = backroom();
    coordinator
        .args(["coordinator", "--config"])
        .arg(compose_dir.join("coordinator.toml"))
        .env("BACKROOM_COORDINATOR_LISTEN", format!("127.0.0.1:{port}"))
        .env("BACKROOM_COORDINATOR_DATA_DIR", &data)
        .stdout(Stdio::null())
        .stderr(
            std::fs::File::create(dir.path().join("coordinator.log"))
                .unwrap_or_else(|e| panic!("{e}")),
        );
    let _coordinator = Group::spawn(&mut coordinator);
    let mut node = backroom();
    node.args(["node", "--config"])
        .arg(compose_dir.join("node-1.toml"))
        .env("BACKROOM_NODE_COORDINATOR_URL", &url)
        .env("BACKROOM_NODE_BUNDLE_DIR", bundles.join("store-1"))
        .env("BACKROOM_NODE_DATA_DIR", dir.path().join("store-1"))
        .env("BACKROOM_NODE_BACKEND", "cpu")
        .stdout(Stdio::null())
        .stderr(
            std::fs::File::create(dir.path().join("node.log")).unwrap_or_else(|e| panic!("{e}")),
        );
    let _node = Group::spawn(&mut node);
    let connection = [
        ("BACKROOM_COORDINATOR", url.clone()),
        (
            "BACKROOM_BUNDLE",
            bundles.join("admin").display().to_string(),
        ),
    ];
    wait_for_nodes(&connection, Duration::from_secs(120), |rows| {
        rows.iter().any(|(id, version)| id == "store-1" && *version == 1)
    })
    .unwrap_or_else(|last| {
        panic!(
            "store-1 did not connect as \"coordinator\": {last}\n--- node:\n{}\n--- coordinator:\n{}",
            std::fs::read_to_string(dir.path().join("node.log")).unwrap_or_default(),
            std::fs::read_to_string(dir.path().join("coordinator.log")).unwrap_or_default()
        )
    });
    // The name is checked: one the certificate does not carry is refused.
    let wrong = output(
        backroom()
            .args(["nodes", "--server-name", "not-the-coordinator"])
            .envs(connection.iter().map(|(k, v)| (k, v))),
    );
    assert!(!wrong.status.success(), "a wrong server name was accepted");
    let right = output(
        backroom()
            .args(["nodes", "--server-name", "coordinator"])
            .envs(connection.iter().map(|(k, v)| (k, v))),
    );
    assert!(right.status.success(), "{}", text(&right.stderr));
}

/// The Kubernetes Deployment in miniature, without a cluster: its init container's script
/// copies the Secret's files (those of `backroom enroll` that kustomization.yaml lists) into a
/// replica's data directory; the coordinator runs with the ConfigMap's file on PostgreSQL and an
/// S3 bucket (the test environment's, named through environment overrides, with the credentials
/// in `AWS_*` as the Deployment passes them) and issues its own server certificate for the
/// ConfigMap's `server_names`, with which a store node that knows it as
/// `backroom-coordinator.backroom.svc` connects. Version 1 goes to the bucket, not to the
/// replica's own directory.
///
/// Needs `DATABASE_URL` and `BACKROOM_TEST_S3_ENDPOINT`; skips without them unless CI requires
/// them.
#[test]
fn the_kubernetes_configuration_runs_a_replica_on_postgres_and_a_bucket() {
    let Some(database) = crate::support::postgres_url() else {
        eprintln!("skipped: the Kubernetes configuration on PostgreSQL (set DATABASE_URL)");
        return;
    };
    let Some(endpoint) = crate::support::s3_endpoint() else {
        eprintln!(
            "skipped: the Kubernetes configuration on a bucket (set BACKROOM_TEST_S3_ENDPOINT)"
        );
        return;
    };
    let Some(python) = yaml_python() else {
        return skip("no python3 with PyYAML to read deploy/k8s");
    };
    let k8s = deploy().join("k8s");
    let config_map = yaml_documents(&python, &k8s.join("coordinator-config.yaml"));
    let deployment = yaml_documents(&python, &k8s.join("coordinator-deployment.yaml"));
    let kustomization = yaml_documents(&python, &k8s.join("kustomization.yaml"));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let ca = dir.path().join("ca");
    for (role, name) in [("--admin", "alice"), ("--store", "store-1")] {
        let out = output(
            backroom()
                .args(["enroll", "--data-dir"])
                .arg(&ca)
                .args([role, name, "--out"])
                .arg(dir.path().join("bundles").join(name)),
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    // The Secret's volume: the files kustomization.yaml generates it from.
    let secret = dir.path().join("pki-secret");
    std::fs::create_dir(&secret).unwrap_or_else(|e| panic!("{e}"));
    let pki_files = kustomization[0]["secretGenerator"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|g| g["name"] == "backroom-pki")
        .map(|g| g["files"].as_array().cloned().unwrap_or_default())
        .unwrap_or_default();
    assert!(
        !pki_files.is_empty(),
        "no backroom-pki files in kustomization.yaml"
    );
    for file in &pki_files {
        let name = str_of(file, "a file").trim_start_matches("pki/");
        std::fs::copy(ca.join("pki").join(name), secret.join(name))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let data = dir.path().join("data");
    let pod = &deployment[0]["spec"]["template"]["spec"];
    let init = str_of(&pod["initContainers"][0]["command"][2], "the init script")
        .replace("/etc/backroom/pki-secret", &secret.display().to_string())
        .replace("/var/lib/backroom", &data.display().to_string());
    let out = output(Command::new("sh").args(["-c", &init]));
    assert!(
        out.status.success(),
        "init container: {}",
        text(&out.stderr)
    );

    let schema = format!("e2e_deploy_{}", std::process::id());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    runtime.block_on(async {
        let drop = format!("DROP SCHEMA IF EXISTS {schema} CASCADE");
        crate::support::postgres_admin(&database, &drop).await;
        crate::support::postgres_admin(&database, &format!("CREATE SCHEMA {schema}")).await;
    });
    let separator = if database.contains('?') { '&' } else { '?' };
    let database_url = format!("{database}{separator}options=-c%20search_path%3D{schema}");
    let config = dir.path().join("coordinator.toml");
    crate::support::write(
        &config,
        str_of(
            &config_map[0]["data"]["coordinator.toml"],
            "coordinator.toml",
        ),
    );
    let port = free_port();
    let url = format!("https://127.0.0.1:{port}");
    let coordinator_log = dir.path().join("coordinator.log");
    let mut coordinator = backroom();
    coordinator
        .args(["coordinator", "--config"])
        .arg(&config)
        .env("BACKROOM_COORDINATOR_LISTEN", format!("127.0.0.1:{port}"))
        .env("BACKROOM_COORDINATOR_DATA_DIR", &data)
        .env("BACKROOM_COORDINATOR_DATABASE_URL", &database_url)
        .env(
            "BACKROOM_COORDINATOR_BLOB_STORE",
            format!("s3://backroom-test/e2e-deploy-{}", std::process::id()),
        )
        .env(
            "BACKROOM_COORDINATOR_BLOB_STORE_OPTIONS__ENDPOINT",
            &endpoint,
        )
        .env("AWS_ACCESS_KEY_ID", "backroom-test")
        .env("AWS_SECRET_ACCESS_KEY", "backroom-test")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&coordinator_log).unwrap_or_else(|e| panic!("{e}")));
    let coordinator = Group::spawn(&mut coordinator);
    let node_log = dir.path().join("node.log");
    let mut node = backroom();
    node.args(["node", "--config"])
        .arg(deploy().join("pilot/node-1.toml"))
        .env("BACKROOM_NODE_COORDINATOR_URL", &url)
        .env(
            "BACKROOM_NODE_TLS_SERVER_NAME",
            "backroom-coordinator.backroom.svc",
        )
        .env(
            "BACKROOM_NODE_BUNDLE_DIR",
            dir.path().join("bundles/store-1"),
        )
        .env("BACKROOM_NODE_DATA_DIR", dir.path().join("store-1"))
        .env("BACKROOM_NODE_BACKEND", "cpu")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&node_log).unwrap_or_else(|e| panic!("{e}")));
    let node = Group::spawn(&mut node);
    let connection = [
        ("BACKROOM_COORDINATOR", url),
        (
            "BACKROOM_BUNDLE",
            dir.path().join("bundles/alice").display().to_string(),
        ),
    ];
    let connected = wait_for_nodes(&connection, Duration::from_secs(120), |rows| {
        rows.iter()
            .any(|(id, version)| id == "store-1" && *version == 1)
    });
    drop(node);
    drop(coordinator);
    runtime.block_on(crate::support::postgres_admin(
        &database,
        &format!("DROP SCHEMA IF EXISTS {schema} CASCADE"),
    ));
    connected.unwrap_or_else(|last| {
        panic!(
            "store-1 did not connect to the replica as backroom-coordinator.backroom.svc: \
             {last}\n--- node:\n{}\n--- coordinator:\n{}",
            std::fs::read_to_string(&node_log).unwrap_or_default(),
            std::fs::read_to_string(&coordinator_log).unwrap_or_default()
        )
    });
    assert!(
        data.join("pki/server.pem").is_file() && !data.join("blobs").exists(),
        "the replica kept its blobs locally or issued no server certificate"
    );
}
