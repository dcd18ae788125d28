-- Wakes the API replicas that stream a job's events (GET …/events?stream=true): each
-- new event NOTIFYs `hone_job_events` with its job's id, delivered at commit. A lost
-- notification only delays a stream until its next poll.
CREATE FUNCTION notify_fine_tuning_job_event() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('hone_job_events', NEW.job_id);
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER fine_tuning_job_events_notify
    AFTER INSERT ON fine_tuning_job_events
    FOR EACH ROW EXECUTE FUNCTION notify_fine_tuning_job_event();
