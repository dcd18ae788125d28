-- Tenants. Every file, job and model belongs to a project, and every API request acts
-- for the project of its key. The limit columns override the server's defaults
-- (config: max_active_jobs_per_project, max_stored_bytes_per_project) when set.
CREATE TABLE projects (
    id               text PRIMARY KEY,
    name             text        NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 64),
    max_active_jobs  integer     CHECK (max_active_jobs >= 0),
    max_stored_bytes bigint      CHECK (max_stored_bytes >= 0),
    created_at       timestamptz NOT NULL DEFAULT now()
);

-- API keys are shown once; only the SHA-256 of the secret is kept (the secret is 256
-- random bits, so a plain digest is as strong as a slow hash here, and lets a request
-- find its key by an index lookup). `prefix` is the start of the key, for lists.
CREATE TABLE api_keys (
    id           text PRIMARY KEY,
    project_id   text        NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    prefix       text        NOT NULL,
    hash         text        NOT NULL UNIQUE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at   timestamptz
);
CREATE INDEX api_keys_project_idx ON api_keys (project_id);

-- What existed before tenants belongs to the `default` project.
INSERT INTO projects (id, name) VALUES ('proj-00000000000000000000000000000000', 'default');

ALTER TABLE files
    ADD COLUMN project_id text NOT NULL DEFAULT 'proj-00000000000000000000000000000000'
        REFERENCES projects (id);
ALTER TABLE files ALTER COLUMN project_id DROP DEFAULT;
CREATE INDEX files_project_created_idx ON files (project_id, created_at DESC, id DESC);

ALTER TABLE fine_tuning_jobs
    ADD COLUMN project_id text NOT NULL DEFAULT 'proj-00000000000000000000000000000000'
        REFERENCES projects (id);
ALTER TABLE fine_tuning_jobs ALTER COLUMN project_id DROP DEFAULT;
CREATE INDEX fine_tuning_jobs_project_created_idx
    ON fine_tuning_jobs (project_id, created_at DESC, id DESC);
-- Counting a project's queued and running jobs (its limit) reads only those.
CREATE INDEX fine_tuning_jobs_project_active_idx ON fine_tuning_jobs (project_id)
    WHERE status IN ('validating_files', 'queued', 'running');

ALTER TABLE models
    ADD COLUMN project_id text NOT NULL DEFAULT 'proj-00000000000000000000000000000000'
        REFERENCES projects (id);
ALTER TABLE models ALTER COLUMN project_id DROP DEFAULT;
CREATE INDEX models_project_created_idx ON models (project_id, created_at DESC, id DESC);

-- Checkpoints and events belong to their job's project (through job_id).

-- An Idempotency-Key is the client's: two projects may use the same one.
ALTER TABLE idempotency_keys
    ADD COLUMN project_id text NOT NULL DEFAULT 'proj-00000000000000000000000000000000'
        REFERENCES projects (id) ON DELETE CASCADE;
ALTER TABLE idempotency_keys ALTER COLUMN project_id DROP DEFAULT;
ALTER TABLE idempotency_keys DROP CONSTRAINT idempotency_keys_pkey;
ALTER TABLE idempotency_keys ADD PRIMARY KEY (project_id, scope, key);
