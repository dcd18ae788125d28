-- Files may expire (OpenAI's `expires_after`): past `expires_at` a file that no
-- unfinished job uses is deleted, row and bytes.
ALTER TABLE files ADD COLUMN expires_at timestamptz;
CREATE INDEX files_expires_idx ON files (expires_at) WHERE expires_at IS NOT NULL;
