"""hone driven by the official `openai` Python SDK, as a user of OpenAI's fine-tuning API
would drive it: every call below is the SDK's own, unchanged, and every typed field the
test reads must come back filled. Run by tests/e2e/openai_sdk.rs against a live server
with the SDK from .deps/openai (scripts/setup pins its version).

Usage: openai_sdk.py BASE_URL API_KEY. Prints one line per check; exits non-zero (with
the failed assertion) on the first that fails.
"""

import csv
import io
import json
import sys
import time

import openai
from openai import OpenAI

BASE_MODEL = "all-MiniLM-L6-v2"
ROWS = [(t, "pos") for t in [
    "a wonderful, moving film", "great acting and a clever plot", "I loved every minute",
    "brilliant and funny", "a joy to watch", "superb direction, superb cast",
]] + [(t, "neg") for t in [
    "a dull, lifeless film", "terrible acting and a silly plot", "I hated every minute",
    "boring and far too long", "a chore to sit through", "clumsy direction, wasted cast",
]]


def say(message):
    print(message, flush=True)


def wait(client, job_id, until, limit=300):
    """Polls the job until its status is one of `until`; returns it."""
    deadline = time.monotonic() + limit
    while True:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in until:
            return job
        assert job.status not in ("failed", "cancelled"), job
        assert time.monotonic() < deadline, f"job {job_id} stayed {job.status}"
        time.sleep(0.25)


def refused(call, param):
    """The call fails with a 400 whose error names `param`."""
    try:
        call()
    except openai.BadRequestError as e:
        error = e.body if isinstance(e.body, dict) else {}
        error = error.get("error", error)
        assert error.get("param") == param, e.body
        return error.get("message")
    raise AssertionError(f"accepted; expected a 400 naming {param}")


