"""schemathesis hooks for the examples run of tests/e2e/fuzz.rs.

The OpenAPI document's examples name resources by placeholder: a file id, a job id, a
model id and a webhook URL on example.com. A user copying an example puts their own
there; so does this hook, before the document is loaded, with what the test created
on the live server (given in HONE_FUZZ_* environment variables). Nothing else in the
document changes.
"""

import os

import schemathesis

# The placeholders in the document's examples, and the variables that hold the live
# values the test created.
PLACEHOLDERS = {
    "file-0192f3c4a1b27c3e8d5f6a7b8c9d0e1f": "HONE_FUZZ_FILE_ID",
    "ftjob-0192f3c4a1b27c3e8d5f6a7b8c9d0e1f": "HONE_FUZZ_JOB_ID",
    "ft:all-MiniLM-L6-v2:reviews:9d0e1f2a": "HONE_FUZZ_MODEL_ID",
    "https://example.com/hooks/hone": "HONE_FUZZ_WEBHOOK_URL",
}


def _replace(value):
    if isinstance(value, dict):
        return {k: _replace(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_replace(v) for v in value]
    if isinstance(value, str):
        for placeholder, variable in PLACEHOLDERS.items():
            live = os.environ.get(variable)
            if live:
                value = value.replace(placeholder, live)
    return value


@schemathesis.hook
def before_load_schema(ctx, raw_schema):
    replaced = _replace(raw_schema)
    raw_schema.clear()
    raw_schema.update(replaced)
