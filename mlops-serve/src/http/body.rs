//! Request bodies: read within the configured size and time limits into one
//! contiguous buffer, and charged to the server-wide byte budget.
//!
//! A body costs about its own size however it is sent: its frames (one per
//! chunk of `Transfer-Encoding: chunked`, however small) are copied into one
//! buffer as they arrive and dropped, never kept one allocation each. The
//! buffer is made room for from `Content-Length` (checked against the limit
//! first: a length beyond it is refused before a byte is read), else grown by
//! doubling up to the limit.
//!
//! Every body being read or decoded is charged to a [`BodyBudget`] shared by
//! the whole face, as its bytes arrive and as its inputs are decoded; the
//! [`Charge`] a request holds gives it back when it is dropped, at the end of
//! the request. A body that does not fit in what is left of the budget is
//! refused with 503 and `Retry-After`, so the memory of bodies is bounded by the
//! budget, not by connections x the largest body.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::{Body, HttpBody};
use mlops_core::Error;

use super::error::ApiError;
use crate::codec::DecodeGrant;
use crate::config::HttpConfig;

/// Largest body of an admin or feedback call (JSON of a few fields, or one
/// outcome per row of a request).
const MAX_CONTROL_BODY_BYTES: usize = 4 << 20;

/// Bytes charged to the budget at a time while a body arrives, at least (or
/// what is left of its declared length): few atomic updates for a body of many
/// small frames.
const CHARGE_STEP: usize = 16 << 10;

/// The smallest buffer made for a body of unknown length.
const FIRST_BUFFER: usize = 8 << 10;

/// How large a body may be and how long it may take to arrive.
#[derive(Debug, Clone, Copy)]
pub(super) struct BodyLimits {
    pub(super) max_bytes: usize,
    pub(super) timeout: Duration,
}

impl BodyLimits {
    /// The limits of inference bodies.
    pub(super) fn inference(config: &HttpConfig) -> Self {
        Self {
            max_bytes: config.max_body_bytes,
            timeout: config.body_timeout,
        }
    }

    /// The limits of admin and feedback bodies: at most 4 MiB.
    pub(super) fn control(config: &HttpConfig) -> Self {
        Self {
            max_bytes: config.max_body_bytes.min(MAX_CONTROL_BODY_BYTES),
            timeout: config.body_timeout,
        }
    }
}

/// The bytes of bodies being read or decoded at once, server-wide, and the
/// most they may be ([`HttpConfig::body_budget_bytes`]).
#[derive(Debug)]
pub(super) struct BodyBudget {
    limit: usize,
    used: AtomicUsize,
}

impl BodyBudget {
    /// A budget of `limit` bytes, none of it used.
    pub(super) fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            used: AtomicUsize::new(0),
        })
    }

    /// The budget of `config`.
    pub(super) fn of(config: &HttpConfig) -> Arc<Self> {
        Self::new(config.body_budget_bytes())
    }

    /// Bytes charged now, by every request together.
    #[cfg(test)]
    pub(super) fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    /// Takes `bytes` when they fit in what is left.
    fn try_take(&self, bytes: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|&u| u <= self.limit)
            })
            .is_ok()
    }

    fn give_back(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// What one request holds of the [`BodyBudget`]: its body as it arrives and its
/// decoded inputs; given back when dropped (the request ended, whichever way).
#[derive(Debug)]
pub(super) struct Charge {
    budget: Arc<BodyBudget>,
    held: AtomicUsize,
}

impl Charge {
    /// A charge of nothing yet against `budget`.
    pub(super) fn new(budget: &Arc<BodyBudget>) -> Self {
        Self {
            budget: budget.clone(),
            held: AtomicUsize::new(0),
        }
    }

    /// Bytes held now.
    pub(super) fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }

    /// Takes `bytes` more of the budget. Refused with
    /// [`Error::Unavailable`] (503, `Retry-After`) when other requests hold
    /// what is missing, and with [`Error::InvalidInput`] when this request
    /// alone would need more than the whole budget (retrying cannot help).
    pub(super) fn grow(&self, bytes: usize) -> Result<(), Error> {
        if self.budget.try_take(bytes) {
            self.held.fetch_add(bytes, Ordering::AcqRel);
            return Ok(());
        }
        let needed = self.held().saturating_add(bytes);
        if needed > self.budget.limit {
            return Err(Error::invalid_input(
                "request",
                format!(
                    "its body and decoded inputs would take {needed} bytes, more than the \
                     server's whole byte budget for bodies ({} bytes, [http] \
                     max_body_budget_bytes)",
                    self.budget.limit
                ),
            ));
        }
        Err(Error::Unavailable {
            what: "server".into(),
            reason: format!(
                "its byte budget for request bodies ({} bytes) is taken by the bodies being \
                 read or decoded now; retry later",
                self.budget.limit
            ),
        })
    }

    /// Gives `bytes` of what it holds back (at most all of it): memory freed
    /// before the request ends, such as a body once decoded.
    pub(super) fn shrink(&self, bytes: usize) {
        let given = self
            .held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                Some(held - held.min(bytes))
            })
            .map_or(0, |before| before.min(bytes));
        self.budget.give_back(given);
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.give_back(*self.held.get_mut());
    }
}

