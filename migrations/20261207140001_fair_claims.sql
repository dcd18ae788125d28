-- Claims are fair across projects: a claim takes the head of the queue of the project
-- with the fewest running jobs (then priority, schedule, id), so one project's many
-- long jobs cannot hold every worker. The claim walks the projects that have queued
-- jobs (a skip scan of this index) and reads each one's head from it.
CREATE INDEX fine_tuning_jobs_project_claim_idx
    ON fine_tuning_jobs (project_id, priority, scheduled_at, id)
    WHERE status = 'queued';
-- Each project's running jobs, counted per claim.
CREATE INDEX fine_tuning_jobs_project_running_idx ON fine_tuning_jobs (project_id)
    WHERE status = 'running';
-- The queue's order across projects, which nothing reads any more.
DROP INDEX fine_tuning_jobs_claim_idx;