def main(base_url, api_key):
    client = OpenAI(base_url=f"{base_url}/v1", api_key=api_key, max_retries=0)
    say(f"openai {openai.__version__}")

    # Files, as OpenAI's docs upload them.
    data = "".join(json.dumps({"text": t, "label": l}) + "\n" for t, l in ROWS)
    training = client.files.create(file=("train.jsonl", data.encode()), purpose="fine-tune")
    assert training.id.startswith("file-") and training.purpose == "fine-tune", training
    say(f"files.create: {training.id}")
    # A file that expires, as the SDK sends it (multipart `expires_after[anchor]` and
    # `expires_after[seconds]`).
    brief = client.files.create(
        file=("brief.jsonl", data.encode()),
        purpose="fine-tune",
        expires_after={"anchor": "created_at", "seconds": 3600},
    )
    assert brief.expires_at == brief.created_at + 3600, brief
    assert training.expires_at is None, training
    client.files.delete(brief.id)
    say(f"files.create with expires_after: expires_at {brief.expires_at}")

    # Jobs, as OpenAI's docs create them: hyperparameters at the top level …
    job = client.fine_tuning.jobs.create(
        model=BASE_MODEL,
        training_file=training.id,
        hyperparameters={"n_epochs": 2, "batch_size": "auto"},
        suffix="sdk",
        metadata={"suite": "openai-sdk", "case": "top-level"},
    )
    assert job.model == BASE_MODEL, job
    assert job.hyperparameters.n_epochs == 2, job.hyperparameters
    assert job.hyperparameters.batch_size == 16, job.hyperparameters
    assert job.hyperparameters.learning_rate_multiplier == 1, job.hyperparameters
    say(f"jobs.create (hyperparameters): {job.id} {job.status}")

    # … and in `method`, OpenAI's current place for them.
    supervised = client.fine_tuning.jobs.create(
        model=BASE_MODEL,
        training_file=training.id,
        method={
            "type": "supervised",
            "supervised": {"hyperparameters": {
                "n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 2,
            }},
        },
        integrations=[],
        metadata={"suite": "openai-sdk", "case": "method"},
    )
    assert supervised.method.type == "auto", supervised.method
    assert supervised.hyperparameters.n_epochs == 2, supervised.hyperparameters
    assert supervised.hyperparameters.batch_size == 4, supervised.hyperparameters
    assert supervised.hyperparameters.learning_rate_multiplier == 2, supervised.hyperparameters
    say(f"jobs.create (method=supervised): {supervised.id}")

    # What the SDK sends that hone cannot honour is refused by name, never ignored.
    refused(lambda: client.fine_tuning.jobs.create(
        model=BASE_MODEL, training_file=training.id,
        integrations=[{"type": "wandb", "wandb": {"project": "x"}}]), "integrations")
    refused(lambda: client.fine_tuning.jobs.create(
        model=BASE_MODEL, training_file=training.id, extra_body={"base_model": "other"}),
        "model")
    refused(lambda: client.fine_tuning.jobs.create(
        model=BASE_MODEL, training_file=training.id,
        hyperparameters={"n_epochs": 2, "epochs": 3}), "hyperparameters.n_epochs")
    say("refusals name their field")

    done = wait(client, job.id, ("succeeded",))
    assert done.fine_tuned_model and done.fine_tuned_model.startswith(f"ft:{BASE_MODEL}:sdk:"), done
    assert done.trained_tokens and done.trained_tokens > 0, done.trained_tokens
    assert done.finished_at and done.estimated_finish is None, done
    assert len(done.result_files) == 1, done.result_files
    assert done.hyperparameters.n_epochs == 2, done.hyperparameters
    say(f"jobs.retrieve: {done.fine_tuned_model}, {done.trained_tokens} tokens")

    chosen = wait(client, supervised.id, ("succeeded",))
    assert "supervised" in chosen.method.to_dict()["chosen"]["reason"], chosen.method
    assert chosen.result_files, chosen
    say(f"method.chosen: {chosen.method.to_dict()['chosen']['type']}")

    # List filters are honoured.
    mine = client.fine_tuning.jobs.list(metadata={"suite": "openai-sdk", "case": "top-level"})
    assert [j.id for j in mine.data] == [job.id], mine.data
    both = client.fine_tuning.jobs.list(metadata={"suite": "openai-sdk"})
    assert {j.id for j in both.data} == {job.id, supervised.id}, both.data
    say("jobs.list(metadata=…)")

    # Checkpoints, in OpenAI's shape, a page at a time.
    first = client.fine_tuning.jobs.checkpoints.list(job.id, limit=1)
    assert len(first.data) == 1 and first.has_more, first
    checkpoint = first.data[0]
    assert checkpoint.id.startswith("ftckpt-"), checkpoint
    assert checkpoint.fine_tuning_job_id == job.id, checkpoint
    assert checkpoint.step_number > 0 and checkpoint.metrics.step == checkpoint.step_number
    assert checkpoint.metrics.train_loss is not None, checkpoint.metrics
    assert checkpoint.fine_tuned_model_checkpoint == f"{done.fine_tuned_model}:ckpt-1", checkpoint
    rest = client.fine_tuning.jobs.checkpoints.list(job.id, after=checkpoint.id, limit=10)
    assert [c.step_number > checkpoint.step_number for c in rest.data] == [True], rest.data
    say(f"checkpoints.list: {checkpoint.id}, then {rest.data[0].id}")

    # The results file: the job's metrics as CSV, downloaded like any file.
    content = client.files.content(done.result_files[0])
    rows = list(csv.DictReader(io.StringIO(content.text)))
    assert rows and rows[0].keys() >= {"step", "train_loss", "valid_loss"}, content.text
    assert int(rows[-1]["step"]) == checkpoint.step_number * 2, rows
    results = client.files.list(purpose="fine-tune-results")
    assert {f.id for f in results.data} == {done.result_files[0], chosen.result_files[0]}
    uploads = client.files.list(purpose="fine-tune")
    assert [f.id for f in uploads.data] == [training.id], uploads.data
    say(f"files.content: {len(rows)} rows; files.list(purpose=…)")

    # Models: the fine-tuned ones, and the base models as OpenAI lists its own.
    models = {m.id: m for m in client.models.list()}
    assert models[BASE_MODEL].owned_by == "system", models
    assert models[done.fine_tuned_model].owned_by == "user", models
    base = client.models.retrieve(BASE_MODEL)
    assert base.id == BASE_MODEL and base.owned_by == "system" and base.created > 0, base
    assert client.models.retrieve(done.fine_tuned_model).id == done.fine_tuned_model
    say(f"models.list: {len(models)} models; models.retrieve({BASE_MODEL})")

    # Pause and resume: the job stops at a checkpoint and goes on from it.
    long = client.fine_tuning.jobs.create(
        model=BASE_MODEL, training_file=training.id,
        hyperparameters={"n_epochs": 100, "batch_size": 1},
    )
    deadline = time.monotonic() + 300
    while True:
        running = client.fine_tuning.jobs.retrieve(long.id)
        if running.status == "running" and running.estimated_finish is not None:
            break
        assert running.status in ("queued", "running"), running
        assert time.monotonic() < deadline, running
        time.sleep(0.1)
    assert running.estimated_finish >= int(time.time()) - 5, running
    paused = client.fine_tuning.jobs.pause(long.id)
    assert paused.status in ("running", "paused"), paused
    paused = wait(client, long.id, ("paused",))
    assert paused.estimated_finish is None, paused
    kept = client.fine_tuning.jobs.checkpoints.list(long.id, limit=100).data
    assert kept, "a paused job keeps its checkpoints"
    say(f"jobs.pause: paused after epoch {kept[-1].metrics.to_dict()['epoch']}")
    resumed = client.fine_tuning.jobs.resume(long.id)
    assert resumed.status in ("queued", "running"), resumed
    deadline = time.monotonic() + 300
    while True:
        events = [e.message for e in client.fine_tuning.jobs.list_events(long.id, limit=100).data]
        if any(m.startswith("Resumed from epoch") for m in events):
            break
        assert time.monotonic() < deadline, events
        time.sleep(0.25)
    client.fine_tuning.jobs.cancel(long.id)
    wait(client, long.id, ("cancelled",))
    say("jobs.resume: resumed from its checkpoint")
    say("ok")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
