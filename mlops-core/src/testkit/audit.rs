//! [`AuditLog`]: append-only, numbered, hash-chained and verifiable.

use crate::audit::{AuditEvent, AuditLog, ChainVerdict};

/// Runs the audit log contract on an empty `log`.
pub async fn conformance(log: &dyn AuditLog) {
    match log.verify().await.expect("verify an empty log") {
        ChainVerdict::Intact {
            entries: 0,
            head: None,
        } => {}
        other => panic!("an empty log verifies as intact with no head, not {other:?}"),
    }
    let mut previous = None;
    for i in 0..5u64 {
        let entry = log
            .append(
                AuditEvent::new("conformance", "model.register", format!("model m v{i}"))
                    .detail("i", i.to_string()),
            )
            .await
            .expect("append");
        if let Some(p) = previous {
            assert_eq!(entry.seq, p + 1, "sequence numbers follow each other");
        }
        previous = Some(entry.seq);
    }
    let entries = log.entries(0, 100).await.expect("entries");
    assert_eq!(entries.len(), 5, "every appended entry is read back");
    assert!(
        entries.windows(2).all(|w| w[0].seq < w[1].seq),
        "entries come in sequence order"
    );
    assert_eq!(
        entries[2].event.details.get("i").map(String::as_str),
        Some("2")
    );
    let page = log.entries(entries[3].seq, 1).await.expect("a page");
    assert_eq!(page.len(), 1, "limit is honoured");
    assert_eq!(
        page[0].seq, entries[3].seq,
        "from_seq is where the page starts"
    );
    match log.verify().await.expect("verify") {
        ChainVerdict::Intact {
            entries: 5,
            head: Some(_),
        } => {}
        other => panic!("five appended entries verify as intact, not {other:?}"),
    }
}
