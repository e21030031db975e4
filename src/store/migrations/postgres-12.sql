-- A token bound to a client certificate (issue 16): the SHA-256 of the
-- certificate's DER, lower-case hex; without it, no certificate is asked.
ALTER TABLE tokens ADD COLUMN cert TEXT;
