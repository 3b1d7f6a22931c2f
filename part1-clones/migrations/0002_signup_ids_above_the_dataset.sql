-- The generated dataset's users have ids 1..N (N up to 100,000 at the
-- large scale). Signups start far above, so loading the dataset after
-- people signed up never meets an id that is taken.
ALTER TABLE users AUTO_INCREMENT = 1000000000;
