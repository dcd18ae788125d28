-- What OpenAI's fine-tuning API has and hone lacked: pausing a job, and a results file.

-- `paused`: the job holds no worker (no lease, not claimable) and goes on from its last
-- checkpoint once resumed. Not terminal, so finalized_at stays NULL; not running, so
-- lease_expires_at is NULL, as the table's checks already say. The new value is only
-- used after this migration commits (Postgres forbids using it in the same transaction).
ALTER TYPE job_status ADD VALUE IF NOT EXISTS 'paused';

-- Set by a pause request while the job runs: its worker stops after the next checkpoint
-- and hands the job back as `paused`. Cleared when the job is resumed.
ALTER TABLE fine_tuning_jobs
    ADD COLUMN pause_requested boolean NOT NULL DEFAULT false;

-- hyperparameters.learning_rate_multiplier: the learning rate over the default of the
-- method that runs (5e-5, or 1e-3 when only the head trains), for the jobs stored before
-- the field existed.
UPDATE fine_tuning_jobs
SET hyperparameters = hyperparameters || jsonb_build_object(
        'learning_rate_multiplier',
        (hyperparameters ->> 'learning_rate')::float8
            / CASE coalesce(method -> 'chosen' ->> 'type', method ->> 'type')
                  WHEN 'feature_extraction' THEN 1e-3 ELSE 5e-5 END)
WHERE NOT hyperparameters ? 'learning_rate_multiplier';

-- A job's results file (purpose `fine-tune-results`) is written with its success, in the
-- same transaction: it is no upload, so it sends no `file.processed` webhook.
CREATE OR REPLACE FUNCTION hone_webhook_file_processed() RETURNS trigger AS $$
BEGIN
    IF NEW.purpose <> 'fine-tune-results' THEN
        PERFORM hone_enqueue_webhook_event(NEW.project_id, 'file.processed', NEW.id);
    END IF;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;
