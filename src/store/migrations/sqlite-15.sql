-- An account's postal address (JSON: name, lines, postcode, town,
-- country), where its postal:account destination's letters go; NULL for
-- none.
ALTER TABLE accounts ADD COLUMN postal_address TEXT;
