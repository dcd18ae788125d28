-- A published model's size, so that a project's usage (and its stored-bytes limit)
-- counts its models as well as its files and checkpoints. Models published before
-- this count 0 until they are deleted.
ALTER TABLE models ADD COLUMN bytes bigint NOT NULL DEFAULT 0 CHECK (bytes >= 0);
-- Summing a project's checkpoints reads its jobs' rows by project.
