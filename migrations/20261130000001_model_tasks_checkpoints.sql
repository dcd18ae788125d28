-- Models of every task type: multi-label models list their labels as before, multi-task
-- models their tasks, each with its labels (head order).
ALTER TABLE models
    ADD COLUMN task_type text NOT NULL DEFAULT 'classification'
        CHECK (task_type IN ('classification', 'multi_label', 'multi_task')),
    ADD COLUMN tasks jsonb,
    -- Set when the model was published from a job's checkpoint rather than its end.
    ADD COLUMN checkpoint_epoch integer CHECK (checkpoint_epoch >= 1);

-- Per-epoch checkpoints of a job: the weights that training changes (the frozen ones
-- are the base model's) and the epoch's metrics. A retried attempt overwrites them.
CREATE TABLE fine_tuning_job_checkpoints (
    job_id      text        NOT NULL REFERENCES fine_tuning_jobs (id) ON DELETE CASCADE,
    epoch       integer     NOT NULL CHECK (epoch >= 1),
    step        bigint      NOT NULL CHECK (step >= 0),
    metrics     jsonb       NOT NULL,
    storage_key text        NOT NULL,
    bytes       bigint      NOT NULL CHECK (bytes >= 0),
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, epoch)
);
