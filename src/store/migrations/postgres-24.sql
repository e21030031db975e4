-- Nothing: migration 24 gives SQLite the turn check PostgreSQL has had
-- since migration 23 (`notifications_turn`, `notifications_busy`).
SELECT 1;
