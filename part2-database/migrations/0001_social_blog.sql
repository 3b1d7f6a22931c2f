-- Part 2's schema, normalized, plus the denormalized columns the lesson
-- compares against (author_name, comment_count, like_count on articles).
-- Part 1's migrations (users, sessions, cart_items) run first.

ALTER TABLE users
    ADD COLUMN IF NOT EXISTS display_name VARCHAR(64)  NOT NULL DEFAULT '',
    ADD COLUMN IF NOT EXISTS bio          VARCHAR(255) NOT NULL DEFAULT '';

-- Friendships are mutual: both directions are stored, so "my friends" is
-- one index range scan.
CREATE TABLE IF NOT EXISTS friendships (
    user_id   BIGINT UNSIGNED NOT NULL,
    friend_id BIGINT UNSIGNED NOT NULL,
    since     BIGINT          NOT NULL,
    PRIMARY KEY (user_id, friend_id)
) ENGINE = InnoDB;

CREATE TABLE IF NOT EXISTS articles (
    id            BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    author_id     BIGINT UNSIGNED NOT NULL,
    title         VARCHAR(200)    NOT NULL,
    body          TEXT            NOT NULL,
    published_at  BIGINT          NOT NULL,
    -- Denormalized: copies and counts kept right by the writes, in the
    -- same transaction, so the article list needs no join and no COUNT.
    author_name   VARCHAR(64)     NOT NULL DEFAULT '',
    comment_count INT UNSIGNED    NOT NULL DEFAULT 0,
    like_count    INT UNSIGNED    NOT NULL DEFAULT 0,
    KEY articles_author (author_id, published_at)
) ENGINE = InnoDB;

CREATE TABLE IF NOT EXISTS comments (
    id         BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    article_id BIGINT UNSIGNED NOT NULL,
    author_id  BIGINT UNSIGNED NOT NULL,
    body       VARCHAR(1000)   NOT NULL,
    created_at BIGINT          NOT NULL,
    -- The index of the SQL-tuning lesson: the demo drops and recreates it.
    KEY comments_article (article_id, created_at)
) ENGINE = InnoDB;

CREATE TABLE IF NOT EXISTS likes (
    article_id BIGINT UNSIGNED NOT NULL,
    user_id    BIGINT UNSIGNED NOT NULL,
    created_at BIGINT          NOT NULL,
    PRIMARY KEY (article_id, user_id)
) ENGINE = InnoDB;

-- Replication lag, measured: the primary bumps a row, the replica is read.
CREATE TABLE IF NOT EXISTS heartbeat (
    id    TINYINT UNSIGNED NOT NULL PRIMARY KEY,
    beat  BIGINT UNSIGNED  NOT NULL,
    at_us BIGINT           NOT NULL
) ENGINE = InnoDB;
