-- Which rows the sweeper (src/worker.rs) may publish again: only those
-- whose publish was never confirmed. `published_at` (ms since the epoch)
-- is set once a publish of the job is known to have reached the queue:
-- by the clone after the broker's confirm, by the sweeper after its own,
-- or by the first worker that starts the job (a delivered job was
-- published, whatever the clone managed to write). NULL means "nobody
-- knows it was ever published": a clone that died between the insert and
-- the publish, or between the confirm and this write (then the sweeper's
-- copy is a harmless duplicate: the claim makes the effect happen once).
--
-- Before this column the sweeper re-sent every `queued` row older than
-- the window, including jobs merely waiting behind a backlog: each got a
-- second full run, and the copies skipped `MAX_QUEUE_DEPTH`.
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS published_at BIGINT NULL;

-- Rows from before this migration: the old sweeper re-published every
-- `queued` row older than its window each window, so any such row has
-- been on the queue at least once. Mark them all published (a row
-- orphaned in the last window before the upgrade is the one case left
-- to a person: `GET /jobs/{id}` shows it `queued`).
UPDATE jobs SET published_at = created_at WHERE published_at IS NULL;

-- The sweeper's query is `status = 'queued' AND published_at IS NULL AND
-- updated_at < cutoff ORDER BY updated_at`: this index answers it without
-- reading the (many) queued rows that are simply waiting their turn.
DROP INDEX IF EXISTS jobs_stale ON jobs;
CREATE INDEX IF NOT EXISTS jobs_unpublished ON jobs (status, published_at, updated_at);
