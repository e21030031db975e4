-- Every text column compares byte by byte (collation "C"), as SQLite's
-- BINARY does, whatever the database's locale.
--
-- kci's text is ids, keys, account and destination names, states and
-- URIs: nothing sorted for a reader's language. Under the database's
-- default collation each comparison in an index went through the C
-- library's strcoll (both strings copied to be NUL-terminated, then
-- collated) unless that default is exactly "C" or "POSIX"; "C.UTF-8"
-- and every language locale pay it. Batch ingest on a C.UTF-8 database
-- spent about a tenth of PostgreSQL's time there (BENCHMARKS.md, stop
-- 42). Byte order also makes both stores list in the same order on any
-- server (keyset pages by id, names).
--
-- Changing a column's collation keeps its rows; each index over it is
-- built again, under a lock of its table for the time that takes. The
-- trigger that names token columns (migration 17) is made again after.
DROP TRIGGER IF EXISTS tokens_changed ON tokens;
DO $$
DECLARE
    t record;
    cols text;
BEGIN
    -- kci's own tables only: the schema may hold others'.
    FOR t IN
        SELECT c.oid, c.relname FROM pg_class c
        WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind = 'r'
          AND c.relname = ANY (ARRAY[
              'accounts', 'assurances', 'audit', 'audit_checkpoints', 'calls',
              'change_links', 'changes', 'channel_limits', 'contacts', 'credentials',
              'decisions', 'destinations', 'events', 'incidents', 'key_tokens', 'keys',
              'notifications', 'staff', 'staff_logins', 'throttle', 'tokens', 'used_proofs'])
        ORDER BY c.relname
    LOOP
        SELECT string_agg(format('ALTER COLUMN %I TYPE TEXT COLLATE "C"', a.attname), ', ' ORDER BY a.attnum)
        INTO cols
        FROM pg_attribute a
        WHERE a.attrelid = t.oid AND a.attnum > 0 AND NOT a.attisdropped
          AND a.atttypid = 'text'::regtype AND a.attcollation <> '"C"'::regcollation;
        IF cols IS NOT NULL THEN
            EXECUTE format('ALTER TABLE %I %s', t.relname, cols);
        END IF;
    END LOOP;
END
$$;
CREATE TRIGGER tokens_changed
AFTER UPDATE OF secret_hash, scopes, staff, expires_at, revoked_at, allow, cert OR DELETE ON tokens
FOR EACH STATEMENT EXECUTE FUNCTION kci_auth_changed();
