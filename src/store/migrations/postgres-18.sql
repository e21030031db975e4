-- A claim takes each key's notices to a destination in turn
-- (rows::sql::in_turn): for each candidate it asks whether an earlier one
-- of the same URI and key is still to go. Only pending and sending
-- notices are ever asked about, so only they are indexed.
CREATE INDEX IF NOT EXISTS notifications_in_turn
    ON notifications(uri, key, id) WHERE state IN ('pending', 'sending');
