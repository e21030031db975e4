//! What a provider says about a message: when it accepts it (a receipt),
//! and later (a report: delivered, acknowledged, undelivered).

/// What the provider said when it accepted a message.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Receipt {
    /// The provider's id or answer, kept as the notification's `detail`.
    pub detail: Option<String>,
    /// The provider's own id for the message (a Twilio SID, a Pushover
    /// emergency receipt), to ask about it later.
    pub provider_ref: Option<String>,
    /// The provider will report on it later (a delivery report, an
    /// acknowledgement): kci asks through the channel's `poll_receipt`.
    pub awaiting: bool,
    /// SMS parts billed.
    pub segments: Option<u32>,
}

/// A provider's later word on a message it accepted.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub status: super::ReceiptStatus,
    /// The provider's words (an error code, who acknowledged).
    pub detail: Option<String>,
}

/// The longest `detail` kept on a notification, in characters: the
/// provider's words are for a person reading why, not a copy of its page.
pub const MAX_DETAIL: usize = 300;

/// The provider's `words` as a notification keeps them: at most
/// [`MAX_DETAIL`] characters.
pub fn excerpt(words: &str) -> String {
    super::excerpt(words, MAX_DETAIL)
}
