-- The sweeper (src/worker.rs) looks for `queued` rows nobody has touched
-- for a while: a clone that died between inserting the row and publishing
-- the job leaves one. Without this index that look is a full scan of the
-- jobs table every pass, in every worker.
CREATE INDEX IF NOT EXISTS jobs_stale ON jobs (status, updated_at);
