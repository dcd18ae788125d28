-- Uploaded datasets. The bytes live in the artifact store under storage_key; this row
-- is written only after the whole upload validated and was stored.
CREATE TABLE files (
    id           text PRIMARY KEY,
    filename     text        NOT NULL,
    purpose      text        NOT NULL,
    format       text        NOT NULL,
    bytes        bigint      NOT NULL CHECK (bytes >= 0),
    sha256       text        NOT NULL,
    examples     bigint      NOT NULL CHECK (examples >= 0),
    label_counts jsonb       NOT NULL,
    storage_key  text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX files_created_idx ON files (created_at DESC, id DESC);

CREATE TYPE job_status AS ENUM
    ('validating_files', 'queued', 'running', 'succeeded', 'failed', 'cancelled');

-- The queue. A job is claimed with FOR UPDATE SKIP LOCKED and the claim is committed at
-- once: training runs for minutes to hours outside any transaction, kept alive by a
-- lease that the worker's heartbeat renews. Every finishing write is guarded by
-- status = 'running' AND attempt = <the worker's attempt>.
CREATE TABLE fine_tuning_jobs (
    id               text PRIMARY KEY,
    status           job_status  NOT NULL DEFAULT 'queued',
    base_model       text        NOT NULL,
    training_file    text        NOT NULL,
    validation_file  text,
    method           jsonb       NOT NULL,
    hyperparameters  jsonb       NOT NULL,
    seed             bigint      NOT NULL,
    suffix           text,
    metadata         jsonb,
    fine_tuned_model text,
    progress         jsonb,
    result           jsonb,
    error            jsonb,
    errors           jsonb       NOT NULL DEFAULT '[]',
    priority         smallint    NOT NULL DEFAULT 1,
    attempt          integer     NOT NULL DEFAULT 0,
    max_attempts     integer     NOT NULL DEFAULT 3 CHECK (max_attempts > 0),
    scheduled_at     timestamptz NOT NULL DEFAULT now(),
    attempted_at     timestamptz,
    attempted_by     text,
    lease_expires_at timestamptz,
    cancel_requested boolean     NOT NULL DEFAULT false,
    created_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finalized_at     timestamptz,
    CONSTRAINT finalized_iff_terminal CHECK (
        (status IN ('succeeded', 'failed', 'cancelled')) = (finalized_at IS NOT NULL)),
    CONSTRAINT lease_iff_running CHECK ((status = 'running') = (lease_expires_at IS NOT NULL))
);
CREATE INDEX fine_tuning_jobs_created_idx ON fine_tuning_jobs (created_at DESC, id DESC);
CREATE INDEX fine_tuning_jobs_claim_idx ON fine_tuning_jobs (priority, scheduled_at, id)
    WHERE status = 'queued';
CREATE INDEX fine_tuning_jobs_lease_idx ON fine_tuning_jobs (lease_expires_at)
    WHERE status = 'running';
CREATE INDEX fine_tuning_jobs_training_file_idx ON fine_tuning_jobs (training_file);

-- Wakes idle workers as soon as there is work; polling stays as the fallback.
CREATE FUNCTION notify_fine_tuning_job_queued() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('hone_jobs_queued', NEW.id);
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER fine_tuning_jobs_notify_queued
    AFTER INSERT OR UPDATE OF status ON fine_tuning_jobs
    FOR EACH ROW WHEN (NEW.status = 'queued')
    EXECUTE FUNCTION notify_fine_tuning_job_queued();

CREATE TABLE fine_tuning_job_events (
    seq        bigserial PRIMARY KEY,
    id         text        NOT NULL UNIQUE,
    job_id     text        NOT NULL REFERENCES fine_tuning_jobs (id) ON DELETE CASCADE,
    level      text        NOT NULL CHECK (level IN ('info', 'warn', 'error')),
    type       text        NOT NULL CHECK (type IN ('message', 'metrics')),
    message    text        NOT NULL,
    data       jsonb,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX fine_tuning_job_events_job_idx ON fine_tuning_job_events (job_id, seq DESC);

-- Published fine-tuned models: a directory in the artifact store.
CREATE TABLE models (
    id          text PRIMARY KEY,
    job_id      text        NOT NULL,
    base_model  text        NOT NULL,
    storage_key text        NOT NULL,
    labels      jsonb       NOT NULL,
    metrics     jsonb,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX models_created_idx ON models (created_at DESC, id DESC);
