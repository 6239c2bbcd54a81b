//! `[registry]` trust and deployments that wait: signed versions only, a
//! refused version leaves the served one, a missing or refused model at start
//! leaves the service up and that model not ready, until it loads.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mlops::core::model::ModelArtifact;

use super::*;

/// The artifact of a model trained as [`register`] does, without registering it.
fn trained_artifact(shift: f64) -> ModelArtifact {
    trained(shift).artifact
}

/// Writes a trained model's bytes to `dir/name` for `mlops models register`;
/// its path and flavor.
fn artifact_file(dir: &Path, name: &str, shift: f64) -> (PathBuf, String) {
    let artifact = trained_artifact(shift);
    let path = dir.join(name);
    std::fs::write(&path, &artifact.bytes).unwrap();
    (path, artifact.flavor)
}

/// `mlops models register fraud FILE --flavor F [--sign] --json`: the new
/// version's number and its digest's hex.
fn register_cli(config: &Path, file: &Path, flavor: &str, sign: bool) -> (u64, String) {
    let mut args = vec![
        "--json",
        "models",
        "register",
        "fraud",
        file.to_str().unwrap(),
        "--flavor",
        flavor,
    ];
    if sign {
        args.push("--sign");
    }
    let (code, out, err) = mlops(&args, config);
    assert_eq!(code, Some(0), "mlops {args:?}: {err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v["signed_by"].as_str().is_some(),
        sign,
        "signed iff --sign: {v}"
    );
    let digest = v["digest"].as_str().unwrap();
    (
        v["version"].as_u64().unwrap(),
        digest.trim_start_matches("sha256:").to_owned(),
    )
}

/// `mlops models alias fraud champion VERSION`.
fn champion_cli(config: &Path, version: u64) {
    let (code, _, err) = mlops(
        &["models", "alias", "fraud", "champion", &version.to_string()],
        config,
    );
    assert_eq!(code, Some(0), "{err}");
}

/// The status code of `GET url` with the test key, and the answer's body.
async fn get(url: &str) -> (u16, String) {
    let answer = exchange("GET", url).await;
    let code = answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("GET {url}: no status line in {answer:?}"));
    let body = answer
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_owned());
    (code, body)
}

