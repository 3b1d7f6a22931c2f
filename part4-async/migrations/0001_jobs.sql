-- Part 4's jobs, in the shared database next to part 2's social blog (its
-- migrations run first: the export job reads `articles` and `comments`).
--
-- `jobs` is what the user sees: one row per job, created by the frontend
-- before the job is queued, updated by whichever worker takes it. The
-- queue carries only the job's id; the row is the truth.
CREATE TABLE IF NOT EXISTS jobs (
    -- 32 lowercase hex digits: 12 of milliseconds since the epoch, then 20
    -- random, so ids sort by creation and cannot be guessed.
    id              CHAR(32)          CHARACTER SET ascii COLLATE ascii_bin NOT NULL PRIMARY KEY,
    owner_id        BIGINT UNSIGNED   NOT NULL,
    kind            VARCHAR(32)       CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    params          TEXT              NOT NULL,
    status          ENUM('queued', 'running', 'done', 'failed') NOT NULL DEFAULT 'queued',
    -- Percent, 0 to 100, written by the worker as it goes.
    progress        TINYINT UNSIGNED  NOT NULL DEFAULT 0,
    -- Why the last attempt failed (the job may still be retried), or why
    -- the job failed for good.
    error           VARCHAR(1000)     NULL,
    -- Attempts started, counted by the workers (the queue counts
    -- deliveries, which also include deliveries lost to a dead worker
    -- before it could write here).
    attempts        INT UNSIGNED      NOT NULL DEFAULT 0,
    -- A retried `POST /jobs` with the same key finds this job instead of
    -- starting a second one (the HTTP API uses it).
    idempotency_key VARCHAR(64)       CHARACTER SET ascii COLLATE ascii_bin NULL,
    created_at      BIGINT            NOT NULL,
    updated_at      BIGINT            NOT NULL,
    UNIQUE KEY jobs_idempotency (owner_id, idempotency_key),
    KEY jobs_owner (owner_id, created_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

-- The claim: a job's effect is committed in one transaction with a row
-- here, keyed by the job's id. Delivery is at least once (a worker that
-- dies after its commit but before its ack gets its job redelivered), so a
-- second attempt must find the claim and write nothing: the primary key
-- makes a concurrent second claim wait for the first transaction, then
-- fail as a duplicate.
CREATE TABLE IF NOT EXISTS job_effects (
    job_id     CHAR(32)     CHARACTER SET ascii COLLATE ascii_bin NOT NULL PRIMARY KEY,
    -- Which worker did it (the kill drill shows another worker finishing).
    worker     VARCHAR(64)  NOT NULL,
    claimed_at BIGINT       NOT NULL
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;

-- What a job produced, fetched by its owner (`result_url`).
CREATE TABLE IF NOT EXISTS job_results (
    job_id       CHAR(32)     CHARACTER SET ascii COLLATE ascii_bin NOT NULL PRIMARY KEY,
    content_type VARCHAR(100) NOT NULL,
    body         LONGTEXT     NOT NULL,
    created_at   BIGINT       NOT NULL
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;
