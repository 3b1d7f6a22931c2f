-- Text is utf8mb4 end to end: Debian's MariaDB starts in latin1, where a
-- Chinese character or an emoji is "Incorrect string value" (a 500). The
-- database's default first, so tables created later (part 2's) inherit it;
-- then part 1's tables, converted in place.
ALTER DATABASE CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;
ALTER TABLE users      CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;
ALTER TABLE sessions   CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;
ALTER TABLE cart_items CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;

-- The name shown beside a user's writing; signup defaults it to the
-- username, so it is never empty. (Part 2's migration adds the same column
-- IF NOT EXISTS, for databases migrated before this one.)
ALTER TABLE users ADD COLUMN IF NOT EXISTS display_name VARCHAR(64) NOT NULL DEFAULT '';

-- Idempotency keys of the cart for `--sessions mariadb`, written in the
-- same transaction as the item (Redis keeps them in Redis). Scoped per
-- user; a key older than a day counts as unseen.
CREATE TABLE IF NOT EXISTS cart_idempotency (
    user_id    BIGINT UNSIGNED NOT NULL,
    idem_key   VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    cart_len   BIGINT UNSIGNED NOT NULL,
    created_at BIGINT          NOT NULL,
    PRIMARY KEY (user_id, idem_key)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;
