-- A checkpoint remembers the attempt that wrote it and whether it carries the training
-- state (optimizer moments, positions, history) a later attempt resumes from; those of
-- earlier builds hold weights only.
ALTER TABLE fine_tuning_job_checkpoints
    ADD COLUMN attempt integer CHECK (attempt >= 1),
    ADD COLUMN resumable boolean NOT NULL DEFAULT false;
