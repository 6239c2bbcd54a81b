//! Anchors of the audit log: signed statements of its head ("entry N has hash
//! H", ed25519), so that cutting entries off the end, or rewriting the tail
//! consistently (every hash recomputed), is detected, not only an edit in the
//! middle, which the hash chain alone catches.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use mlops_core::audit::{AuditLog, ChainVerdict};
use mlops_core::{Error, Result};
use serde::{Deserialize, Serialize};

use crate::audit::ObjectAuditLog;

/// A signed statement that the audit log's entry `seq` had hash `hash` at `at`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditAnchor {
    /// The entry anchored (the head when it was signed).
    pub seq: u64,
    /// Its hash.
    pub hash: String,
    /// When the anchor was signed.
    pub at: DateTime<Utc>,
    /// The signing key's id.
    pub key_id: String,
    /// The ed25519 signature of [`AuditAnchor::message`], hex.
    pub signature: String,
}

impl AuditAnchor {
    /// The bytes signed: a fixed prefix, the sequence, the hash and the time.
    pub fn message(seq: u64, hash: &str, at: &DateTime<Utc>) -> Vec<u8> {
        format!("mlops-audit-anchor:v1\n{seq}\n{hash}\n{}", at.to_rfc3339()).into_bytes()
    }

    /// Whether a key of `trusted` (by id) signed this anchor.
    fn signed_by(
        &self,
        trusted: &BTreeMap<String, VerifyingKey>,
    ) -> std::result::Result<(), String> {
        let key = trusted
            .get(&self.key_id)
            .ok_or_else(|| format!("signed by key '{}', which is not trusted", self.key_id))?;
        let bytes = hex::decode(&self.signature).map_err(|e| format!("signature: {e}"))?;
        let signature =
            ed25519_dalek::Signature::from_slice(&bytes).map_err(|e| format!("signature: {e}"))?;
        key.verify_strict(&Self::message(self.seq, &self.hash, &self.at), &signature)
            .map_err(|_| format!("its signature by key '{}' does not verify", self.key_id))
    }
}

/// What checking the chain against its anchors found.
#[derive(Debug, Clone, PartialEq)]
pub enum AnchoredVerdict {
    /// The chain is intact and holds every anchor.
    Intact {
        /// Entries checked.
        entries: u64,
        /// Anchors checked.
        anchors: usize,
        /// The newest anchored entry, if any anchor exists.
        latest_anchor: Option<u64>,
    },
    /// The chain, or an anchor, does not hold; the first problem found.
    Broken {
        /// What is wrong, naming the entry or anchor.
        reason: String,
    },
}

/// Beside the entries' prefix, not under it: a listing of `audit/` is the
/// chain's.
fn anchor_path(seq: u64) -> String {
    format!("audit-anchors/{seq:020}.json")
}

