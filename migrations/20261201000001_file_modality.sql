-- Whether a file's examples are texts or images, so that jobs can refuse a file whose
-- inputs the base model cannot read without rereading it. Every earlier file is text.
ALTER TABLE files
    ADD COLUMN modality text NOT NULL DEFAULT 'text'
        CHECK (modality IN ('text', 'image'));
