//! What decoding a request may allocate: every decoder counts the memory its
//! values take *before* it allocates them (a tensor's data from its shape, a
//! `BYTES` element's header with its tensor, its bytes as they are read; names,
//! parameters and outputs as they are read) against a limit of
//! [`DECODE_FACTOR`] x the body (plus [`DECODE_SLACK`]), and, when the caller
//! gives one, a [`DecodeGrant`] (the HTTP face's server-wide byte budget).
//!
//! The meter of the decode under way lives in a thread-local slot for the
//! length of one synchronous [`metered`] call: the serde visitors that read the
//! values have no other way to reach it. Outside such a call nothing is
//! counted.

use std::cell::RefCell;
use std::fmt;
use std::sync::Arc;

use mlops_core::{Error, Result};

/// Decoded inputs may take at most this many times the size of their body
/// (plus [`DECODE_SLACK`]); a request whose inputs would take more is refused
/// before they are allocated, with an error naming the input and the limit.
///
/// What each datatype takes per byte of the body, at the most (so which ones
/// the limit can refuse):
///
/// | Datatype | JSON | binary extension |
/// |---|---|---|
/// | `INT64`, `UINT64`, `FP64` | 4x (`0,` is 2 bytes, 8 decoded) | 1x |
/// | `INT32`, `UINT32`, `FP32`, `FP16` (held as `f32`) | 2x | 1x (`FP16`: 2x) |
/// | `INT16`, `UINT16`, `INT8`, `UINT8`, `BOOL` | 1x or less | 1x |
/// | `BYTES` | 8x for empty strings (`"",` is 3 bytes, a vector header 24): refused beyond 4x | 6x for empty elements (a 4-byte length): refused beyond 4x |
///
/// Numeric data thus always decodes within the limit; `BYTES` data whose
/// elements average fewer than about 5 bytes of JSON (3 of binary) is refused.
pub const DECODE_FACTOR: usize = 4;

/// Bytes every request may decode to beyond [`DECODE_FACTOR`] x its body: the
/// fixed cost of a small request's structures (a tensor's header is larger
/// than its shortest JSON).
pub const DECODE_SLACK: usize = 64 << 10;

/// Grants the memory a decode takes, as it takes it: a server-wide byte budget
/// charged for the request being decoded. What it grants is the caller's to
/// release (when the decoded request is dropped).
pub trait DecodeGrant: Send + Sync {
    /// Grants `bytes` more, or says why not: the decode ends with that error.
    fn grant(&self, bytes: usize) -> Result<()>;
}

/// Bytes asked of the grant at a time, at least: few calls for many small
/// values.
const GRANT_STEP: usize = 16 << 10;

struct Meter {
    /// The most the decode may take in all.
    cap: usize,
    /// The body's size, for the error message.
    body: usize,
    /// Bytes counted so far by the decoder running now.
    used: usize,
    /// Bytes the grant has granted so far (kept across a decoder giving up).
    granted: usize,
    grant: Option<Arc<dyn DecodeGrant>>,
    /// Why the decode was refused, when it was: the error it ends with.
    refused: Option<Error>,
}

thread_local! {
    static METER: RefCell<Option<Meter>> = const { RefCell::new(None) };
}

/// Puts the meter that was there before back, whatever happens.
struct Restore(Option<Meter>);

impl Drop for Restore {
    fn drop(&mut self) {
        let previous = self.0.take();
        METER.with(|m| *m.borrow_mut() = previous);
    }
}

/// Runs `decode` (of a body of `body` bytes) with a meter: what it counts is
/// held to [`DECODE_FACTOR`] x `body` + [`DECODE_SLACK`] and asked of `grant`.
/// When the meter refused something, its error is the result, whatever
/// `decode` made of the refusal.
pub(super) fn metered<T>(
    body: usize,
    grant: Option<Arc<dyn DecodeGrant>>,
    decode: impl FnOnce() -> Result<T>,
) -> Result<T> {
    let meter = Meter {
        cap: body
            .saturating_mul(DECODE_FACTOR)
            .saturating_add(DECODE_SLACK),
        body,
        used: 0,
        granted: 0,
        grant,
        refused: None,
    };
    let _restore = Restore(METER.with(|m| m.borrow_mut().replace(meter)));
    let out = decode();
    let refused = METER.with(|m| m.borrow_mut().as_mut().and_then(|m| m.refused.take()));
    match refused {
        Some(e) => Err(e),
        None => out,
    }
}

/// Counts `bytes` for `what` (an input, "outputs", "parameters"); the reason
/// when the meter refuses them (its error is kept for [`metered`] to return).
/// Nothing is counted outside [`metered`].
pub(super) fn take(what: impl fmt::Display, bytes: usize) -> std::result::Result<(), String> {
    METER.with(|m| {
        let mut slot = m.borrow_mut();
        let Some(meter) = slot.as_mut() else {
            return Ok(());
        };
        let used = meter.used.saturating_add(bytes);
        if used > meter.cap {
            let reason = format!(
                "{what}: decoding it would take more than {} bytes, the limit for a body of {} \
                 bytes ({DECODE_FACTOR} x the body + {DECODE_SLACK}); BYTES elements this short \
                 or this many values are refused",
                meter.cap, meter.body
            );
            meter.refused = Some(Error::invalid_input("inference request", reason.clone()));
            return Err(reason);
        }
        if used > meter.granted
            && let Some(grant) = &meter.grant
        {
            let more = (used - meter.granted)
                .max(GRANT_STEP)
                .min(meter.cap - meter.granted);
            if let Err(e) = grant.grant(more) {
                let reason = format!("{what}: {e}");
                meter.refused = Some(e);
                return Err(reason);
            }
            meter.granted += more;
        }
        meter.used = used;
        Ok(())
    })
}

