-- The decision that made a notice is kept in the notice's own row
-- (`first_*`, never updated afterwards), not as a row of `decisions`:
-- a batch's insert writes one row and its indexes a notice instead of
-- two rows and five indexes. `decisions` keeps every later decision.
-- A history reads both (`rows::history`). Notices stored before this
-- migration have no `first_*`: their first decision is in `decisions`.
ALTER TABLE notifications ADD COLUMN first_at INTEGER;
ALTER TABLE notifications ADD COLUMN first_state TEXT;
ALTER TABLE notifications ADD COLUMN first_reason TEXT;
ALTER TABLE notifications ADD COLUMN first_detail TEXT;
ALTER TABLE notifications ADD COLUMN first_due_at INTEGER;
