//! Destination health and provider receipts: a destination that keeps
//! refusing is marked unhealthy and its contact told through their other
//! destinations; a provider's later report (a delivery report, an
//! acknowledgement) is recorded and counted the same way. Used by the
//! scheduler (after each delivery, and when it polls receipts) and by the
//! web layer (provider callbacks).

use crate::metrics::Metrics;
use crate::store::Store;
use chrono::{DateTime, Utc};
use std::sync::Arc;

pub struct Health {
    pub store: Arc<dyn Store>,
    pub metrics: Arc<Metrics>,
    /// Permanent failures in a row that make a destination unhealthy; 0: never.
    pub threshold: u32,
    /// Wakes the delivery worker for the notices this queues.
    pub wake: Arc<super::Wake>,
}

impl Health {
    /// Counts a delivery against its destination's health; when permanent
    /// failures in a row reach the threshold, the destination is marked
    /// unhealthy and its contact told through their other destinations.
    /// Transient failures (an outage at the provider) never count.
    pub async fn count_outcome(
        &self,
        n: &crate::store::Notification,
        failed: bool,
        at: DateTime<Utc>,
    ) -> crate::store::Result<()> {
        let threshold = self.threshold;
        if threshold == 0 {
            return Ok(());
        }
        if !self
            .store
            .count_outcome(&n.destination, failed, threshold, at)
            .await?
        {
            return Ok(());
        }
        tracing::warn!(destination = %n.destination, channel = %n.channel, failures = threshold, "destination marked unhealthy");
        self.metrics.unhealthy_destinations.inc();
        let Some(view) = self.store.account_view(&n.account).await? else {
            return Ok(());
        };
        let others: Vec<&crate::model::Destination> = view
            .contacts
            .iter()
            .filter(|c| c.contact.id == n.contact)
            .flat_map(|c| &c.destinations)
            .filter(|d| d.id != n.destination && d.usable())
            .collect();
        if others.is_empty() {
            tracing::warn!(destination = %n.destination, "no other verified destination to tell about it");
        }
        for dest in others {
            let notice = unhealthy_notice(&n.account, dest, &n.uri, threshold, at);
            self.store.enqueue(&notice).await?;
        }
        self.wake.notify_one();
        Ok(())
    }

    /// Records a provider's report on a sent notification; an undelivered
    /// one counts against its destination like a refusal.
    pub async fn record_receipt(
        &self,
        n: &crate::store::Notification,
        report: &crate::model::Report,
        at: DateTime<Utc>,
    ) -> crate::store::Result<bool> {
        let done = self.store.record_receipt(&n.id, report, at).await?;
        if done {
            self.metrics
                .receipts
                .get_or_create(&vec![
                    ("channel", n.channel.as_str().to_string()),
                    ("status", report.status.as_str().to_string()),
                ])
                .inc();
            match report.status {
                crate::model::ReceiptStatus::Undelivered => self.count_outcome(n, true, at).await?,
                crate::model::ReceiptStatus::Delivered
                | crate::model::ReceiptStatus::Acknowledged => {
                    self.count_outcome(n, false, at).await?
                }
                _ => {}
            }
        }
        Ok(done)
    }
}

/// The notice that tells a contact kci stopped sending to one of their
/// destinations.
fn unhealthy_notice(
    account: &str,
    dest: &crate::model::Destination,
    failing: &str,
    failures: u32,
    now: DateTime<Utc>,
) -> crate::store::Notification {
    let short = format!(
        "We could not deliver to {failing} ({failures} refusals in a row), so we stopped sending there. Verify it again to resume."
    );
    let body = format!(
        "{short}\n\nThe provider refused our last {failures} messages to {failing} for good (a number no longer in service, a blocked bot, a removed address). \
         Until it is verified again, your notices go only to your other destinations, such as this one.\n"
    );
    crate::store::Notification::own(
        account,
        dest,
        "kci.unhealthy",
        crate::model::Priority::High,
        crate::model::Message {
            short,
            subject: "We stopped sending to one of your destinations".into(),
            body,
            encrypt_to: None,
        },
        now,
        None,
    )
}
