//! The ingress's memory bound: how many bytes of webhook bodies it holds at once.
//!
//! A signature covers the raw body, so a body is read whole before anyone knows whether a
//! provider sent it: an unauthenticated caller decides what we buffer. Three bounds hold it:
//! - **a body limit per route**, sized to the provider's webhooks: Meta documents webhook
//!   payloads of up to 3 MB ([`WHATSAPP_BODY_LIMIT`]); a Twilio status callback is a form of
//!   well under a kilobyte ([`SMS_BODY_LIMIT`], 64 KiB);
//! - **the concurrency limit** (`MAX_CONCURRENT_REQUESTS` calls at once);
//! - **this budget**: a body larger than [`SMALL_BODY`] (by its `Content-Length`, or the
//!   route's limit when it declares none) must reserve its size from a shared pool before it
//!   is read. When the pool cannot give it at once, the call is answered 503 with
//!   `Retry-After` and its body is never read (providers retry a 503: Meta for days, Twilio
//!   on connection-level failures).
//!
//! Status webhooks are a few kilobytes, so they pass under [`SMALL_BODY`] without touching
//! the pool: a flood of large bodies exhausts the pool, not the path that genuine webhooks
//! take. The whole bound: `MAX_CONCURRENT_REQUESTS` × [`SMALL_BODY`] (64 MiB) plus the pool
//! (`--body-budget`, 32 MiB by default).

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use tokio::sync::Semaphore;

/// The largest body the WhatsApp route reads: Meta's documented maximum webhook payload.
pub const WHATSAPP_BODY_LIMIT: usize = 3 * 1024 * 1024;
/// The largest body the SMS status route reads; Twilio's status callbacks are far smaller.
pub const SMS_BODY_LIMIT: usize = 64 * 1024;
/// Bodies up to this size need no reservation (they are bounded by the concurrency limit).
pub const SMALL_BODY: usize = 64 * 1024;
/// The pool's default size.
pub const DEFAULT_BODY_BUDGET: usize = 32 * 1024 * 1024;

/// The pool, counted in KiB (a semaphore's permits are `u32`).
#[derive(Clone)]
pub struct BodyBudget {
    pool: Arc<Semaphore>,
}

impl BodyBudget {
    pub fn new(bytes: usize) -> Self {
        Self {
            pool: Arc::new(Semaphore::new(kib(bytes) as usize)),
        }
    }
}

fn kib(bytes: usize) -> u32 {
    u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX)
}

/// The body limit of a route (the largest of all for an unknown one, which answers 404).
pub fn route_limit(path: &str) -> usize {
    if path.ends_with("/webhooks/sms/status") {
        SMS_BODY_LIMIT
    } else {
        WHATSAPP_BODY_LIMIT
    }
}

/// Middleware: reserve a large body's bytes before it is read, or answer 413 / 503 at once.
pub async fn reserve(State(budget): State<BodyBudget>, request: Request, next: Next) -> Response {
    let limit = route_limit(request.uri().path());
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    let size = declared.unwrap_or(limit);
    if size > limit {
        return refuse(StatusCode::PAYLOAD_TOO_LARGE, "too_large");
    }
    if size <= SMALL_BODY {
        return next.run(request).await;
    }
    match budget.pool.clone().try_acquire_many_owned(kib(size)) {
        Ok(permit) => {
            let response = next.run(request).await;
            drop(permit);
            response
        }
        Err(_) => refuse(StatusCode::SERVICE_UNAVAILABLE, "over_budget"),
    }
}

fn refuse(status: StatusCode, outcome: &'static str) -> Response {
    metrics::counter!("otp_webhooks_total", "provider" => "any", "outcome" => outcome).increment(1);
    let mut response = (status, outcome).into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_have_their_providers_limits() {
        assert_eq!(route_limit("/webhooks/sms/status"), 64 * 1024);
        assert_eq!(route_limit("/webhooks/whatsapp"), 3 * 1024 * 1024);
    }

    #[test]
    fn the_pool_gives_what_it_has_and_no_more() {
        let budget = BodyBudget::new(4 * 1024 * 1024);
        let a = budget
            .pool
            .clone()
            .try_acquire_many_owned(kib(3 * 1024 * 1024));
        assert!(a.is_ok());
        assert!(budget
            .pool
            .clone()
            .try_acquire_many_owned(kib(2 * 1024 * 1024))
            .is_err());
        drop(a);
        assert!(budget
            .pool
            .clone()
            .try_acquire_many_owned(kib(2 * 1024 * 1024))
            .is_ok());
    }
}
