-- Webhooks: the endpoints a project registers, and an outbox of the events to send
-- them, which any API or worker process delivers (hone-webhooks).

-- The secret signs deliveries, so it is kept as it was shown (unlike API keys, which
-- are kept as a digest). After a rotation the replaced secret still signs, beside the
-- new one, until previous_secret_expires_at.
CREATE TABLE webhook_endpoints (
    id                         text PRIMARY KEY,
    project_id                 text        NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    url                        text        NOT NULL CHECK (length(url) <= 2048),
    description                text        CHECK (length(description) <= 512),
    events                     text[]      NOT NULL CHECK (cardinality(events) > 0),
    secret                     text        NOT NULL,
    previous_secret            text,
    previous_secret_expires_at timestamptz,
    enabled                    boolean     NOT NULL DEFAULT true,
    created_at                 timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT previous_secret_expires
        CHECK ((previous_secret IS NULL) = (previous_secret_expires_at IS NULL))
);
CREATE INDEX webhook_endpoints_project_idx
    ON webhook_endpoints (project_id, created_at DESC, id DESC);

-- What happened, once, whatever the number of endpoints it goes to. The body sent is
-- made from this row, so every attempt of an event sends the same id, type and time.
CREATE TABLE webhook_events (
    id         text PRIMARY KEY,
    project_id text        NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    type       text        NOT NULL,
    object_id  text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- The outbox: one event to one endpoint. A deliverer claims a due row with FOR UPDATE
-- SKIP LOCKED and commits the claim at once, moving next_attempt_at to the end of its
-- lease: nobody else takes the row while the request is in flight, and if the
-- deliverer dies the row is due again when the lease ends (at least once). Its result
-- is written only while `attempts` is still the number it claimed.
CREATE TABLE webhook_deliveries (
    id               text PRIMARY KEY,
    endpoint_id      text        NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    event_id         text        NOT NULL REFERENCES webhook_events (id) ON DELETE CASCADE,
    status           text        NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'succeeded', 'failed')),
    attempts         integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    lease_expires_at timestamptz,
    attempted_by     text,
    redelivery_of    text REFERENCES webhook_deliveries (id) ON DELETE SET NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz,
    CONSTRAINT finished_iff_final CHECK ((status <> 'pending') = (finished_at IS NOT NULL))
);
CREATE INDEX webhook_deliveries_due_idx ON webhook_deliveries (next_attempt_at, id)
    WHERE status = 'pending';
CREATE INDEX webhook_deliveries_endpoint_idx
    ON webhook_deliveries (endpoint_id, created_at DESC, id DESC);
CREATE INDEX webhook_deliveries_event_idx ON webhook_deliveries (event_id);

-- Every HTTP request made, for GET /v1/webhooks/{id}/deliveries.
CREATE TABLE webhook_delivery_attempts (
    delivery_id   text        NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    attempt       integer     NOT NULL,
    status_code   integer,
    latency_ms    bigint      NOT NULL,
    error         text,
    response_body text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (delivery_id, attempt)
);

-- Writes an event and its deliveries to every enabled endpoint of the project that
-- subscribed to its type, inside the caller's transaction, and wakes the deliverers.
-- The ids have the shapes of hone_domain's WebhookEventId and WebhookDeliveryId.
CREATE FUNCTION hone_enqueue_webhook_event(p_project text, p_type text, p_object text)
RETURNS void AS $$
DECLARE
    v_event text := 'evt-' || replace(gen_random_uuid()::text, '-', '');
BEGIN
    IF NOT EXISTS (SELECT 1 FROM webhook_endpoints
                   WHERE project_id = p_project AND enabled AND p_type = ANY (events)) THEN
        RETURN;
    END IF;
    INSERT INTO webhook_events (id, project_id, type, object_id)
        VALUES (v_event, p_project, p_type, p_object);
    INSERT INTO webhook_deliveries (id, endpoint_id, event_id)
        SELECT 'whdel-' || replace(gen_random_uuid()::text, '-', ''), e.id, v_event
        FROM webhook_endpoints e
        WHERE e.project_id = p_project AND e.enabled AND p_type = ANY (e.events);
    PERFORM pg_notify('hone_webhooks', v_event);
END;
$$ LANGUAGE plpgsql;

-- Events come from triggers, so the outbox row is written by the very statement that
-- changes a job's status, in its transaction, whichever code path makes the change
-- (a worker finishing, failing or stopping on cancel, the API cancelling a queued job,
-- the rescuer failing or cancelling a dead worker's job): none can forget it, and a
-- crash either keeps both or neither. A job enters `running` once per attempt.
CREATE FUNCTION hone_webhook_job_status() RETURNS trigger AS $$
BEGIN
    PERFORM hone_enqueue_webhook_event(
        NEW.project_id, 'fine_tuning.job.' || NEW.status::text, NEW.id);
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER fine_tuning_jobs_webhook_events
    AFTER UPDATE OF status ON fine_tuning_jobs
    FOR EACH ROW
    WHEN (NEW.status IS DISTINCT FROM OLD.status
          AND NEW.status IN ('running', 'succeeded', 'failed', 'cancelled'))
    EXECUTE FUNCTION hone_webhook_job_status();

-- A files row is written only once the upload is validated and stored.
CREATE FUNCTION hone_webhook_file_processed() RETURNS trigger AS $$
BEGIN
    PERFORM hone_enqueue_webhook_event(NEW.project_id, 'file.processed', NEW.id);
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER files_webhook_events
    AFTER INSERT ON files
    FOR EACH ROW EXECUTE FUNCTION hone_webhook_file_processed();