/// A decoder gave up and another reads the body from its start: what the
/// first one counted is freed (what was granted stays granted, for the next).
pub(super) fn restart() {
    METER.with(|m| {
        if let Some(meter) = m.borrow_mut().as_mut() {
            meter.used = 0;
            meter.refused = None;
        }
    });
}

/// The bytes a tensor header takes beyond its elements: the tensor and its name.
pub(super) fn tensor_bytes(name: &str) -> usize {
    std::mem::size_of::<mlops_core::inference::Tensor>() + name.len()
}

/// The bytes one parameter takes: its key, its value and a map entry's share
/// of a node.
pub(super) fn parameter_bytes(key: &str, value: &mlops_core::inference::ParameterValue) -> usize {
    let text = match value {
        mlops_core::inference::ParameterValue::String(s) => s.len(),
        _ => 0,
    };
    std::mem::size_of::<String>()
        + std::mem::size_of::<mlops_core::inference::ParameterValue>()
        + 16
        + key.len()
        + text
}

/// The bytes `n` elements of `datatype` take, `None` when that overflows;
/// a `BYTES` element counts its vector's header here, its bytes as they are
/// read.
pub(super) fn elements_bytes(datatype: mlops_core::inference::Datatype, n: usize) -> Option<usize> {
    use mlops_core::inference::Datatype as D;
    let size = match datatype {
        D::Bool | D::Uint8 | D::Int8 => 1,
        D::Uint16 | D::Int16 => 2,
        D::Uint32 | D::Int32 | D::Fp32 | D::Fp16 => 4,
        D::Uint64 | D::Int64 | D::Fp64 => 8,
        D::Bytes => std::mem::size_of::<Vec<u8>>(),
    };
    n.checked_mul(size)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Grants up to a total, recording each grant.
    struct Budget {
        left: Mutex<usize>,
        grants: Mutex<Vec<usize>>,
    }

    impl DecodeGrant for Budget {
        fn grant(&self, bytes: usize) -> Result<()> {
            let mut left = self.left.lock().unwrap();
            if bytes > *left {
                return Err(Error::Unavailable {
                    what: "budget".into(),
                    reason: "spent".into(),
                });
            }
            *left -= bytes;
            self.grants.lock().unwrap().push(bytes);
            Ok(())
        }
    }

    #[test]
    fn the_cap_is_a_factor_of_the_body_and_names_what_broke_it() {
        let cap = 100 * DECODE_FACTOR + DECODE_SLACK;
        let ok = metered(100, None, || {
            take("input 'a'", cap).map_err(|r| Error::invalid_input("x", r))
        });
        assert!(ok.is_ok());
        let err = metered(100, None, || {
            take("input 'a'", cap - 1).map_err(|r| Error::invalid_input("x", r))?;
            // The decoder words it its own way; the meter's error wins.
            take("input 'b'", 2).map_err(|_| Error::invalid_input("x", "other"))
        })
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("input 'b'") && err.contains(&cap.to_string()),
            "{err}"
        );
        // Outside a metered decode nothing is counted or refused.
        assert!(take("input 'c'", usize::MAX).is_ok());
    }

    #[test]
    fn grants_are_asked_in_steps_and_a_refusal_is_the_error() {
        let budget = Arc::new(Budget {
            left: Mutex::new(GRANT_STEP * 2),
            grants: Mutex::new(Vec::new()),
        });
        let body = 1 << 20;
        let out = metered(body, Some(budget.clone() as Arc<dyn DecodeGrant>), || {
            for _ in 0..100 {
                take("input 'a'", 10).map_err(|r| Error::invalid_input("x", r))?;
            }
            Ok(())
        });
        assert!(out.is_ok());
        assert_eq!(*budget.grants.lock().unwrap(), [GRANT_STEP]);
        // A decoder that gives up frees what it counted, not what was granted.
        let err = metered(body, Some(budget.clone() as Arc<dyn DecodeGrant>), || {
            take("input 'a'", GRANT_STEP).map_err(|r| Error::invalid_input("x", r))?;
            restart();
            take("input 'a'", GRANT_STEP).map_err(|r| Error::invalid_input("x", r))?;
            take("input 'b'", 1).map_err(|r| Error::invalid_input("x", r))
        })
        .unwrap_err();
        assert!(matches!(err, Error::Unavailable { .. }), "{err}");
        assert_eq!(*budget.grants.lock().unwrap(), [GRANT_STEP, GRANT_STEP]);
    }
}