/// The admin view of `fraud`.
async fn admin_view(base: &str) -> serde_json::Value {
    let (code, body) = get(&format!("{base}/admin/models/fraud")).await;
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Waits until `/v2/models/fraud/ready` says ready (200).
async fn wait_ready(base: &str, what: &str) {
    let deadline = Instant::now() + LIMIT;
    loop {
        let (code, body) = get(&format!("{base}/v2/models/fraud/ready")).await;
        if code == 200 {
            return;
        }
        assert_eq!(code, 400, "{body}");
        assert!(
            Instant::now() < deadline,
            "{what}: not ready within {LIMIT:?}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `mlops health --url BASE [--ready]`: its exit code.
fn health_cli(base: &str, ready: bool) -> Option<i32> {
    let mut command = Command::new(env!("CARGO_BIN_EXE_mlops"));
    command.args(["health", "--url", base, "--timeout", "20s"]);
    if ready {
        command.arg("--ready");
    }
    output_within("mlops health", &mut command, LIMIT)
        .status
        .code()
}

/// The service comes up on a store without the model: live, not ready (the
/// server and the model; the reason in the log and the admin view; inference
/// 503); `mlops models register` and `alias` make it serve, with no restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_alias_at_start_leaves_the_model_not_ready_until_it_appears() {
    let dir = temp_dir("waiting");
    let path = dir.path().join("mlops.toml");
    std::fs::write(&path, config(dir.path())).unwrap();
    let Served {
        child, base, logs, ..
    } = start(&path);

    let waiting = wait_for_log(&logs, "the waiting deployment's log line", &[], |m, _| {
        m.starts_with("deployed, not ready")
    });
    assert_eq!(waiting["fields"]["deployment"], "fraud", "{waiting}");
    assert!(
        waiting["fields"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("fraud")),
        "the log does not say why: {waiting}"
    );
    assert_eq!(get(&format!("{base}/v2/health/live")).await.0, 200);
    let (code, body) = get(&format!("{base}/v2/health/ready")).await;
    assert_eq!(code, 400, "{body}");
    let (code, body) = get(&format!("{base}/v2/models/fraud/ready")).await;
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("\"ready\":false"), "{body}");
    assert_eq!(health_cli(&base, false), Some(0));
    assert_eq!(health_cli(&base, true), Some(1));
    let view = admin_view(&base).await;
    assert!(
        view["not_ready"]
            .as_str()
            .is_some_and(|r| r.contains("fraud")),
        "the admin view does not say why: {view}"
    );
    // The repository index lists it as Triton lists a model that failed to
    // load, with the reason.
    let index = exchange("POST", &format!("{base}/v2/repository/index")).await;
    assert!(
        index.contains(r#""state":"UNAVAILABLE""#) && index.contains(r#""reason""#),
        "{index}"
    );
    let client = RemoteServer::new(&base).unwrap().with_api_key(KEY);
    match client.infer("fraud", None, request()).await.unwrap_err() {
        Error::Unavailable { reason, .. } => assert!(reason.contains("not ready"), "{reason}"),
        other => panic!("inference while waiting: expected 503, got {other}"),
    }

    // Registered and aliased from the command line: the poller loads it.
    let (file, flavor) = artifact_file(dir.path(), "model.bin", 0.0);
    let (v1, _) = register_cli(&path, &file, &flavor, false);
    // A version without the alias changes nothing yet.
    assert_eq!(get(&format!("{base}/v2/models/fraud/ready")).await.0, 400);
    champion_cli(&path, v1);
    wait_ready(&base, "after the alias was set").await;
    assert_eq!(get(&format!("{base}/v2/health/ready")).await.0, 200);
    assert_eq!(health_cli(&base, true), Some(0));
    let index = exchange("POST", &format!("{base}/v2/repository/index")).await;
    assert!(index.contains(r#""state":"READY""#), "{index}");
    let answer = client.infer("fraud", None, request()).await.unwrap();
    assert_eq!(answer.model_version.as_deref(), Some("1"));
    assert_eq!(
        admin_view(&base).await["not_ready"],
        serde_json::Value::Null
    );
    wait_for_log(&logs, "the deployment's recovery log line", &[], |m, v| {
        m == "deployment reloaded: its versions serve" && v["fields"]["deployment"] == "fraud"
    });
    let exited = stop(child).await;
    assert!(exited.success(), "exit status {exited:?}");
}

/// A config that trusts the key pair `keys/release.{key,pub}` of `dir` and
/// requires signatures.
fn signed_config(dir: &Path) -> String {
    let keys = dir.join("keys");
    format!(
        "{}\n[registry]\nrequire_signatures = true\n\
         signing_key = {{ id = \"release\", key_file = \"{}\" }}\n\n\
         [[registry.trusted_keys]]\nid = \"release\"\npublic_key_file = \"{}\"\n",
        config(dir),
        keys.join("release.key").display(),
        keys.join("release.pub").display()
    )
}

/// `mlops models keygen --out keys --id id`, bounded in time.
fn run_keygen(what: &str, keys: &Path, id: &str) -> std::process::Output {
    output_within(
        what,
        Command::new(env!("CARGO_BIN_EXE_mlops")).args([
            "models",
            "keygen",
            "--out",
            keys.to_str().unwrap(),
            "--id",
            id,
        ]),
        LIMIT,
    )
}

/// `mlops models keygen` into `dir/keys`: the private key is its owner's only.
fn keygen(dir: &Path) {
    let keys = dir.join("keys");
    let out = run_keygen("mlops models keygen", &keys, "release");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("[[registry.trusted_keys]]"),
        "keygen shows no config: {text}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(keys.join("release.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the private key's mode is {mode:o}");
    }
    let public = std::fs::read_to_string(keys.join("release.pub")).unwrap();
    assert!(public.starts_with("mlops-ed25519-public:"), "{public}");
    // Never over an existing key.
    let again = run_keygen("mlops models keygen (again)", &keys, "release");
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("never overwritten"));
    assert_eq!(
        std::fs::read_to_string(keys.join("release.pub")).unwrap(),
        public
    );
}

/// Waits for the poller's refusal of `version`, whose error must contain
/// `why`; returns the error.
fn wait_refusal(logs: &Lines, version: u64, why: &str) -> String {
    let logged = wait_for_log(
        logs,
        &format!("the refusal of version {version}"),
        &[],
        |m, v| {
            m == "reload refused: serving the versions it has"
                && v["fields"]["error"]
                    .as_str()
                    .is_some_and(|e| e.contains(&format!("version {version}")))
        },
    );
    let error = logged["fields"]["error"].as_str().unwrap().to_owned();
    assert!(error.contains(why), "{why:?} not in the refusal: {logged}");
    error
}

/// With trusted keys, the service refuses an unsigned version, one whose
/// manifest was altered after signing and one whose artifact bytes were: each
/// refusal is logged and v1 goes on answering. Restarted with only an unsigned
/// champion, it comes up not ready, saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_serves_only_signed_versions_and_keeps_the_one_it_has() {
    let dir = temp_dir("signed");
    keygen(dir.path());
    let path = dir.path().join("mlops.toml");
    std::fs::write(&path, signed_config(dir.path())).unwrap();
    let (file, flavor) = artifact_file(dir.path(), "v1.bin", 0.0);
    let (v1, _) = register_cli(&path, &file, &flavor, true);
    champion_cli(&path, v1);
    let (code, out, err) = mlops(&["models", "verify", "fraud", "1"], &path);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("signed by release, signature verified"),
        "{out}"
    );

    let Served {
        child, base, logs, ..
    } = start(&path);
    let client = RemoteServer::new(&base).unwrap().with_api_key(KEY);
    let served_v1 = async || {
        let answer = client.infer("fraud", None, request()).await.unwrap();
        assert_eq!(answer.model_version.as_deref(), Some("1"));
    };
    served_v1().await;

    // Unsigned.
    let (file, flavor) = artifact_file(dir.path(), "v2.bin", 0.5);
    let (v2, _) = register_cli(&path, &file, &flavor, false);
    champion_cli(&path, v2);
    wait_refusal(&logs, v2, "not signed");
    served_v1().await;
    let view = admin_view(&base).await;
    assert!(
        view["last_reload_error"]
            .as_str()
            .is_some_and(|e| e.contains("version 2")),
        "{view}"
    );
    assert_eq!(get(&format!("{base}/v2/models/fraud/ready")).await.0, 200);

    // Signed, then its manifest altered in the store.
    let (file, flavor) = artifact_file(dir.path(), "v3.bin", 0.3);
    let (v3, _) = register_cli(&path, &file, &flavor, true);
    let manifest = dir.path().join(format!(
        "store/registry/models/fraud/versions/{v3:020}.json"
    ));
    let text = std::fs::read_to_string(&manifest).unwrap();
    assert!(text.contains("mlops-cli"), "{text}");
    std::fs::write(&manifest, text.replace("mlops-cli", "someone-else")).unwrap();
    champion_cli(&path, v3);
    wait_refusal(&logs, v3, "does not verify");
    served_v1().await;

    // Signed, then its artifact's bytes altered in the store.
    let (file, flavor) = artifact_file(dir.path(), "v4.bin", -0.3);
    let (v4, digest) = register_cli(&path, &file, &flavor, true);
    let blob = dir
        .path()
        .join(format!("store/registry/blobs/sha256/{digest}"));
    let mut bytes = std::fs::read(&blob).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&blob, bytes).unwrap();
    champion_cli(&path, v4);
    wait_refusal(&logs, v4, "digest");
    served_v1().await;
    // `mlops models verify` finds both (exit 3).
    for v in [v3, v4] {
        let (code, _, err) = mlops(&["models", "verify", "fraud", &v.to_string()], &path);
        assert_eq!(code, Some(3), "version {v}: {err}");
    }
    // A [registry] change on SIGHUP is not applied silently: it says it waits
    // for a restart.
    let signed = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        signed.replace("require_signatures = true", "require_signatures = false"),
    )
    .unwrap();
    child.signal("HUP");
    wait_for_log(&logs, "the [registry] change being refused", &[], |m, _| {
        m == "changes to [registry] take effect on restart only"
    });
    served_v1().await;
    std::fs::write(&path, signed).unwrap();
    let exited = stop(child).await;
    assert!(exited.success(), "exit status {exited:?}");

    // Restarted with only the unsigned version as champion: up, not ready,
    // saying why; back on v1, it serves without a restart.
    champion_cli(&path, v2);
    let Served {
        child, base, logs, ..
    } = start(&path);
    let waiting = wait_for_log(&logs, "the waiting deployment's log line", &[], |m, _| {
        m.starts_with("deployed, not ready")
    });
    assert!(
        waiting["fields"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("version 2") && r.contains("not signed")),
        "{waiting}"
    );
    assert_eq!(get(&format!("{base}/v2/health/ready")).await.0, 400);
    assert_eq!(get(&format!("{base}/v2/models/fraud/ready")).await.0, 400);
    let view = admin_view(&base).await;
    assert!(
        view["not_ready"]
            .as_str()
            .is_some_and(|r| r.contains("not signed")),
        "{view}"
    );
    champion_cli(&path, v1);
    wait_ready(&base, "after champion moved back to the signed v1").await;
    let client = RemoteServer::new(&base).unwrap().with_api_key(KEY);
    let answer = client.infer("fraud", None, request()).await.unwrap();
    assert_eq!(answer.model_version.as_deref(), Some("1"));
    let exited = stop(child).await;
    assert!(exited.success(), "exit status {exited:?}");
}

