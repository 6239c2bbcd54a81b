//! Shadow traffic's records: each request mirrored to a shadow version, with both
//! answers, kept in a bounded log per deployment.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::SystemTime;

use mlops_core::inference::Tensor;

/// Shadow records kept per deployment.
const SHADOW_LOG: usize = 1000;

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

/// The latest [`SHADOW_LOG`] shadow records of one deployment, oldest first.
#[derive(Debug, Default)]
pub(crate) struct ShadowLog(Mutex<VecDeque<ShadowRecord>>);

impl ShadowLog {
    /// Appends `record`, forgetting the oldest when full.
    pub(crate) fn push(&self, record: ShadowRecord) {
        let mut log = match self.0.lock() {
            Ok(log) => log,
            Err(poisoned) => poisoned.into_inner(),
        };
        if log.len() == SHADOW_LOG {
            log.pop_front();
        }
        log.push_back(record);
    }

    /// The records held, oldest first.
    pub(crate) fn records(&self) -> Vec<ShadowRecord> {
        match self.0.lock() {
            Ok(log) => log.iter().cloned().collect(),
            Err(poisoned) => poisoned.into_inner().iter().cloned().collect(),
        }
    }
}
