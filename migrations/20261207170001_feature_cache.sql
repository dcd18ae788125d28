-- The feature cache's entries, so that they count in their project's usage, are
-- evicted least recently used first past a byte cap, and go with the last file of
-- their project whose bytes they were computed from. Keys are
-- features/<project>/<file sha-256>/<digest>.safetensors.
CREATE TABLE feature_cache (
    key         text        PRIMARY KEY,
    project_id  text        NOT NULL REFERENCES projects (id),
    file_sha256 text        NOT NULL,
    bytes       bigint      NOT NULL CHECK (bytes >= 0),
    used_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX feature_cache_project_used_idx ON feature_cache (project_id, used_at);
CREATE INDEX feature_cache_file_idx ON feature_cache (project_id, file_sha256);