impl ObjectAuditLog {
    /// Signs the current head with `key` (named `key_id`) and stores the anchor
    /// at `audit-anchors/<seq>.json` (create-only: an anchor of that entry
    /// already there is returned). Run it periodically (`mlops audit anchor`),
    /// and keep the public key where the log's writers cannot change it.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for an empty log or an unusable key id;
    /// [`Error::Integrity`] when the chain is broken (a broken chain is not
    /// anchored); storage errors.
    pub async fn anchor(&self, key_id: &str, key: &SigningKey) -> Result<AuditAnchor> {
        if key_id.is_empty()
            || !key_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(Error::invalid_input(
                "anchor key id",
                format!("{key_id:?}: 1 to 64 letters, digits, '-', '_' or '.'"),
            ));
        }
        let (seq, hash) = match self.verify().await? {
            ChainVerdict::Intact {
                entries,
                head: Some(head),
            } => (entries, head),
            ChainVerdict::Intact { .. } => {
                return Err(Error::invalid_input(
                    "audit log",
                    "it is empty: nothing to anchor",
                ));
            }
            ChainVerdict::Broken { seq, problem } => {
                return Err(Error::integrity(
                    "audit log",
                    format!("the chain breaks at entry {seq} ({problem:?}): it is not anchored"),
                ));
            }
        };
        let at = Utc::now();
        let signature = key.sign(&AuditAnchor::message(seq, &hash, &at));
        let anchor = AuditAnchor {
            seq,
            hash,
            at,
            key_id: key_id.to_owned(),
            signature: hex::encode(signature.to_bytes()),
        };
        let bytes = serde_json::to_vec_pretty(&anchor)
            .map_err(|e| Error::invalid_input("audit anchor", e.to_string()))?;
        if !self
            .root()
            .put_if_absent(&anchor_path(seq), bytes.into())
            .await?
        {
            // Anchored already (another process, or no entry since).
            return self
                .read_anchor(seq)
                .await?
                .ok_or_else(|| Error::conflict("audit anchor", "it vanished after being written"));
        }
        Ok(anchor)
    }

    async fn read_anchor(&self, seq: u64) -> Result<Option<AuditAnchor>> {
        let Some(bytes) = self.root().get_opt(&anchor_path(seq)).await? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::integrity(anchor_path(seq), format!("not an anchor: {e}")))
    }

    /// Checks the chain and every anchor against it: each anchor signed by a
    /// key of `trusted`, its entry present with its hash. Entries cut off after
    /// an anchor, or a tail rewritten under one, break it.
    ///
    /// # Errors
    /// Storage errors only: what is wrong with the log is the verdict.
    pub async fn verify_anchored(
        &self,
        trusted: &BTreeMap<String, VerifyingKey>,
    ) -> Result<AnchoredVerdict> {
        let entries = match self.verify().await? {
            ChainVerdict::Intact { entries, .. } => entries,
            ChainVerdict::Broken { seq, problem } => {
                return Ok(AnchoredVerdict::Broken {
                    reason: format!("the chain breaks at entry {seq}: {problem:?}"),
                });
            }
        };
        let anchored = self.root().list_numbered("audit-anchors", ".json").await?;
        for &seq in &anchored {
            let anchor = match self.read_anchor(seq).await {
                Ok(Some(a)) => a,
                Ok(None) => continue,
                Err(e) => {
                    return Ok(AnchoredVerdict::Broken {
                        reason: e.to_string(),
                    });
                }
            };
            let broken = |why: String| Ok(AnchoredVerdict::Broken { reason: why });
            if anchor.seq != seq {
                return broken(format!("anchor {seq} names entry {}", anchor.seq));
            }
            if let Err(why) = anchor.signed_by(trusted) {
                return broken(format!("anchor of entry {seq}: {why}"));
            }
            if seq > entries {
                return broken(format!(
                    "entry {seq} was anchored on {} but the log ends at entry {entries}: \
                     entries were cut off",
                    anchor.at.to_rfc3339()
                ));
            }
            let entry = self.entries(seq, 1).await?;
            if entry.first().map(|e| e.hash.as_str()) != Some(anchor.hash.as_str()) {
                return broken(format!(
                    "entry {seq} no longer has the hash anchored on {}: the log was rewritten",
                    anchor.at.to_rfc3339()
                ));
            }
        }
        Ok(AnchoredVerdict::Intact {
            entries,
            anchors: anchored.len(),
            latest_anchor: anchored.last().copied(),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use mlops_core::audit::{AuditEntry, AuditEvent};
    use object_store::ObjectStoreExt as _;

    use super::*;
    use crate::StoreRoot;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    async fn log_of(n: u64) -> (StoreRoot, ObjectAuditLog) {
        let root = StoreRoot::open("memory://").unwrap();
        let log = ObjectAuditLog::new(&root);
        for i in 0..n {
            log.append(AuditEvent::new("alice", "act", format!("thing {i}")))
                .await
                .unwrap();
        }
        (root, log)
    }

    fn trusted(id: &str, k: &SigningKey) -> BTreeMap<String, VerifyingKey> {
        BTreeMap::from([(id.to_owned(), k.verifying_key())])
    }

    #[tokio::test]
    async fn an_anchored_log_verifies_and_later_entries_are_fine() {
        let (_, log) = log_of(5).await;
        let k = key(7);
        let a = log.anchor("ops", &k).await.unwrap();
        assert_eq!(a.seq, 5);
        assert_eq!(
            log.anchor("ops", &k).await.unwrap(),
            a,
            "anchoring again is a no-op"
        );
        log.append(AuditEvent::new("bob", "act", "more"))
            .await
            .unwrap();
        assert_eq!(
            log.verify_anchored(&trusted("ops", &k)).await.unwrap(),
            AnchoredVerdict::Intact {
                entries: 6,
                anchors: 1,
                latest_anchor: Some(5)
            }
        );
        // An empty log has nothing to anchor; a bad key id is refused.
        let (_, empty) = log_of(0).await;
        assert!(matches!(
            empty.anchor("ops", &k).await,
            Err(Error::InvalidInput { .. })
        ));
        assert!(log.anchor("bad id", &k).await.is_err());
    }

    #[tokio::test]
    async fn cutting_entries_off_or_rewriting_the_tail_breaks_the_anchor() {
        // Truncation: the chain alone still verifies, the anchor does not.
        let (root, log) = log_of(4).await;
        let k = key(1);
        log.anchor("ops", &k).await.unwrap();
        root.store()
            .delete(&root.path("audit/00000000000000000004.json"))
            .await
            .unwrap();
        let fresh = ObjectAuditLog::new(&root);
        assert!(matches!(
            fresh.verify().await.unwrap(),
            ChainVerdict::Intact { entries: 3, .. }
        ));
        let v = fresh.verify_anchored(&trusted("ops", &k)).await.unwrap();
        assert!(
            matches!(&v, AnchoredVerdict::Broken { reason } if reason.contains("cut off")),
            "{v:?}"
        );
        // A consistent rewrite: entry 2 replaced and re-sealed, the rest
        // re-chained after it; the chain verifies, the anchor does not.
        let (root, log) = log_of(3).await;
        log.anchor("ops", &k).await.unwrap();
        let entries = log.entries(1, 10).await.unwrap();
        let mut prev = entries[0].hash.clone();
        for (i, e) in entries.iter().enumerate().skip(1) {
            let forged = AuditEntry::seal(
                e.seq,
                e.time,
                AuditEvent::new("mallory", "act", format!("forged {i}")),
                &prev,
            );
            prev = forged.hash.clone();
            root.put(
                &format!("audit/{:020}.json", e.seq),
                serde_json::to_vec(&forged).unwrap().into(),
            )
            .await
            .unwrap();
        }
        let fresh = ObjectAuditLog::new(&root);
        assert!(matches!(
            fresh.verify().await.unwrap(),
            ChainVerdict::Intact { .. }
        ));
        let v = fresh.verify_anchored(&trusted("ops", &k)).await.unwrap();
        assert!(
            matches!(&v, AnchoredVerdict::Broken { reason } if reason.contains("rewritten")),
            "{v:?}"
        );
    }

    #[tokio::test]
    async fn anchors_not_signed_by_a_trusted_key_break_the_verdict() {
        let (root, log) = log_of(2).await;
        let (k, other) = (key(1), key(2));
        log.anchor("ops", &k).await.unwrap();
        let v = log.verify_anchored(&trusted("ops", &other)).await.unwrap();
        assert!(
            matches!(&v, AnchoredVerdict::Broken { reason } if reason.contains("does not verify")),
            "{v:?}"
        );
        let v = log.verify_anchored(&BTreeMap::new()).await.unwrap();
        assert!(
            matches!(&v, AnchoredVerdict::Broken { reason } if reason.contains("not trusted")),
            "{v:?}"
        );
        // An anchor whose statement was edited (another hash) does not verify.
        let path = "audit-anchors/00000000000000000002.json";
        let mut a: AuditAnchor = serde_json::from_slice(&root.get(path).await.unwrap()).unwrap();
        a.hash = "0".repeat(64);
        root.put(path, serde_json::to_vec(&a).unwrap().into())
            .await
            .unwrap();
        let v = log.verify_anchored(&trusted("ops", &k)).await.unwrap();
        assert!(matches!(v, AnchoredVerdict::Broken { .. }), "{v:?}");
    }
}
