//! A channel that accepts everything and remembers it: what `kci simulate`
//! delivers to (DESIGN.md §5), so a scenario runs the real schedule and
//! render path without talking to any provider.

use super::{Channel, DeliveryError, Outgoing, Receipt};
use crate::model::ChannelKind;
use async_trait::async_trait;
use std::sync::Mutex;

pub struct RecordingChannel {
    kind: ChannelKind,
    sent: Mutex<Vec<Outgoing>>,
}

impl RecordingChannel {
    pub fn new(kind: ChannelKind) -> Self {
        Self {
            kind,
            sent: Mutex::new(Vec::new()),
        }
    }

    /// Everything delivered so far, in order.
    pub fn sent(&self) -> Vec<Outgoing> {
        self.sent.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

#[async_trait]
impl Channel for RecordingChannel {
    fn kind(&self) -> ChannelKind {
        self.kind
    }

    async fn deliver(&self, msg: &Outgoing) -> Result<Receipt, DeliveryError> {
        self.sent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(msg.clone());
        Ok(Receipt::default())
    }
}
