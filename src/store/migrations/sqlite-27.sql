-- A pending notice was in two indexes by due time: `notifications_due`
-- (due_at) and `notifications_channel_due` (channel, due_at), so each
-- notice's insert, claim and finish kept both. Every lane of the
-- scheduler claims through the second; what asked the first (the next
-- due time, the backlog gauge) now asks the second once per channel
-- (`rows::sql::NEXT_DUE`), a read at the front of each channel's range.
-- The claim of all channels at once (`kci simulate`) sorts the pending
-- notices it reads instead.
DROP INDEX IF EXISTS notifications_due;
