-- What a provider reported after accepting a notice: its own id to ask
-- about it, the receipt (awaiting, delivered, acknowledged, ...), when,
-- and the SMS segments billed.
ALTER TABLE notifications ADD COLUMN provider_ref TEXT;
ALTER TABLE notifications ADD COLUMN receipt TEXT;
ALTER TABLE notifications ADD COLUMN receipt_at INTEGER;
ALTER TABLE notifications ADD COLUMN segments INTEGER;
CREATE INDEX IF NOT EXISTS notifications_awaiting ON notifications(channel, sent_at) WHERE receipt = 'awaiting';
CREATE INDEX IF NOT EXISTS notifications_provider_ref ON notifications(provider_ref) WHERE provider_ref IS NOT NULL;

-- Destination health: permanent failures in a row, and since when kci
-- stopped sending there.
ALTER TABLE destinations ADD COLUMN failures INTEGER NOT NULL DEFAULT 0;
ALTER TABLE destinations ADD COLUMN unhealthy_since INTEGER;

-- Webhook destinations: their own signing secret, and during a rotation
-- the previous one, valid until previous_until.
ALTER TABLE destinations ADD COLUMN secret TEXT;
ALTER TABLE destinations ADD COLUMN previous_secret TEXT;
ALTER TABLE destinations ADD COLUMN previous_until INTEGER;

-- Each channel is its own queue: workers claim due notices per channel.
CREATE INDEX IF NOT EXISTS notifications_channel_due ON notifications(channel, due_at) WHERE state = 'pending';
