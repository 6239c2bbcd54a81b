//! Shadow traffic's records: each request mirrored to a shadow version, with both
//! answers, kept in a bounded log per deployment.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::SystemTime;

use mlops_core::inference::Tensor;

/// Shadow records kept per deployment.
const SHADOW_LOG: usize = 1000;
/// Bytes the records of one deployment may hold (both answers' tensors).
const SHADOW_LOG_BYTES: usize = 32 << 20;

/// A request mirrored to the shadow version, with both answers.
#[derive(Debug, Clone, PartialEq)]
pub struct ShadowRecord {
    /// The request's id.
    pub request_id: Option<String>,
    /// The version that answered the client.
    pub primary_version: u64,
    /// The shadow version.
    pub shadow_version: u64,
    /// What the client got.
    pub primary: Vec<Tensor>,
    /// What the shadow said, or its error.
    pub shadow: std::result::Result<Vec<Tensor>, String>,
    /// When the shadow answered.
    pub at: SystemTime,
}

impl ShadowRecord {
    /// The bytes the record holds, approximately.
    fn heap_bytes(&self) -> usize {
        let tensors = |t: &[Tensor]| t.iter().map(Tensor::heap_bytes).sum::<usize>();
        let shadow = match &self.shadow {
            Ok(t) => tensors(t),
            Err(e) => e.len(),
        };
        tensors(&self.primary) + shadow + self.request_id.as_ref().map_or(0, String::len) + 96
    }
}

/// The latest shadow records of one deployment, oldest first: at most
/// [`SHADOW_LOG`] records and [`SHADOW_LOG_BYTES`] bytes.
#[derive(Debug, Default)]
pub(crate) struct ShadowLog(Mutex<(VecDeque<ShadowRecord>, usize)>);

impl ShadowLog {
    /// Appends `record`, forgetting the oldest beyond the limits; a record larger
    /// than the whole byte budget is not kept.
    pub(crate) fn push(&self, record: ShadowRecord) {
        let size = record.heap_bytes();
        if size > SHADOW_LOG_BYTES {
            return;
        }
        let mut guard = match self.0.lock() {
            Ok(log) => log,
            Err(poisoned) => poisoned.into_inner(),
        };
        let (log, bytes) = &mut *guard;
        log.push_back(record);
        *bytes += size;
        while log.len() > SHADOW_LOG || *bytes > SHADOW_LOG_BYTES {
            let Some(old) = log.pop_front() else { break };
            *bytes = bytes.saturating_sub(old.heap_bytes());
        }
    }

    /// The records held, oldest first.
    pub(crate) fn records(&self) -> Vec<ShadowRecord> {
        match self.0.lock() {
            Ok(log) => log.0.iter().cloned().collect(),
            Err(poisoned) => poisoned.into_inner().0.iter().cloned().collect(),
        }
    }
}
