//! The deployment kit in `deploy/`, checked as far as a machine without a container engine or
//! a cluster allows:
//!
//! - every configuration file shipped there passes `backroom config check` (the compose
//!   services' and the Kubernetes Deployment's with their environment overrides applied, the
//!   ConfigMap's file extracted);
//! - the Kubernetes manifests validate against the API schemas (`deploy/check-manifests.sh`:
//!   PyPI's kubernetes-validate, strict, a pinned Kubernetes version; the rendered
//!   kustomization too where kubectl is installed), the compose file parses (and passes
//!   `docker compose config` where the plugin is installed), the launchd plist parses, the
//!   systemd units pass `systemd-analyze verify` where it exists, and the container files'
//!   entry points are commands the binary has;
//! - the Kubernetes Secret holds exactly the files `backroom enroll` creates that a replica
//!   needs;
//! - and, as processes on loopback (`runs.rs`): `deploy/GUIDE.md`'s no-container pilot, its
//!   shell blocks run verbatim (on a free port, through the environment overrides) until a
//!   round is published and all three stores run the new version; the compose file's
//!   enrolment script, run against directories in place of its volumes, leading to a
//!   coordinator certificate for its service name that a store node connects with; and the
//!   Kubernetes Deployment's init script and ConfigMap running a replica on PostgreSQL and a
//!   bucket, with a certificate for its Service's name.
//!
//! Without python3 (or PyPI for kubernetes-validate) the checks that need them say they
//! skipped, unless `BACKROOM_REQUIRE_DEPLOY_CHECK` is set (CI), when they fail instead; the
//! Kubernetes run needs `DATABASE_URL` and `BACKROOM_TEST_S3_ENDPOINT` like the other tests on
//! PostgreSQL and S3.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use crate::support::write;

mod runs;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn deploy() -> PathBuf {
    repo().join("deploy")
}

/// `backroom` with none of the caller's configuration overrides or connection defaults.
fn backroom() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_backroom"));
    scrub(&mut command);
    command
}

/// Removes the variables `backroom` reads from the environment, so that only the ones a test
/// sets apply.
fn scrub(command: &mut Command) {
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy().into_owned();
        if name.starts_with("BACKROOM_COORDINATOR")
            || name.starts_with("BACKROOM_NODE_")
            || name == "BACKROOM_BUNDLE"
        {
            command.env_remove(name);
        }
    }
}

fn output(command: &mut Command) -> Output {
    command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Whether the tools these checks use must be there (CI): then a missing one fails the test.
fn required() -> bool {
    std::env::var_os("BACKROOM_REQUIRE_DEPLOY_CHECK").is_some()
}

fn skip(what: &str) {
    assert!(
        !required(),
        "BACKROOM_REQUIRE_DEPLOY_CHECK is set but {what}"
    );
    eprintln!("skipped: {what}");
}

/// Runs `backroom config check` on one file with `env` applied; panics with its output unless
/// the file is valid.
fn config_check(flag: &str, file: &Path, env: &[(String, String)]) {
    let out = output(
        backroom()
            .args(["config", "check", flag])
            .arg(file)
            .envs(env.iter().cloned()),
    );
    let stdout = text(&out.stdout);
    assert!(
        out.status.success() && stdout.contains(": ok ("),
        "{} with {env:?}: {stdout}{}",
        file.display(),
        text(&out.stderr)
    );
}

fn toml_files(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap_or_else(|e| panic!("{e}")).path();
        if path.is_dir() {
            toml_files(&path, found);
        } else if path.extension().is_some_and(|e| e == "toml") {
            found.push(path);
        }
    }
}

/// Every TOML file in `deploy/` is a coordinator or node configuration, and every one of them
/// is valid as shipped.
#[test]
fn every_configuration_in_deploy_passes_config_check() {
    let mut files = Vec::new();
    toml_files(&deploy(), &mut files);
    files.sort();
    let name = |p: &Path| p.strip_prefix(deploy()).unwrap_or(p).display().to_string();
    let names: Vec<String> = files.iter().map(|p| name(p)).collect();
    for expected in [
        "pilot/coordinator.toml",
        "pilot/node-1.toml",
        "pilot/node-2.toml",
        "pilot/node-3.toml",
        "compose/coordinator.toml",
        "compose/node-3.toml",
        "systemd/coordinator.toml",
        "systemd/node.toml",
        "launchd/node.toml",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing: {names:?}"
        );
    }
    let mut command = backroom();
    command.args(["config", "check"]);
    for file in &files {
        let is_node = read(file).contains("coordinator_url");
        command.arg(if is_node { "--node" } else { "--coordinator" });
        command.arg(file);
    }
    let out = output(&mut command);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    for file in &files {
        assert!(
            stdout.contains(&format!("{}: ok (", file.display())),
            "{} not reported valid: {stdout}",
            name(file)
        );
    }
}

