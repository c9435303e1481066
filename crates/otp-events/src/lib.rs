//! The contracts of otp-pipeline.
//!
//! Every other crate speaks through the types in here: the *code request* that login systems
//! publish (`otp.code_request.v1`, see `schemas/code-request.v1.json`) and the *delivery
//! status* that workers report to analysts (`otp.delivery_status.v1`). The one validation
//! entry point, [`decode_code_request`] / [`CodeRequest::validate`], is used by the producer
//! library, the HTTP ingress, the CLI and the workers alike, so a request that one of them
//! accepts is accepted by all of them.
//!
//! Privacy lives here too: [`PhoneHasher`] turns a phone number into the keyed hash that is
//! used as the Kafka message key and in status events, so no other crate needs to touch the
//! number beyond handing it to a provider.

mod admission;
mod channel;
mod decode;
mod error;
mod numbering;
mod outcome;
mod pii;
mod proof;
pub mod provenance;
mod provider;
pub mod provider_errors;
mod receipt;
mod request;
mod seal;
mod signal;
pub mod signature;
mod status;
mod topics;
mod validate;

pub use admission::{AbuseAdmission, AbuseAdmissions, ABUSE_ADMISSION_SCHEMA};
pub use channel::Channel;
pub use decode::{decode_code_request, decode_submission, CODE_REQUEST_FIELDS};
pub use error::ValidationError;
pub use outcome::{
    decode_outcome, OutcomeKind, VerificationOutcome, OUTCOME_MAX_AGE, VERIFICATION_OUTCOME_SCHEMA,
};
pub use pii::{
    country_of, load_numbering_plan, mask_phone, number_range, phone_facts, PhoneFacts,
    PhoneHasher, WAMID_HASH_PREFIX,
};
pub use proof::{FallbackKey, HEADER_FALLBACK_PROOF};
pub use provenance::{ProvenanceError, Record, RecordKeys, Role, HEADER_RECORD_MAC};
pub use provider::Provider;
pub use receipt::{
    confirmation_key, message_key, split_confirmation_key, ConfirmationState, MessageIndex,
    PendingConfirmation, Receipt, ReceiptError, ReceiptStatus, MESSAGE_INDEX_SCHEMA,
    MESSAGE_KEY_PREFIX, PENDING_CONFIRMATION_SCHEMA, RECEIPT_SCHEMA,
};
pub use request::{CodeRequest, Submission, CODE_REQUEST_SCHEMA};
pub use seal::{sealed_key_id, Keyring, SealError, Sealed, SEAL_AAD_TAG};
pub use signal::{ChannelSignal, SignalKind, SignalSource, CHANNEL_SIGNAL_SCHEMA};
pub use status::{
    channels_of_header, new_event_id, DeliveryStatus, ErrorCategory, StatusError, StatusKind,
    StatusVersion, DELIVERY_STATUS_SCHEMA, DELIVERY_STATUS_SCHEMA_V2, HEADER_CHANNELS,
    HEADER_PROVIDER,
};
pub use topics::Topics;
pub use validate::{is_valid_app, is_valid_request_id, Rules, DEFAULT_MAX_CODE_LIFE};

/// Kafka header that names the schema of a message's payload.
pub const HEADER_SCHEMA: &str = "otp-schema";
/// Kafka header that carries the request_id, so tools can correlate without parsing payloads.
pub const HEADER_REQUEST_ID: &str = "otp-request-id";
/// Kafka header that authenticates what a login system reports about its own request (a
/// verification outcome): see [`Keyring::sign_report`].
pub const HEADER_REPORT_MAC: &str = "otp-report-mac";
