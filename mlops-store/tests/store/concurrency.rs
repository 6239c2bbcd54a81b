//! Many writers at once: 8 tasks, then 4 OS processes, registering versions of one
//! model on the same root. Versions must come out exactly 1..N, none lost or
//! duplicated, each manifest pointing at its own artifact.

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use mlops_core::model::{ModelArtifact, ModelMetadata, ModelRegistry, VersionSelector};
use mlops_core::testkit::process::ChildGuard;
use mlops_store::{ObjectRegistry, StoreRoot};

use crate::{local_root, memory_root, open_root, roots};

const PER_WRITER: usize = 6;

/// A unique artifact per (writer, index), so each version's content says who
/// registered it.
fn artifact(writer: &str, i: usize) -> ModelArtifact {
    ModelArtifact::new("burn-mlp", format!("{writer}/{i}").into_bytes())
}

async fn check(root: &StoreRoot, expected: &BTreeSet<String>) {
    let r = ObjectRegistry::new(root);
    let versions = r.list_versions("m").await.unwrap();
    assert_eq!(
        versions.iter().map(|v| v.version).collect::<Vec<_>>(),
        (1..=expected.len() as u64).collect::<Vec<_>>()
    );
    let mut seen = BTreeSet::new();
    for v in &versions {
        let (_, a) = r
            .load_artifact("m", &VersionSelector::Number(v.version))
            .await
            .unwrap();
        let content = String::from_utf8(a.bytes.to_vec()).unwrap();
        assert_eq!(
            v.metadata.tags["writer"], content,
            "manifest {} points at its own artifact",
            v.version
        );
        assert!(seen.insert(content), "registered twice");
    }
    assert_eq!(&seen, expected);
}

async fn register_many(root: StoreRoot, writer: String) {
    let r = ObjectRegistry::new(&root);
    for i in 0..PER_WRITER {
        let mut m = ModelMetadata::default();
        m.tags.insert("writer".into(), format!("{writer}/{i}"));
        r.register("m", artifact(&writer, i), m).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_tasks_register_at_once() {
    for root in roots("tasks") {
        let mut handles = Vec::new();
        let mut expected = BTreeSet::new();
        for t in 0..8 {
            let writer = format!("task{t}");
            expected.extend((0..PER_WRITER).map(|i| format!("{writer}/{i}")));
            handles.push(tokio::spawn(register_many(root.clone(), writer)));
        }
        for (t, h) in handles.into_iter().enumerate() {
            crate::join(&format!("registering task {t}"), h).await;
        }
        check(&root, &expected).await;
        // Aliases moved concurrently never lose an update: each task moves its own.
        let r = Arc::new(ObjectRegistry::new(&root));
        let mut handles = Vec::new();
        for t in 0..8u64 {
            let r = r.clone();
            handles.push(tokio::spawn(async move {
                r.set_alias("m", &format!("alias{t}"), t + 1).await.unwrap()
            }));
        }
        for (t, h) in handles.into_iter().enumerate() {
            crate::join(&format!("alias task {t}"), h).await;
        }
        assert_eq!(r.aliases("m").await.unwrap().len(), 8);
    }
}

/// Four separate OS processes (this test binary re-run as workers) on one root, for
/// the local disk and each cloud test server.
#[test]
fn four_processes_register_at_once() {
    // Every root but memory:// (which a process cannot share).
    let shared: Vec<_> = roots("processes")
        .into_iter()
        .filter(|r| !r.url().starts_with("memory://"))
        .collect();
    assert!(
        shared.iter().any(|r| r.url().starts_with("file://")),
        "the local disk is always among the roots"
    );
    for root in shared {
        four_processes_on(&root);
    }
}

fn four_processes_on(root: &StoreRoot) {
    let url = root.url().to_owned();
    let exe = std::env::current_exe().unwrap();
    // Guarded: a failed assertion kills and reaps the workers still running.
    let mut children: Vec<_> = (0..4)
        .map(|p| {
            let mut child = Command::new(&exe);
            child
                .args([
                    "--exact",
                    "concurrency::worker_process",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env("MLOPS_TEST_WORKER_ROOT", &url)
                .env("MLOPS_TEST_WORKER_NAME", format!("proc{p}"))
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            // The workers use the S3 server this process found or started.
            if let Some((endpoint, bucket)) = crate::services::s3() {
                child
                    .env("MLOPS_TEST_S3_ENDPOINT", endpoint)
                    .env("MLOPS_TEST_S3_BUCKET", bucket);
            }
            let what = format!("worker process proc{p} on {url}");
            let mut guard = ChildGuard::spawn(&what, &mut child);
            let out = (guard.stdout_lines(), guard.stderr_lines());
            (what, guard, out)
        })
        .collect();
    for (what, guard, (stdout, stderr)) in &mut children {
        let status = guard.wait_within(Duration::from_secs(120));
        assert!(
            status.success(),
            "{what} failed ({status}); its output:\n{}\n{}",
            stdout.recent(),
            stderr.recent()
        );
        // It ran the worker test, not nothing (a filter that matched no test).
        let summary = stdout.wait_for("its test summary", Duration::from_secs(30), |l| {
            l.starts_with("test result:").then(|| l.to_owned())
        });
        assert!(summary.contains(" 1 passed"), "{what}: {summary}");
    }
    let expected: BTreeSet<String> = (0..4)
        .flat_map(|p| (0..PER_WRITER).map(move |i| format!("proc{p}/{i}")))
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(check(root, &expected));
}

/// The worker of `four_processes_register_at_once`; when run without its
/// environment (as in a normal test run) it has nothing to do.
#[test]
fn worker_process() {
    let (Ok(url), Ok(name)) = (
        std::env::var("MLOPS_TEST_WORKER_ROOT"),
        std::env::var("MLOPS_TEST_WORKER_NAME"),
    ) else {
        return;
    };
    let root = open_root(&url);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(register_many(root, name));
}

/// Create-if-absent stays one conditional request whatever the size: with the
/// multipart threshold below the object size, racing writers of one name still
/// see exactly one winner, and the object holds the winner's bytes. (Above the
/// threshold it used to be a check, then an upload: every writer could win.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_if_absent_has_one_winner_above_the_multipart_threshold() {
    for test_root in [memory_root(), local_root("create-race")] {
        let root = test_root.clone().with_multipart_threshold(16);
        for round in 0..20 {
            let name = format!("control/{round}.json");
            let writers: Vec<_> = (0..8u8)
                .map(|w| {
                    let (root, name) = (root.clone(), name.clone());
                    tokio::spawn(async move {
                        let bytes = bytes::Bytes::from(vec![w; 4096]);
                        (w, root.put_if_absent(&name, bytes).await.unwrap())
                    })
                })
                .collect();
            let mut winners = Vec::new();
            for (i, w) in writers.into_iter().enumerate() {
                let (writer, won) = crate::join(&format!("round {round}, writer {i}"), w).await;
                if won {
                    winners.push(writer);
                }
            }
            assert_eq!(winners.len(), 1, "round {round}: winners {winners:?}");
            let stored = root.get(&name).await.unwrap();
            assert!(stored.iter().all(|b| *b == winners[0]) && stored.len() == 4096);
        }
    }
}
