-- The secrets kci keeps to use again are sealed with a key derived from
-- the code key (trust::seal::AtRest): a pending notice's one-time secret
-- and a webhook destination's signing secrets. Those an earlier version
-- stored in clear are sealed when `kci serve` starts; these partial
-- indexes let it find them without reading every row (few rows hold a
-- secret at all, and a row without one costs an insert nothing here).
CREATE INDEX IF NOT EXISTS notifications_secret ON notifications(id) WHERE secret IS NOT NULL;
CREATE INDEX IF NOT EXISTS destinations_secret ON destinations(id) WHERE secret IS NOT NULL;