/// What `deploy/check-manifests.sh` said, run once for the tests that need it (it also installs
/// the Python environment the YAML is read with).
struct ManifestCheck {
    status: Option<i32>,
    output: String,
}

fn manifest_check() -> &'static ManifestCheck {
    static CHECK: OnceLock<ManifestCheck> = OnceLock::new();
    CHECK.get_or_init(|| {
        let out = output(&mut Command::new(deploy().join("check-manifests.sh")));
        ManifestCheck {
            status: out.status.code(),
            output: format!("{}{}", text(&out.stdout), text(&out.stderr)),
        }
    })
}

/// A Python with PyYAML: the validator's environment, or the system's python3.
fn yaml_python() -> Option<PathBuf> {
    // Installs the validator's environment (PyYAML comes with it) where it can.
    manifest_check();
    let venv = std::env::var_os("BACKROOM_KUBERNETES_VALIDATE_VENV")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .map(|h| Path::new(&h).join(".cache/backroom-kubernetes-validate"))
        });
    let candidates = venv
        .map(|v| v.join("bin/python"))
        .into_iter()
        .chain([PathBuf::from("python3")]);
    candidates.into_iter().find(|python| {
        Command::new(python)
            .args(["-c", "import yaml"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// Every YAML document in `file`, as JSON.
fn yaml_documents(python: &Path, file: &Path) -> Vec<serde_json::Value> {
    let out = output(
        Command::new(python)
            .args([
                "-c",
                "import json, sys, yaml\n\
                 print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
            ])
            .arg(file),
    );
    assert!(
        out.status.success(),
        "{} is not YAML: {}",
        file.display(),
        text(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}"))
}

fn str_of<'a>(value: &'a serde_json::Value, what: &str) -> &'a str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {value}"))
}

/// The `BACKROOM_*` variables of a compose service's or a container's environment.
fn backroom_env(pairs: impl IntoIterator<Item = (String, String)>) -> Vec<(String, String)> {
    pairs
        .into_iter()
        .filter(|(name, _)| name.starts_with("BACKROOM_"))
        .collect()
}

/// The image's entry point, from `ENTRYPOINT [...]` in a container file.
fn entrypoint(containerfile: &Path) -> Vec<String> {
    let text = read(containerfile);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("ENTRYPOINT "))
        .unwrap_or_else(|| panic!("no ENTRYPOINT in {}", containerfile.display()));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("ENTRYPOINT {line}: {e}"))
}

/// The manifests, compose file, plist, units and container files: schema checks, parsing, and
/// the configurations inside them.
#[test]
fn manifests_compose_file_units_and_container_files_validate() {
    let check = manifest_check();
    match check.status {
        Some(0) => {
            eprintln!("{}", check.output);
            assert!(check.output.contains("passed"), "{}", check.output);
        }
        Some(3) => skip(&format!(
            "kubernetes-validate cannot be installed here:\n{}",
            check.output
        )),
        _ => panic!("deploy/check-manifests.sh: {}", check.output),
    }

    // The container files start the commands the binary has, with the configuration where
    // compose and Kubernetes put it.
    let coordinator_entry = entrypoint(&deploy().join("containers/coordinator.Containerfile"));
    let node_entry = entrypoint(&deploy().join("containers/store-node.Containerfile"));
    assert_eq!(
        coordinator_entry,
        [
            "/usr/local/bin/backroom",
            "coordinator",
            "--config",
            "/etc/backroom/coordinator.toml"
        ]
    );
    assert_eq!(
        node_entry,
        [
            "/usr/local/bin/backroom",
            "node",
            "--config",
            "/etc/backroom/node.toml"
        ]
    );
    for subcommand in ["coordinator", "node", "enroll"] {
        let help = output(backroom().args([subcommand, "--help"]));
        assert!(help.status.success(), "backroom {subcommand} --help failed");
    }
    assert!(read(&deploy().join("containers/coordinator.Containerfile")).contains("EXPOSE 7443"));

    compose_services_have_valid_configurations();
    kubernetes_configuration_is_valid();
    launchd_plist_parses();
    systemd_units_verify();
}

fn compose_services_have_valid_configurations() {
    let Some(python) = yaml_python() else {
        return skip("no python3 with PyYAML to read deploy/compose/compose.yaml");
    };
    let compose_dir = deploy().join("compose");
    let compose = yaml_documents(&python, &compose_dir.join("compose.yaml"));
    let services = compose[0]["services"]
        .as_object()
        .unwrap_or_else(|| panic!("no services in compose.yaml"));
    let mut configs = BTreeSet::new();
    let mut data_volumes = BTreeSet::new();
    for (name, service) in services {
        let mut data_volume = None;
        let mut has_config = false;
        let env = backroom_env(
            service["environment"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        v.as_str().map_or_else(|| v.to_string(), str::to_owned),
                    )
                }),
        );
        for volume in service["volumes"].as_array().into_iter().flatten() {
            let volume = str_of(volume, "a volume");
            let parts: Vec<&str> = volume.split(':').collect();
            if let Some(file) = parts[0].strip_prefix("./") {
                let host = compose_dir.join(file);
                assert!(host.is_file(), "{name} mounts missing {}", host.display());
                let flag = match parts[1] {
                    "/etc/backroom/coordinator.toml" => "--coordinator",
                    "/etc/backroom/node.toml" => "--node",
                    other => panic!("{name} mounts {file} at {other}"),
                };
                config_check(flag, &host, &env);
                configs.insert(file.to_owned());
                has_config = true;
            } else if parts[1] == "/var/lib/backroom" {
                data_volume = Some(parts[0].to_owned());
            }
        }
        // Every daemon keeps its data in a volume of its own (the enrolment step writes into
        // the coordinator's).
        if has_config {
            let volume = data_volume.unwrap_or_else(|| panic!("{name} keeps no data volume"));
            assert!(
                data_volumes.insert(volume.clone()),
                "{name} shares {volume}"
            );
        }
    }
    assert_eq!(
        configs.into_iter().collect::<Vec<_>>(),
        [
            "coordinator.toml",
            "node-1.toml",
            "node-2.toml",
            "node-3.toml"
        ]
    );
    // The stores are three different stores of the synthetic world.
    let indexes: BTreeSet<i64> = (1..=3)
        .map(|i| {
            let node: toml::Table =
                toml::from_str(&read(&compose_dir.join(format!("node-{i}.toml"))))
                    .unwrap_or_else(|e| panic!("{e}"));
            node["data"]["store_index"].as_integer().unwrap_or(-1)
        })
        .collect();
    assert_eq!(indexes.len(), 3, "{indexes:?}");

    let docker_compose = Command::new("docker")
        .args(["compose", "version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if docker_compose {
        let out = output(
            Command::new("docker")
                .args(["compose", "-f"])
                .arg(compose_dir.join("compose.yaml"))
                .args(["config", "-q"]),
        );
        assert!(
            out.status.success(),
            "docker compose config: {}",
            text(&out.stderr)
        );
    } else {
        eprintln!("no docker compose plugin: compose.yaml checked as YAML only");
    }
}

