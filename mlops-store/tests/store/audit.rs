//! The audit log's contract on every backend, and tamper detection on disk.

use std::sync::Arc;

use mlops_core::Error;
use mlops_core::audit::{AuditEvent, AuditLog, ChainProblem, ChainVerdict};
use mlops_store::ObjectAuditLog;

use crate::{local_dir, local_root, roots};

#[tokio::test]
async fn concurrent_writers_never_fork_the_chain() {
    for root in roots("audit") {
        // Two instances (as two processes would have) and 8 tasks each.
        let logs = [
            Arc::new(ObjectAuditLog::new(&root)),
            Arc::new(ObjectAuditLog::new(&root)),
        ];
        let mut tasks = Vec::new();
        for t in 0..16 {
            let log = logs[t % 2].clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..5 {
                    log.append(AuditEvent::new(
                        format!("writer-{t}"),
                        "act",
                        format!("thing {i}"),
                    ))
                    .await
                    .unwrap();
                }
            }));
        }
        for (i, t) in tasks.into_iter().enumerate() {
            crate::join(&format!("appending task {i}"), t).await;
        }
        let all = logs[0].entries(1, 1000).await.unwrap();
        assert_eq!(
            all.iter().map(|e| e.seq).collect::<Vec<_>>(),
            (1..=80).collect::<Vec<_>>()
        );
        assert!(matches!(
            logs[1].verify().await.unwrap(),
            ChainVerdict::Intact { entries: 80, .. }
        ));
        assert_eq!(logs[0].entries(79, 10).await.unwrap().len(), 2);
    }
}

#[tokio::test]
async fn tampering_is_reported_at_the_first_bad_entry() {
    let root = local_root("audit-tamper");
    let dir = local_dir(&root).unwrap().join("audit");
    let log = ObjectAuditLog::new(&root);
    for i in 1..=6 {
        log.append(AuditEvent::new(
            "ci",
            "register",
            format!("model m version {i}"),
        ))
        .await
        .unwrap();
    }
    let file = |seq: u64| dir.join(format!("{seq:020}.json"));

    // Edit an entry's content.
    let original = std::fs::read_to_string(file(3)).unwrap();
    std::fs::write(file(3), original.replace("version 3", "version 33")).unwrap();
    assert_eq!(
        log.verify().await.unwrap(),
        ChainVerdict::Broken {
            seq: 3,
            problem: ChainProblem::Altered
        }
    );
    std::fs::write(file(3), &original).unwrap();

    // Swap two entries' files.
    let four = std::fs::read(file(4)).unwrap();
    let five = std::fs::read(file(5)).unwrap();
    std::fs::write(file(4), &five).unwrap();
    std::fs::write(file(5), &four).unwrap();
    assert_eq!(
        log.verify().await.unwrap(),
        ChainVerdict::Broken {
            seq: 4,
            problem: ChainProblem::Reordered
        }
    );
    std::fs::write(file(4), &four).unwrap();
    std::fs::write(file(5), &five).unwrap();

    // Garbage in an entry.
    std::fs::write(file(2), b"{").unwrap();
    assert_eq!(
        log.verify().await.unwrap(),
        ChainVerdict::Broken {
            seq: 2,
            problem: ChainProblem::Altered
        }
    );
    std::fs::write(
        file(2),
        std::fs::read(file(2)).map(|_| original.clone()).unwrap(),
    )
    .unwrap();
    // (entry 2 now holds entry 3's content: its number does not match)
    assert_eq!(
        log.verify().await.unwrap(),
        ChainVerdict::Broken {
            seq: 2,
            problem: ChainProblem::Reordered
        }
    );
}

#[tokio::test]
async fn a_removed_entry_is_missing() {
    let root = local_root("audit-missing");
    let dir = local_dir(&root).unwrap().join("audit");
    let log = ObjectAuditLog::new(&root);
    for i in 1..=4 {
        log.append(AuditEvent::new("ci", "act", format!("t{i}")))
            .await
            .unwrap();
    }
    std::fs::remove_file(dir.join(format!("{:020}.json", 2))).unwrap();
    assert_eq!(
        log.verify().await.unwrap(),
        ChainVerdict::Broken {
            seq: 2,
            problem: ChainProblem::Missing
        }
    );
}

#[tokio::test]
async fn bad_events_are_refused() {
    let log = ObjectAuditLog::new(&mlops_store::StoreRoot::open("memory://").unwrap());
    let err = log
        .append(AuditEvent::new("", "act", "t"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::InvalidInput { .. }) && err.to_string().contains("actor is empty"),
        "{err}"
    );
    let err = log
        .append(AuditEvent::new("a", "act", "t".repeat(5000)))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("target is 5000 bytes"), "{err}");
    let err = log
        .append(AuditEvent::new("a", "act", "t").detail("k", "v".repeat(70_000)))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("details are"), "{err}");
    assert!(matches!(
        log.verify().await.unwrap(),
        ChainVerdict::Intact {
            entries: 0,
            head: None
        }
    ));
}