impl DecodeGrant for Charge {
    fn grant(&self, bytes: usize) -> mlops_core::Result<()> {
        self.grow(bytes)
    }
}

/// A body read whole, with what it holds of the budget.
#[derive(Debug)]
pub(super) struct ReadBody {
    /// The body's bytes.
    pub(super) bytes: Vec<u8>,
    /// Its charge: at least the bytes read, given back when dropped.
    pub(super) charge: Charge,
}

fn too_large(limit: usize) -> ApiError {
    ApiError::with_status(
        Error::invalid_input(
            "request body",
            format!("larger than the server's limit of {limit} bytes"),
        ),
        413,
    )
}

/// The whole body, charged to `budget` as it arrives: 413 as soon as it is
/// larger than the limit (at once when `Content-Length` says so), 408 when it
/// does not arrive in time (a client that sends part of a body and stalls),
/// 503 with `Retry-After` when the budget has no room for it now.
pub(super) async fn read_body(
    body: Body,
    limits: BodyLimits,
    budget: &Arc<BodyBudget>,
) -> Result<ReadBody, ApiError> {
    let limit = limits.max_bytes;
    let declared = HttpBody::size_hint(&body).exact();
    if let Some(n) = declared
        && usize::try_from(n).map_or(true, |n| n > limit)
    {
        return Err(too_large(limit));
    }
    let charge = Charge::new(budget);
    let read = collect(body, limit, declared, &charge);
    match tokio::time::timeout(limits.timeout, read).await {
        Err(_) => Err(ApiError::with_status(
            Error::invalid_input(
                "request body",
                format!("not received within {:?}", limits.timeout),
            ),
            408,
        )),
        Ok(Err(e)) => Err(e),
        Ok(Ok(bytes)) => Ok(ReadBody { bytes, charge }),
    }
}

/// The frames of `body` copied into one buffer, each dropped once copied.
async fn collect(
    mut body: Body,
    limit: usize,
    declared: Option<u64>,
    charge: &Charge,
) -> Result<Vec<u8>, ApiError> {
    // `declared` is at most `limit` here, and hyper holds the client to it;
    // it is room made and a bound on the steps charged, nothing more.
    let declared = declared.and_then(|n| usize::try_from(n).ok());
    let mut bytes: Vec<u8> = Vec::with_capacity(declared.unwrap_or(0).min(limit));
    let expected = declared.unwrap_or(limit).min(limit);
    while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        let frame = frame.map_err(|e| {
            ApiError::from(Error::invalid_input(
                "request body",
                format!("cut off before its end: {e}"),
            ))
        })?;
        let Ok(data) = frame.into_data() else {
            // Trailers: nothing of the body.
            continue;
        };
        let len = bytes.len() + data.len();
        if len > limit {
            return Err(too_large(limit));
        }
        let held = charge.held();
        if len > held {
            let step = (len - held).max(CHARGE_STEP.min(expected.saturating_sub(held)));
            charge.grow(step)?;
        }
        if len > bytes.capacity() {
            let room = bytes
                .capacity()
                .saturating_mul(2)
                .max(FIRST_BUFFER)
                .max(len)
                .min(limit);
            bytes.reserve_exact(room - bytes.len());
        }
        bytes.extend_from_slice(&data);
    }
    Ok(bytes)
}