fn kubernetes_configuration_is_valid() {
    let Some(python) = yaml_python() else {
        return skip("no python3 with PyYAML to read deploy/k8s");
    };
    let k8s = deploy().join("k8s");
    let config_map = yaml_documents(&python, &k8s.join("coordinator-config.yaml"));
    let coordinator_toml = str_of(
        &config_map[0]["data"]["coordinator.toml"],
        "coordinator.toml",
    );
    let deployment = &yaml_documents(&python, &k8s.join("coordinator-deployment.yaml"))[0];
    assert_eq!(deployment["spec"]["replicas"], 2);
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let env = backroom_env(
        container["env"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| {
                Some((
                    e["name"].as_str()?.to_owned(),
                    e["value"].as_str()?.to_owned(),
                ))
            }),
    );
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let file = dir.path().join("coordinator.toml");
    write(&file, coordinator_toml);
    config_check("--coordinator", &file, &env);
    let config: toml::Table = toml::from_str(coordinator_toml).unwrap_or_else(|e| panic!("{e}"));
    let setting = |key: &str| config.get(key).and_then(|v| v.as_str()).unwrap_or_default();
    assert!(
        setting("database_url").starts_with("postgres://"),
        "{config}"
    );
    assert!(setting("blob_store").starts_with("s3://"), "{config}");
    // Mounted where the image's entry point reads it.
    let mounted = container["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|m| {
            m["mountPath"] == "/etc/backroom/coordinator.toml" && m["subPath"] == "coordinator.toml"
        });
    assert!(mounted, "{container}");

    // The Secret holds what a replica needs of `backroom enroll`'s files: everything but the
    // offline model root key and the server certificate (each replica issues its own for
    // server_names); the init container copies each of them.
    let enrolled = dir.path().join("ca");
    let out = output(
        backroom()
            .args(["enroll", "--data-dir"])
            .arg(&enrolled)
            .args(["--admin", "a", "--out"])
            .arg(dir.path().join("a")),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let created: BTreeSet<String> = std::fs::read_dir(enrolled.join("pki"))
        .unwrap_or_else(|e| panic!("{e}"))
        .map(|e| {
            e.unwrap_or_else(|e| panic!("{e}"))
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    let kustomization = &yaml_documents(&python, &k8s.join("kustomization.yaml"))[0];
    let pki_secret = kustomization["secretGenerator"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|g| g["name"] == "backroom-pki")
        .unwrap_or_else(|| panic!("no backroom-pki secret in kustomization.yaml"));
    let in_secret: BTreeSet<String> = pki_secret["files"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|f| str_of(f, "a file").trim_start_matches("pki/").to_owned())
        .collect();
    let left_out: BTreeSet<String> = created.difference(&in_secret).cloned().collect();
    assert!(
        in_secret.is_subset(&created),
        "{in_secret:?} vs enroll's {created:?}"
    );
    assert_eq!(
        left_out.into_iter().collect::<Vec<_>>(),
        ["model-root.key", "server.key", "server.pem"],
        "enroll created {created:?}"
    );
    let init_script = pod["initContainers"][0]["command"].to_string();
    for file in &in_secret {
        assert!(
            init_script.contains(file),
            "the init container does not copy {file}"
        );
    }
}

fn launchd_plist_parses() {
    let plist = deploy().join("launchd/com.backroom.node.plist");
    let out = Command::new("python3")
        .args([
            "-c",
            "import json, plistlib, sys\n\
             print(json.dumps(plistlib.load(open(sys.argv[1], 'rb'))))",
        ])
        .arg(&plist)
        .output();
    let Ok(out) = out else {
        return skip("no python3 to parse the launchd plist");
    };
    assert!(
        out.status.success(),
        "{}: {}",
        plist.display(),
        text(&out.stderr)
    );
    let plist: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(plist["Label"], "com.backroom.node");
    assert_eq!(
        plist["ProgramArguments"],
        serde_json::json!([
            "/usr/local/bin/backroom",
            "node",
            "--config",
            "/usr/local/etc/backroom/node.toml"
        ])
    );
    assert_eq!(plist["KeepAlive"]["SuccessfulExit"], false);
}

/// `systemd-analyze verify` on the units, with the installed binary's path swapped for this
/// build's (verify insists that the program exists). Warnings fail it too.
fn systemd_units_verify() {
    let installed = Command::new("systemd-analyze")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !installed {
        eprintln!("no systemd-analyze: the units are not verified");
        return;
    }
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut units = Vec::new();
    for name in ["backroom-node.service", "backroom-coordinator.service"] {
        let unit = read(&deploy().join("systemd").join(name));
        assert!(
            unit.contains("ExecStart=/usr/local/bin/backroom "),
            "{name}"
        );
        let copy = dir.path().join(name);
        write(
            &copy,
            &unit.replace("/usr/local/bin/backroom", env!("CARGO_BIN_EXE_backroom")),
        );
        units.push(copy);
    }
    let out = output(Command::new("systemd-analyze").arg("verify").args(&units));
    let stderr = text(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify: {stderr}"
    );
}
