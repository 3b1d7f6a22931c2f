-- Users live in the shared database, never on a clone.
CREATE TABLE IF NOT EXISTS users (
    id            BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    username      VARCHAR(32)  NOT NULL,
    password_hash VARCHAR(255) NOT NULL,
    created_at    BIGINT       NOT NULL,
    UNIQUE KEY users_username (username)
) ENGINE = InnoDB;

-- Only for `--sessions mariadb`: the "never keep sessions in the database"
-- comparison. Every request reads and writes this table.
CREATE TABLE IF NOT EXISTS sessions (
    id         CHAR(64)        NOT NULL PRIMARY KEY,
    user_id    BIGINT UNSIGNED NOT NULL,
    username   VARCHAR(32)     NOT NULL,
    created_at BIGINT          NOT NULL,
    last_seen  BIGINT          NOT NULL
) ENGINE = InnoDB;

CREATE TABLE IF NOT EXISTS cart_items (
    seq        BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    session_id CHAR(64)        NOT NULL,
    item       VARCHAR(100)    NOT NULL,
    KEY cart_items_session (session_id)
) ENGINE = InnoDB;