/// Broken `[registry]` settings are config errors (exit 2) naming the setting,
/// the key and the file, from `mlops check`, `mlops serve` and `mlops models`.
#[test]
fn registry_config_errors_name_the_key_the_file_and_what_was_expected() {
    let dir = temp_dir("registry-errors");
    keygen(dir.path());
    let keys = dir.path().join("keys");
    let good = signed_config(dir.path());
    let public = keys.join("release.pub").display().to_string();
    let secret = keys.join("release.key").display().to_string();
    std::fs::write(keys.join("garbage.pub"), "hello\n").unwrap();
    std::fs::write(keys.join("short.pub"), "mlops-ed25519-public:abcd\n").unwrap();
    let garbage = keys.join("garbage.pub").display().to_string();
    let short = keys.join("short.pub").display().to_string();
    let missing = keys.join("missing.pub").display().to_string();
    let path = dir.path().join("mlops.toml");

    // `mlops check` passes the good one, and reads no private key.
    std::fs::write(&path, &good).unwrap();
    let (code, _, err) = mlops(&["check"], &path);
    assert_eq!(code, Some(0), "{err}");
    std::fs::write(&path, good.replace(&secret, "/nonexistent/release.key")).unwrap();
    let (code, _, err) = mlops(&["check"], &path);
    assert_eq!(code, Some(0), "check must not need the private key: {err}");

    for (broken, needles) in [
        (
            good.replace(&public, &missing),
            vec![
                "registry.trusted_keys[0]",
                "release",
                missing.as_str(),
                "cannot read",
            ],
        ),
        (
            good.replace(&public, &garbage),
            vec![
                "registry.trusted_keys[0]",
                garbage.as_str(),
                "64 hex characters",
            ],
        ),
        (
            good.replace(&public, &short),
            vec![short.as_str(), "mlops-ed25519-public:", "64 hex characters"],
        ),
        (
            good.replace(&public, &secret),
            vec!["registry.trusted_keys[0]", "private key"],
        ),
        (
            good.replace(
                "id = \"release\"\npublic_key_file",
                "id = \"re lease\"\npublic_key_file",
            ),
            vec!["registry.trusted_keys[0].id", "re lease"],
        ),
        (
            // No trusted key left.
            good[..good.find("[[registry.trusted_keys]]").unwrap()].to_owned(),
            vec!["registry.require_signatures", "trusted_keys"],
        ),
        (
            good.replace(&secret, "mlops-ed25519-secret:00"),
            vec!["registry.signing_key.key_file", "never written"],
        ),
        (
            good.replace("require_signatures = true", "require_signature = true"),
            vec!["unknown field `require_signature`"],
        ),
        (
            good.replace(&public, "${MLOPS_TEST_UNSET_KEY_PATH}"),
            vec![
                "registry.trusted_keys[0].public_key_file",
                "MLOPS_TEST_UNSET_KEY_PATH",
            ],
        ),
    ] {
        std::fs::write(&path, &broken).unwrap();
        for command in [&["check"][..], &["serve"], &["models", "list"]] {
            let (code, _, err) = mlops_within(command, &path, FAST);
            assert_eq!(code, Some(2), "mlops {command:?}: {err}");
            for n in &needles {
                assert!(err.contains(n), "mlops {command:?}: {n:?} not in {err}");
            }
            assert!(
                !err.contains(&std::fs::read_to_string(&secret).unwrap()[22..]),
                "an error shows the private key: {err}"
            );
        }
    }

    // --sign needs a signing key that is the private half of its trusted key.
    let (file, flavor) = artifact_file(dir.path(), "m.bin", 0.0);
    let register = |config: &str| {
        std::fs::write(&path, config).unwrap();
        mlops(
            &[
                "models",
                "register",
                "fraud",
                file.to_str().unwrap(),
                "--flavor",
                &flavor,
                "--sign",
            ],
            &path,
        )
    };
    let no_signing_key = good
        .lines()
        .filter(|l| !l.starts_with("signing_key"))
        .collect::<Vec<_>>()
        .join("\n");
    for (config, needles) in [
        (no_signing_key, vec!["registry.signing_key", "not set"]),
        (
            good.replace(&secret, &public),
            vec!["registry.signing_key", "public key"],
        ),
        (
            good.replace(&secret, &keys.join("gone.key").display().to_string()),
            vec!["registry.signing_key", "gone.key", "cannot read"],
        ),
    ] {
        let (code, _, err) = register(&config);
        assert_eq!(code, Some(2), "{err}");
        for n in needles {
            assert!(err.contains(n), "{n:?} not in {err}");
        }
    }
    // A second pair: its private key signs what the trusted key refuses.
    let other = run_keygen("mlops models keygen (other)", &keys, "other");
    assert_eq!(other.status.code(), Some(0));
    let (code, _, err) =
        register(&good.replace(&secret, &keys.join("other.key").display().to_string()));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("not the private half"), "{err}");
    let (code, _, err) = register(&good);
    assert_eq!(code, Some(0), "{err}");
    // A bad key id for keygen.
    let bad = run_keygen("mlops models keygen (bad id)", &keys, "../escape");
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not a key id"));
    assert!(!dir.path().join("escape.key").exists());
}

