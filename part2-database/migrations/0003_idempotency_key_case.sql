-- Idempotency keys are compared byte for byte: `aB` and `Ab` are two keys.
-- 0002 declared the column `CHARACTER SET ascii` with its default,
-- case-insensitive collation, under which a second write whose key differed
-- only in case was answered with the first write's answer and dropped.
ALTER TABLE idempotency_keys
    MODIFY idem_key VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL;
