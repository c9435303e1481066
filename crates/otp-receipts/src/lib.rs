//! Provider receipts: what closes the loop after a provider accepted a send.
//!
//! WhatsApp accepts most sends with a 200 and reports the failure (131026: not on WhatsApp)
//! or nothing at all later, by webhook. Two parts turn that into statuses and fallbacks:
//!
//! - [`ingress`]: the webhook endpoints. Signatures are checked over the raw bytes before
//!   anything is parsed; each authentic status becomes a receipt on `otp.delivery-receipts`,
//!   keyed by the request the send named: its confirmation key, `app/request_id` or the bare
//!   id (WhatsApp's `biz_opaque_callback_data`, the Twilio `StatusCallback` URL's query,
//!   Vonage's `client_ref`).
//! - [`tracker`]: the confirmation tracker. Workers with confirmation on record each
//!   accepted send on the compacted `otp.pending-confirmations`; the tracker reads that and
//!   the receipts co-partitioned, reports `delivered`/`read`, and hands the request to the
//!   next channel when a receipt says failed or none comes in the window.

pub mod cli;
pub mod config;
pub mod ingress;
pub mod tracker;

pub use cli::ReceiptsCommand;