/// A JSON body of an admin or feedback call, within the limits and charged to
/// `budget` while it is parsed; `what` names it in the error.
pub(super) async fn read_json<T: serde::de::DeserializeOwned>(
    body: Body,
    limits: BodyLimits,
    budget: &Arc<BodyBudget>,
    what: &str,
) -> Result<T, ApiError> {
    let read = read_body(body, limits, budget).await?;
    Ok(serde_json::from_slice(&read.bytes)
        .map_err(|e| Error::invalid_input(what, e.to_string()))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The body read, or a panic naming the refusal.
    fn read_ok(read: Result<ReadBody, ApiError>) -> ReadBody {
        match read {
            Ok(r) => r,
            Err(e) => panic!("refused with {}: {}", e.code(), e.error),
        }
    }

    fn limits(max_bytes: usize) -> BodyLimits {
        BodyLimits {
            max_bytes,
            timeout: Duration::from_secs(30),
        }
    }

    /// A body of `chunks`, each its own frame, with no declared length (as
    /// `Transfer-Encoding: chunked` arrives).
    fn chunked(chunks: Vec<Vec<u8>>) -> Body {
        let (mut tx, body) = channel_body();
        tokio::spawn(async move {
            for c in chunks {
                if tx.send(c).await.is_err() {
                    return;
                }
            }
        });
        body
    }

    /// A body fed frame by frame through a channel (the sender's end).
    fn channel_body() -> (FrameSender, Body) {
        let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
        (FrameSender(tx), Body::new(ChannelBody(rx)))
    }

    struct FrameSender(tokio::sync::mpsc::Sender<Vec<u8>>);

    impl FrameSender {
        async fn send(&mut self, bytes: Vec<u8>) -> Result<(), ()> {
            self.0.send(bytes).await.map_err(|_| ())
        }
    }

    struct ChannelBody(tokio::sync::mpsc::Receiver<Vec<u8>>);

    impl HttpBody for ChannelBody {
        type Data = bytes::Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, Self::Error>>>
        {
            self.0
                .poll_recv(cx)
                .map(|c| c.map(|c| Ok(hyper::body::Frame::data(bytes::Bytes::from(c)))))
        }
    }

    #[tokio::test]
    async fn a_body_of_one_byte_chunks_is_one_buffer_of_its_size() {
        let budget = BodyBudget::new(1 << 20);
        let payload: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let body = chunked(payload.iter().map(|&b| vec![b]).collect());
        let read = read_ok(read_body(body, limits(1 << 20), &budget).await);
        assert_eq!(read.bytes, payload);
        // One buffer grown by doubling: at most twice the body, never a frame
        // each.
        assert!(
            read.bytes.capacity() < 2 * payload.len(),
            "{}",
            read.bytes.capacity()
        );
        // Charged for about what it holds, in steps.
        let held = read.charge.held();
        assert!(
            held >= payload.len() && held < payload.len() + 2 * CHARGE_STEP,
            "{held}"
        );
        assert_eq!(budget.used(), held);
        drop(read);
        assert_eq!(budget.used(), 0, "the charge is given back with the body");
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_413_as_soon_as_it_passes_it() {
        let budget = BodyBudget::new(1 << 20);
        // A client that sends 1,001 bytes and then would send forever: the
        // answer comes at byte 1,001, not at the deadline.
        let (mut tx, body) = channel_body();
        let feeder = tokio::spawn(async move {
            let _ = tx.send(vec![b'x'; 1001]).await;
            // Hold the channel open: the body never ends by itself.
            std::future::pending::<()>().await;
        });
        let err = read_body(body, limits(1000), &budget).await.unwrap_err();
        feeder.abort();
        assert_eq!(err.code(), 413);
        assert!(
            err.error.to_string().contains("1000 bytes"),
            "{}",
            err.error
        );
        assert_eq!(budget.used(), 0, "nothing stays charged");
    }

    #[tokio::test]
    async fn a_declared_length_over_the_limit_is_refused_before_reading() {
        let budget = BodyBudget::new(1 << 20);
        // The body itself is short: only the declared length is too large.
        let body = Body::new(http_body_with_length(2000));
        let err = read_body(body, limits(1000), &budget).await.unwrap_err();
        assert_eq!(err.code(), 413);
    }

    #[tokio::test]
    async fn a_declared_length_is_room_made_not_trusted_beyond_the_limit() {
        let budget = BodyBudget::new(1 << 20);
        // Claims 1,000 bytes, sends 10: 10 bytes read, room for the 1,000.
        let body = Body::new(LyingLength {
            claimed: 1000,
            sent: Some(vec![7; 10]),
        });
        let read = read_ok(read_body(body, limits(1000), &budget).await);
        assert_eq!(read.bytes, vec![7; 10]);
        assert!(read.bytes.capacity() >= 1000);
        // Claims 100, sends 2,000 (hyper would cut it off; the reader
        // does not rely on that): 413 at the limit, room never past it.
        let body = Body::new(LyingLength {
            claimed: 100,
            sent: Some(vec![7; 2000]),
        });
        let err = read_body(body, limits(1000), &budget).await.unwrap_err();
        assert_eq!(err.code(), 413);
        // The first body holds its charge: one step, within its declared length.
        assert_eq!(budget.used(), 1000);
        drop(read);
        assert_eq!(budget.used(), 0);
    }

    #[tokio::test]
    async fn a_body_that_stalls_is_408_at_its_deadline_and_gives_back_its_charge() {
        let budget = BodyBudget::new(1 << 20);
        let (mut tx, body) = channel_body();
        tx.send(vec![1; 10]).await.unwrap();
        let short = BodyLimits {
            max_bytes: 1000,
            timeout: Duration::from_millis(100),
        };
        let err = read_body(body, short, &budget).await.unwrap_err();
        assert_eq!(err.code(), 408);
        assert_eq!(budget.used(), 0);
        drop(tx);
    }

    #[tokio::test]
    async fn a_body_beyond_what_the_budget_has_left_is_503_and_the_budget_recovers() {
        let budget = BodyBudget::new(4 * CHARGE_STEP);
        // Another request holds three quarters of the budget.
        let other = Charge::new(&budget);
        other.grow(3 * CHARGE_STEP).unwrap();
        let big = vec![1u8; 2 * CHARGE_STEP];
        let err = read_body(Body::from(big.clone()), limits(1 << 20), &budget)
            .await
            .unwrap_err();
        assert_eq!(err.code(), 503, "{}", err.error);
        assert!(
            err.error.to_string().contains("retry later"),
            "{}",
            err.error
        );
        assert_eq!(
            budget.used(),
            3 * CHARGE_STEP,
            "the refused body holds nothing"
        );
        // Once the other request ends, the same body fits.
        drop(other);
        let read = read_ok(read_body(Body::from(big), limits(1 << 20), &budget).await);
        assert_eq!(read.bytes.len(), 2 * CHARGE_STEP);
        drop(read);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn a_charge_past_the_whole_budget_is_not_a_retry_later() {
        let budget = BodyBudget::new(1000);
        let charge = Charge::new(&budget);
        charge.grow(600).unwrap();
        let err = charge.grow(500).unwrap_err();
        assert!(matches!(err, Error::InvalidInput { .. }), "{err}");
        assert!(err.to_string().contains("max_body_budget_bytes"), "{err}");
        charge.shrink(200);
        assert_eq!((charge.held(), budget.used()), (400, 400));
        charge.shrink(1000);
        assert_eq!((charge.held(), budget.used()), (0, 0));
        // Held by another: a retry may succeed.
        let other = Charge::new(&budget);
        other.grow(900).unwrap();
        let err = charge.grow(200).unwrap_err();
        assert!(matches!(err, Error::Unavailable { .. }), "{err}");
        drop(other);
        charge.grow(200).unwrap();
        drop(charge);
        assert_eq!(budget.used(), 0);
    }

    #[tokio::test]
    async fn many_requests_at_once_never_hold_more_than_the_budget() {
        let budget = BodyBudget::new(10 * CHARGE_STEP);
        let tasks: Vec<_> = (0..32)
            .map(|_| {
                let budget = budget.clone();
                tokio::spawn(async move {
                    let body = chunked(vec![vec![0u8; 1024]; 2 * CHARGE_STEP / 1024]);
                    let read = read_body(body, limits(1 << 20), &budget).await;
                    assert!(budget.used() <= 10 * CHARGE_STEP);
                    read.map(|r| r.bytes.len()).map_err(|e| e.code())
                })
            })
            .collect();
        let mut ok = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(n) => {
                    assert_eq!(n, 2 * CHARGE_STEP);
                    ok += 1;
                }
                Err(code) => assert_eq!(code, 503),
            }
        }
        assert!(ok >= 1, "at least the first fits");
        assert_eq!(budget.used(), 0);
    }

    /// A body that declares `claimed` bytes and sends `sent`.
    struct LyingLength {
        claimed: u64,
        sent: Option<Vec<u8>>,
    }

    impl HttpBody for LyingLength {
        type Data = bytes::Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, Self::Error>>>
        {
            std::task::Poll::Ready(
                self.sent
                    .take()
                    .map(|s| Ok(hyper::body::Frame::data(bytes::Bytes::from(s)))),
            )
        }
        fn size_hint(&self) -> hyper::body::SizeHint {
            hyper::body::SizeHint::with_exact(self.claimed)
        }
    }

    fn http_body_with_length(claimed: u64) -> LyingLength {
        LyingLength {
            claimed,
            sent: Some(vec![1; 10]),
        }
    }
}
