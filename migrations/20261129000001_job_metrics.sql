-- Loss and metric curves of a job (per step and per epoch), written by its worker at
-- every epoch's end; served by GET /v1/fine_tuning/jobs/{id}/metrics.
ALTER TABLE fine_tuning_jobs ADD COLUMN metrics jsonb;
