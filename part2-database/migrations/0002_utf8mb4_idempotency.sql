-- utf8mb4 end to end. Debian's MariaDB defaults to latin1, where 中 or 😀
-- is "Incorrect string value" (a 500). MariaDB's "utf8" is utf8mb3: three
-- bytes at most, so no emoji either. Every column that holds what a user
-- typed becomes utf8mb4; tables without text get the default for later
-- columns (no rebuild). Usernames (part 1's) are ASCII by validation.

ALTER TABLE users
    MODIFY display_name VARCHAR(64)  CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci NOT NULL DEFAULT '',
    MODIFY bio          VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci NOT NULL DEFAULT '';

ALTER TABLE articles CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;
ALTER TABLE comments CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;
ALTER TABLE friendships DEFAULT CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;
ALTER TABLE likes DEFAULT CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;
ALTER TABLE heartbeat DEFAULT CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;

-- Idempotent writes: a request's Idempotency-Key, claimed in the same
-- transaction as its write, with the answer it got. A retry finds the key
-- (the primary key makes a second claim wait, then fail as a duplicate)
-- and gets the stored answer; the write never runs twice. `request` is
-- the method and path, so a key reused for another request is refused.
-- Production deletes keys after a day or so; the lab keeps them.
CREATE TABLE IF NOT EXISTS idempotency_keys (
    user_id    BIGINT UNSIGNED   NOT NULL,
    idem_key   VARCHAR(64)       CHARACTER SET ascii NOT NULL,
    request    VARCHAR(255)      NOT NULL,
    status     SMALLINT UNSIGNED NOT NULL,
    body       TEXT              NOT NULL,
    created_at BIGINT            NOT NULL,
    PRIMARY KEY (user_id, idem_key)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;