#[test]
fn audit_anchors_catch_a_log_cut_short() {
    let dir = temp_dir("anchor");
    keygen(dir.path());
    let path = dir.path().join("mlops.toml");
    std::fs::write(&path, signed_config(dir.path())).unwrap();
    // Something to audit: a signed registration.
    let (file, flavor) = artifact_file(dir.path(), "m.bin", 0.0);
    register_cli(&path, &file, &flavor, true);
    // Its lineage, as JSON: signed by the release key, registered by the CLI.
    let (code, out, err) = mlops(&["models", "lineage", "fraud", "1"], &path);
    assert_eq!(code, Some(0), "{err}");
    let lineage: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(lineage["signed_by"], "release", "{lineage}");
    assert_eq!(lineage["version"], 1, "{lineage}");
    let (code, _, err) = mlops(&["models", "lineage", "fraud", "9"], &path);
    assert_eq!(code, Some(1), "{err}");
    let (code, out, err) = mlops(&["--json", "audit", "anchor"], &path);
    assert_eq!(code, Some(0), "{err}");
    let anchor: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(anchor["key_id"], "release", "{anchor}");
    let last = anchor["seq"].as_u64().unwrap();
    let (code, out, err) = mlops(&["audit", "verify"], &path);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("1 anchors hold"), "{out}");
    // The newest entry removed: the chain alone still holds, the anchor not.
    let entry = dir
        .path()
        .join("store")
        .join(format!("audit/{last:020}.json"));
    std::fs::remove_file(&entry).unwrap();
    let (code, _, err) = mlops(&["audit", "verify"], &path);
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains("cut off"), "{err}");
    // Without a signing key there is nothing to anchor with: exit 2 naming it.
    std::fs::write(&path, config(dir.path())).unwrap();
    let (code, _, err) = mlops(&["audit", "anchor"], &path);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("registry.signing_key"), "{err}");
}

