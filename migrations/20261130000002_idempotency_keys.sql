-- `Idempotency-Key` of create requests: the key is claimed in the same transaction as
-- the rows the request creates, with a digest of the request and the response it got,
-- so a retry with the same key and body gets the first response and a different body
-- a conflict.
CREATE TABLE idempotency_keys (
    scope          text        NOT NULL,
    key            text        NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    request_sha256 text        NOT NULL,
    response       jsonb,
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, key)
);
