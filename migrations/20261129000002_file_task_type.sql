-- What kind of task a file holds (inferred while it streamed in), so jobs can check a
-- validation file against its training file without rereading either.
ALTER TABLE files
    ADD COLUMN task_type text NOT NULL DEFAULT 'classification'
        CHECK (task_type IN ('classification', 'multi_label', 'multi_task')),
    ADD COLUMN text_pairs boolean NOT NULL DEFAULT false,
    ADD COLUMN task_label_counts jsonb NOT NULL DEFAULT '{}';