#[test]
fn an_access_policy_lets_only_its_release_principal_move_champion() {
    let dir = temp_dir("access");
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "[roles.ci]\ngrants = [{ actions = [\"register\"], resources = [\"model:*\"] }]\n\
         [roles.release]\ngrants = [{ actions = [\"promote\"], resources = [\"alias:*@champion\"] }]\n\
         [principals]\nci = [\"ci\"]\nrelease = [\"release\"]\n",
    )
    .unwrap();
    let path = dir.path().join("mlops.toml");
    let as_principal = |who: &str| {
        let text = format!(
            "{}\n[access]\npolicy_file = \"{}\"\nprincipal = \"{who}\"\n",
            config(dir.path()),
            policy.display()
        );
        std::fs::write(&path, text).unwrap();
    };
    as_principal("ci");
    let (file, flavor) = artifact_file(dir.path(), "m.bin", 0.0);
    register_cli(&path, &file, &flavor, false);
    let (code, _, err) = mlops(&["models", "alias", "fraud", "champion", "1"], &path);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("\"ci\" may not promote alias:fraud@champion"),
        "{err}"
    );
    as_principal("release");
    let (code, _, err) = mlops(&["models", "alias", "fraud", "champion", "1"], &path);
    assert_eq!(code, Some(0), "{err}");
    let (code, out, err) = mlops(&["--json", "audit", "tail", "-n", "50"], &path);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("access.deny") && out.contains("access.allow"),
        "{out}"
    );
    // A policy that does not parse fails the check, naming the key.
    std::fs::write(&policy, "[roles.x]\ngrants = []\n").unwrap();
    let (code, _, err) = mlops(&["check"], &path);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("access.policy_file"), "{err}");
}
