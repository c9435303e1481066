//! Topic names. A deployment may put all of them under a prefix (e.g. `staging.`), which is
//! also how tests share one broker without seeing each other's messages.

use crate::Channel;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    prefix: String,
}

impl Default for Topics {
    fn default() -> Self {
        Self::with_prefix("")
    }
}

impl Topics {
    pub fn with_prefix(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Where requests for `channel` wait: `otp.code-requests.whatsapp` / `.sms`.
    pub fn requests(&self, channel: Channel) -> String {
        format!("{}otp.code-requests.{}", self.prefix, channel.as_str())
    }

    pub fn delivery_status(&self) -> String {
        format!("{}otp.delivery-status", self.prefix)
    }

    pub fn dead_letter(&self) -> String {
        format!("{}otp.dead-letter", self.prefix)
    }

    /// Provider receipts from the webhook ingress, keyed by their request's confirmation key
    /// (`app/request_id`, or the bare id).
    pub fn delivery_receipts(&self) -> String {
        format!("{}otp.delivery-receipts", self.prefix)
    }

    /// Sends awaiting their receipts (compacted), keyed by their request's confirmation key
    /// (`app/request_id`, or the bare id). Must have as many partitions as the receipts
    /// topic: the tracker reads the two co-partitioned.
    pub fn pending_confirmations(&self) -> String {
        format!("{}otp.pending-confirmations", self.prefix)
    }

    /// What the providers say about a channel's health outside a send's answer (failed
    /// receipts that mean the channel is broken, Meta's system errors), keyed by channel;
    /// every worker reads it from its end.
    pub fn channel_signals(&self) -> String {
        format!("{}otp.channel-signals", self.prefix)
    }

    /// Requests admitted by the workers' abuse rules, keyed by phone hash; every worker reads
    /// every partition, so the rules' counts hold across channels and workers.
    pub fn abuse_admissions(&self) -> String {
        format!("{}otp.abuse-admissions", self.prefix)
    }

    /// What login systems say became of their codes (verified, abandoned, ...), keyed by
    /// the request's confirmation key (`app/request_id`, or the bare id).
    pub fn verification_outcomes(&self) -> String {
        format!("{}otp.verification-outcomes", self.prefix)
    }

    /// Every topic the pipeline needs, for `otp topics create`.
    pub fn all(&self) -> Vec<String> {
        let mut all: Vec<String> = Channel::ALL.iter().map(|c| self.requests(*c)).collect();
        all.push(self.delivery_status());
        all.push(self.dead_letter());
        all.push(self.delivery_receipts());
        all.push(self.pending_confirmations());
        all.push(self.channel_signals());
        all.push(self.abuse_admissions());
        all.push(self.verification_outcomes());
        all
    }
}
