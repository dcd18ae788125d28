"""Serving under load: hone against FastAPI + PyTorch and FastAPI + ONNX Runtime, the
same fine-tuned weights, the same requests, in one run. bench/run-serve installs what
is missing and calls `run`; see BENCHMARKS.md ("Serving: hone vs PyTorch vs ONNX
Runtime").

  1. hone (`hone all`, default config, its own database and data directory, port 0)
     fine-tunes all-MiniLM-L6-v2 through its REST API on real Rotten Tomatoes snippets
     (method feature_extraction) and publishes the model.
  2. bench/serve_python.py serves the directory hone published twice — PyTorch, and
     ONNX Runtime on an export of it — behind the same predict route.
  3. The three must agree (labels, and scores within --tolerance) on the texts the
     load sends, or nothing is measured.
  4. oha drives each server in turn with keep-alive clients at each concurrency, for
     one text per request and then for --batch-texts per request; per run: req/s,
     inputs/s, p50/p99 latency, errors, and the CPUs the server, oha and everything
     else kept busy.
  5. The encoder's FLOPs per input times hone's inputs/s, against torch.mm's GFLOP/s
     on --threads threads in the same run: how far from the machine's limit it is.

The driver itself needs only the standard library; the servers and oha are separate
processes, all on 127.0.0.1, all stopped when it exits.
"""

import argparse
import json
import os
import queue
import resource
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import strategies

ROOT = Path(__file__).resolve().parents[1]
SERVERS = ("hone", "pytorch", "onnx")
TITLES = {"hone": "hone", "pytorch": "PyTorch", "onnx": "ONNX Runtime"}


def log(message):
    print(f"serve: {message}", file=sys.stderr, flush=True)


# --- HTTP ------------------------------------------------------------------------------

def request(method, url, key=None, body=None, content_type="application/json",
            timeout=120):
    """(status, parsed JSON body) of one request; bodies that are not bytes are sent
    as JSON."""
    if body is not None and not isinstance(body, bytes):
        body = json.dumps(body).encode()
    headers = {"content-type": content_type} if body is not None else {}
    if key:
        headers["authorization"] = f"Bearer {key}"
    req = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def expect(status_body, what):
    status, body = status_body
    if status != 200:
        sys.exit(f"serve: {what}: HTTP {status}: {json.dumps(body)}")
    return body


def multipart(fields: dict, filename: str, content: bytes):
    """A multipart/form-data body with text `fields` and one `file`."""
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
             f"{value}\r\n".encode() for name, value in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
                 f'filename="{filename}"\r\nContent-Type: application/octet-stream'
                 "\r\n\r\n".encode() + content + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


# --- processes -------------------------------------------------------------------------

class Server:
    """A server process whose stdout goes to `log_path`, its address read from the
    first line starting with `ready`; its id recorded in `pids_file` so that
    bench/run-serve can stop it even if this driver dies."""

    def __init__(self, name, cmd, env, log_path: Path, pids_file: Path):
        self.name = name
        self.lines: queue.Queue = queue.Queue()
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=self.log, text=True,
                                     cwd=ROOT)
        with open(pids_file, "a") as f:
            f.write(f"{self.proc.pid}\n")
        threading.Thread(target=self._drain, daemon=True).start()
        self.base = None

    def _drain(self):
        for line in self.proc.stdout:
            self.log.write(line)
            self.log.flush()
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, prefix: str, timeout: float) -> str:
        """The rest of the first stdout line that starts with `prefix`."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                sys.exit(f"serve: {self.name} exited ({self.proc.wait()}) before "
                         f"printing {prefix!r}; see {self.log.name}")
            if line.strip().startswith(prefix):
                return line.strip()[len(prefix):].strip()
        sys.exit(f"serve: {self.name} printed no {prefix!r} within {timeout:.0f} s; "
                 f"see {self.log.name}")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads; 0 once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def database_backends(database: str) -> list[int]:
    """The Postgres backend processes connected to `database` (hone's pool)."""
    done = subprocess.run(
        ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-Atc",
         f"SELECT pid FROM pg_stat_activity WHERE datname = '{database}'"],
        capture_output=True, text=True, check=True)
    return [int(line) for line in done.stdout.split()]


def start_hone(args, env, work: Path, pids_file: Path):
    """`hone all` on a new database and data directory; (server, API key)."""
    env = {**env, "HONE_DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{args.database}",
           "HONE_LISTEN": "127.0.0.1:0", "HONE_DATA_DIR": str(work / "data")}
    server = Server("hone", [str(args.hone_bin), "all"], env, work / "hone.log", pids_file)
    key = server.wait_for("export HONE_API_KEY=", 300)
    server.base = server.wait_for("hone listening on", 300)
    return server, key


def start_python(kind, args, env, model_dir, model_id, work: Path, pids_file: Path):
    cmd = [sys.executable, str(ROOT / "bench/serve_python.py"), kind,
           "--model-dir", str(model_dir), "--model-id", model_id,
           "--threads", str(args.threads)]
    if kind == "onnx":
        cmd += ["--onnx", str(work / "model.onnx")]
    server = Server(kind, cmd, env, work / f"{kind}.log", pids_file)
    server.base = "http://" + server.wait_for("listening on", 300)
    return server


# --- training --------------------------------------------------------------------------

def train(base, key, plan, args) -> tuple[str, dict]:
    """Uploads the plan's training texts, fine-tunes, waits; (model id, the job)."""
    labels = plan["labels"]
    jsonl = "".join(json.dumps({"text": t, "label": labels[y]}) + "\n"
                    for t, y in zip(plan["train"]["texts"], plan["train"]["labels"]))
    body, content_type = multipart({"purpose": "fine-tune"}, "train.jsonl", jsonl.encode())
    file = expect(request("POST", f"{base}/v1/files", key, body, content_type), "upload")
    job = expect(request("POST", f"{base}/v1/fine_tuning/jobs", key, {
        "base_model": "all-MiniLM-L6-v2", "training_file": file["id"],
        "method": {"type": "feature_extraction"},
        "hyperparameters": {"epochs": args.epochs, "learning_rate": args.learning_rate,
                            "quantization": args.quantization},
        "suffix": "serve-bench"}), "create job")
    log(f"training {job['id']} on {file['examples']} texts "
        f"(feature_extraction, {args.epochs} epochs at lr {args.learning_rate}, "
        f"hone serving it quantized: {args.quantization})")
    deadline = time.monotonic() + args.train_timeout
    while time.monotonic() < deadline:
        job = expect(request("GET", f"{base}/v1/fine_tuning/jobs/{job['id']}", key), "poll")
        if job["status"] in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(1)
    if job["status"] != "succeeded":
        sys.exit(f"serve: job {job['id']} is {job['status']} after waiting: "
                 f"{json.dumps(job.get('error'))}")
    models = expect(request("GET", f"{base}/v1/models", key), "list models")["data"]
    ids = [m["id"] for m in models if m.get("job_id") == job["id"]]
    if len(ids) != 1:
        sys.exit(f"serve: GET /v1/models lists {ids} for job {job['id']}")
    return ids[0], job


def published_dir(data_dir: Path, model_id: str) -> Path:
    """The directory hone published the model in: hone-store's
    attempt_storage_key(model_id, attempt) under the artifact store's root."""
    stem = "models/" + model_id.replace(":", "_") + "-attempt-"
    found = sorted(d for d in (data_dir / "artifacts").glob(stem + "*")
                   if (d / "hone_model.json").is_file())
    if len(found) != 1:
        sys.exit(f"serve: expected one published directory {stem}* under "
                 f"{data_dir / 'artifacts'}, found {[str(d) for d in found]}")
    return found[0]


# --- measuring -------------------------------------------------------------------------

def predict_url(server, model_id):
    return f"{server.base}/v1/models/{model_id}/predict"


def check_same_model(servers, model_id, key, bodies, tolerance, flips=0.0) -> dict:
    """Every server's answers to every body the load sends; exits unless they agree
    with hone's: the same labels (but for a `flips` fraction of the texts: an int8 hone
    against fp32 servers), every score within `tolerance`. The largest score difference
    per server, and the fraction of labels that differ."""
    answers = {name: [expect(request("POST", predict_url(s, model_id), key, body),
                             f"{name} predict")["predictions"] for body in bodies]
               for name, s in servers.items()}
    worst, flipped = {}, {}
    for name in servers:
        worst[name], differ, seen = 0.0, 0, 0
        for body, got, want in zip(bodies, answers[name], answers["hone"]):
            for text, a, b in zip(body["inputs"], got, want):
                seen += 1
                if a["label"] != b["label"]:
                    differ += 1
                    if flips == 0.0:
                        sys.exit(f"serve: {name} says {a['label']!r}, hone {b['label']!r} "
                                 f"for {text!r}; not the same model, nothing measured")
                diff = max(abs(a["scores"][k] - b["scores"][k]) for k in b["scores"])
                worst[name] = max(worst[name], diff)
        flipped[name] = differ / max(seen, 1)
        if flipped[name] > flips:
            sys.exit(f"serve: {name}'s labels differ from hone's on {flipped[name]:.1%} of "
                     f"the texts (> {flips:.0%}); nothing measured")
        if worst[name] > tolerance:
            sys.exit(f"serve: {name}'s scores differ from hone's by up to "
                     f"{worst[name]:.2e} (> {tolerance}); nothing measured")
    return {name: {"max_score_diff": float(f"{worst[name]:.2e}"),
                   "labels_differ": round(flipped[name], 4)} for name in servers}


def oha(args, url, key, body_path: Path, concurrency, seconds):
    """oha's JSON report of one keep-alive load; also the CPU seconds oha used."""
    cmd = [str(args.oha), "--no-tui", "--output-format", "json", "-z", f"{seconds}s",
           "-c", str(concurrency), "--wait-ongoing-requests-after-deadline",
           "-m", "POST", "-T", "application/json", "-H", f"authorization: Bearer {key}",
           "-Z", str(body_path), url]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    # After the deadline oha waits for the answers in flight: at 64 clients of 32 texts
    # on a slow server that is minutes, but not this many.
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 900)
    except subprocess.TimeoutExpired:
        sys.exit(f"serve: oha did not finish within {seconds + 900} s: {url}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        sys.exit(f"serve: oha failed ({done.returncode}): {done.stderr.strip()}")
    own = sum(getattr(after, f) - getattr(before, f) for f in ("ru_utime", "ru_stime"))
    return json.loads(done.stdout), own


def measure(args, server, url, key, body_path, texts, concurrency, backends) -> dict:
    """One timed load after an untimed warm-up: throughput, latency, errors, and the
    CPUs kept busy by the server, by the database `backends` that serve it, by oha and
    by everything else."""
    if args.warmup_seconds > 0:
        oha(args, url, key, body_path, concurrency, args.warmup_seconds)
    hz = os.sysconf("SC_CLK_TCK")
    pids = backends()
    machine0, t0 = strategies.busy_jiffies(), time.monotonic()
    server0, db0 = cpu_seconds(server.proc.pid), sum(map(cpu_seconds, pids))
    report, oha_cpu = oha(args, url, key, body_path, concurrency, args.seconds)
    wall = time.monotonic() - t0
    machine = (strategies.busy_jiffies() - machine0) / hz
    server_cpu = cpu_seconds(server.proc.pid) - server0
    db_cpu = max(0.0, sum(map(cpu_seconds, pids)) - db0)
    summary = report["summary"]
    codes = {str(k): v for k, v in (report.get("statusCodeDistribution") or {}).items()}
    ok = codes.get("200", 0)
    duration = summary["total"]
    percentiles = report["latencyPercentiles"]
    return {
        "texts_per_request": texts,
        "concurrency": concurrency,
        "seconds": round(duration, 2),
        "requests_ok": ok,
        "req_per_s": round(ok / duration, 2),
        "inputs_per_s": round(ok * texts / duration, 2),
        "p50_ms": round(percentiles["p50"] * 1000, 2) if percentiles.get("p50") else None,
        "p99_ms": round(percentiles["p99"] * 1000, 2) if percentiles.get("p99") else None,
        "non_200": sum(v for k, v in codes.items() if k != "200"),
        "status_codes": codes,
        "connection_errors": sum((report.get("errorDistribution") or {}).values()),
        "error_kinds": report.get("errorDistribution") or {},
        # Mean number of CPUs kept busy while oha ran, by whom.
        "server_cpus": round(server_cpu / wall, 2),
        "database_cpus": round(db_cpu / wall, 2),
        "oha_cpus": round(oha_cpu / wall, 2),
        "other_cpus": round(max(0.0, machine - server_cpu - db_cpu - oha_cpu) / wall, 2),
    }


def limit(args, model_dir, work, passes) -> dict:
    """serve_python.py limit: FLOPs per input of each pass's texts, sgemm GFLOP/s."""
    texts_path = work / "limit-texts.json"
    strategies.write_json(texts_path, passes)
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench/serve_python.py"), "limit", "--model-dir",
         str(model_dir), "--threads", str(args.threads), "--texts", str(texts_path)],
        stdout=subprocess.PIPE, text=True, check=True, cwd=ROOT)
    return json.loads(done.stdout)


# --- report ----------------------------------------------------------------------------

def summarize(runs, limits) -> dict:
    """Ratios of hone's inputs/s over the others' per pass and concurrency, and each
    run's encoder GFLOP/s against the sgemm limit."""
    gflops = limits["sgemm_gflops"]["encoder_mix"]
    by_key = {(r["server"], r["texts_per_request"], r["concurrency"]): r for r in runs}
    for r in runs:
        flops = limits["passes"][str(r["texts_per_request"])]["encoder_flops_per_input"]
        r["encoder_gflops"] = round(r["inputs_per_s"] * flops / 1e9, 2)
        r["of_sgemm"] = round(r["encoder_gflops"] / gflops, 3)
        if r["server"] == "hone":
            for other in ("pytorch", "onnx"):
                peer = by_key.get((other, r["texts_per_request"], r["concurrency"]))
                value = strategies.ratio(r["inputs_per_s"], peer and peer["inputs_per_s"])
                r[f"hone_over_{other}"] = None if value is None else round(value, 3)
    hone_runs = [r for r in runs if r["server"] == "hone"]
    best = max(hone_runs, key=lambda r: r["inputs_per_s"], default=None)
    return {"sgemm_gflops": gflops,
            "hone_best": best and {k: best[k] for k in (
                "texts_per_request", "concurrency", "inputs_per_s", "encoder_gflops",
                "of_sgemm")}}


def table(result) -> str:
    lines = ["| texts/request | clients | server | req/s | inputs/s | p50 ms | p99 ms | "
             "errors (non-200 / conn.) | hone/PyTorch | hone/ORT | encoder GFLOP/s "
             "(of sgemm) | CPUs: server (+ its database) / oha / other |",
             "|" + "---|" * 12]
    f = lambda v, spec: "–" if v is None else format(v, spec)  # noqa: E731
    for r in result["runs"]:
        hone = r["server"] == "hone"
        lines.append(
            f"| {r['texts_per_request']} | {r['concurrency']} | {TITLES[r['server']]} | "
            f"{r['req_per_s']:,.1f} | {r['inputs_per_s']:,.1f} | {f(r['p50_ms'], '.1f')} | "
            f"{f(r['p99_ms'], '.1f')} | {r['non_200']} / {r['connection_errors']} | "
            f"{'**' + f(r.get('hone_over_pytorch'), '.2f') + 'x**' if hone else ''} | "
            f"{'**' + f(r.get('hone_over_onnx'), '.2f') + 'x**' if hone else ''} | "
            f"{r['encoder_gflops']:.1f} ({r['of_sgemm'] * 100:.0f} %) | "
            f"{r['server_cpus']:.2f}"
            f"{f' (+ {db:.2f})' if (db := r['database_cpus']) else ''} / "
            f"{r['oha_cpus']:.2f} / {r['other_cpus']:.2f} |")
    limits, best = result["limit"], result["summary"]["hone_best"]
    passes = "; ".join(f"{k} text{'s' if k != '1' else ''}/request: "
                       f"{v['mean_tokens']:.1f} tokens, "
                       f"{v['encoder_flops_per_input'] / 1e6:.1f} MFLOP"
                       for k, v in limits["passes"].items())
    lines.append("")
    lines.append(f"Encoder FLOPs per input ({passes}); sgemm on {limits['sgemm_threads']} "
                 f"threads: {limits['sgemm_gflops']['encoder_mix']:.1f} GFLOP/s "
                 f"(torch.mm at the encoder's shapes, {limits['sgemm_rows']} rows).")
    if best:
        lines.append(f"Distance to the limit: hone's best, {best['inputs_per_s']:,.1f} "
                     f"inputs/s ({best['texts_per_request']} "
                     f"text{'s' if best['texts_per_request'] != 1 else ''}/request, "
                     f"{best['concurrency']} clients), is {best['encoder_gflops']:.1f} "
                     f"GFLOP/s of encoder work: {best['of_sgemm'] * 100:.0f} % of sgemm.")
    return "\n".join(lines)


# --- run -------------------------------------------------------------------------------

def plan_for(args) -> dict:
    """bench/strategies.py's split of the corpus: training texts for hone's job, the
    disjoint test texts for the load."""
    parser = argparse.ArgumentParser()
    strategies.add_plan_args(parser)
    return strategies.make_plan(parser.parse_args([
        "--train-per-class", str(args.train_per_class),
        "--test-per-class", str((args.load_texts + 1) // 2)]))


def bodies_for(texts: list, per_request: int) -> list:
    """The request bodies of one pass, oha picking one at random for each request:
    every text alone, or windows of `per_request` texts starting every half window
    (cycling), so that each text is sent equally often."""
    if per_request == 1:
        return [{"inputs": [t]} for t in texts]
    step = max(1, per_request // 2)
    return [{"inputs": [texts[(start + i) % len(texts)] for i in range(per_request)]}
            for start in range(0, len(texts), step)]


def run(args):
    work = args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    pids_file = work / "pids"
    env = dict(os.environ)
    plan = plan_for(args)
    texts = plan["test"]["texts"][:args.load_texts]
    bodies = {n: bodies_for(texts, n) for n in args.texts_per_request}
    load_before = strategies.loadavg()
    servers = {}
    try:
        log(f"starting hone ({args.hone_bin}) on database {args.database}")
        servers["hone"], key = start_hone(args, env, work, pids_file)
        model_id, job = train(servers["hone"].base, key, plan, args)
        model_dir = published_dir(work / "data", model_id)
        log(f"{model_id} published in {model_dir}")
        log("exporting it to ONNX")
        subprocess.run([sys.executable, str(ROOT / "bench/serve_python.py"), "export",
                        "--model-dir", str(model_dir), "--threads", str(args.threads),
                        "--out", str(work / "model.onnx")], check=True, env=env, cwd=ROOT)
        for kind in ("pytorch", "onnx"):
            log(f"starting the {TITLES[kind]} server")
            servers[kind] = start_python(kind, args, env, model_dir, model_id, work,
                                         pids_file)
        int8 = args.quantization == "int8"
        agreement = check_same_model(servers, model_id, key,
                                     [b for pass_ in bodies.values() for b in pass_],
                                     args.int8_tolerance if int8 else args.tolerance,
                                     args.int8_flips if int8 else 0.0)
        log(f"the three agree on the requests of the load (against hone: {agreement})")
        # Each text is sent equally often, so each pass's mean is over its texts.
        limits = limit(args, model_dir, work, {
            str(n): [t for body in pass_ for t in body["inputs"]]
            for n, pass_ in bodies.items()})
        runs = []
        for per_request in args.texts_per_request:
            body_path = work / f"bodies-{per_request}.jsonl"
            body_path.write_text("".join(json.dumps(b) + "\n" for b in bodies[per_request]))
            for concurrency in args.concurrency:
                for name in SERVERS:
                    log(f"{TITLES[name]}: {per_request} text(s)/request, {concurrency} clients, "
                        f"{args.seconds} s")
                    backends = ((lambda: database_backends(args.database))
                                if name == "hone" else list)
                    row = measure(args, servers[name], predict_url(servers[name], model_id),
                                  key, body_path, per_request, concurrency, backends)
                    runs.append({"server": name, **row})
                    log(f"  {row['req_per_s']:.1f} req/s, {row['inputs_per_s']:.1f} "
                        f"inputs/s, p50 {row['p50_ms']} ms, p99 {row['p99_ms']} ms, "
                        f"errors {row['non_200']}/{row['connection_errors']}")
    finally:
        for server in servers.values():
            server.stop()
    result = {
        **strategies.run_meta(load_before),
        "threads": args.threads,
        "seconds": args.seconds,
        "warmup_seconds": args.warmup_seconds,
        "model": model_id,
        "job": job["id"],
        "training": {"method": "feature_extraction", "epochs": args.epochs,
                     "learning_rate": args.learning_rate,
                     "validation": (job.get("result") or {}).get("validation"),
                     "quantization": (job.get("result") or {}).get("quantization"),
                     "texts": len(plan["train"]["texts"]), "data": plan["data"]},
        "load_texts": texts,
        "bodies_per_pass": {str(k): len(v) for k, v in bodies.items()},
        "quantization": args.quantization,
        "agreement": agreement,
        "limit": limits,
        "runs": runs,
        "versions": versions(args),
    }
    result["summary"] = summarize(runs, limits)
    strategies.write_json(args.out, result)
    print(table(result))
    busiest = max((r["other_cpus"] for r in runs), default=0.0)
    if busiest > 0.1 * (os.cpu_count() or 1):
        log(f"warning: other processes kept up to {busiest:.2f} CPUs busy during a run; "
            "the numbers are not trustworthy, rerun on a quiet machine")
    log(f"wrote {args.out}")


def versions(args) -> dict:
    found = {"oha": subprocess.run([str(args.oha), "--version"], capture_output=True,
                                   text=True).stdout.strip()}
    script = ("import importlib.metadata as m, json, platform; print(json.dumps("
              "{'python': platform.python_version(), **{p: m.version(p) for p in "
              "('torch', 'transformers', 'tokenizers', 'fastapi', 'uvicorn', 'onnx', "
              "'onnxruntime')}}))")
    found.update(json.loads(subprocess.run([sys.executable, "-c", script],
                                           capture_output=True, text=True,
                                           check=True).stdout))
    return found


def whole_list(text):
    values = [int(v) for v in text.split(",") if v]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: whole numbers >= 1, comma-separated")
    return values


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="the whole benchmark")
    p.add_argument("--seconds", type=int, default=30, help="each timed load")
    p.add_argument("--warmup-seconds", type=int, default=3,
                   help="untimed load before each timed one")
    p.add_argument("--concurrency", type=whole_list, default=[1, 16, 64],
                   help="keep-alive clients, comma-separated")
    p.add_argument("--batch-texts", type=int, default=32,
                   help="texts per request of the second pass")
    p.add_argument("--passes", choices=("both", "single", "batch"), default="both",
                   help="one text per request, --batch-texts, or both")
    p.add_argument("--load-texts", type=int, default=128,
                   help="distinct test texts the requests carry")
    p.add_argument("--threads", type=int, default=2,
                   help="the Python servers' torch and ONNX Runtime threads, and "
                        "sgemm's (hone keeps its default config)")
    p.add_argument("--train-per-class", type=int, default=128)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--learning-rate", type=float, default=1e-3,
                   help="bench/run-strategies' feature_extraction recipe")
    p.add_argument("--train-timeout", type=int, default=900, help="seconds")
    p.add_argument("--quantization", choices=("none", "int8"), default="none",
                   help="how hone serves the model (its hyperparameters.quantization); "
                        "the Python servers serve the same weights in fp32")
    p.add_argument("--int8-tolerance", type=float, default=0.15,
                   help="with --quantization int8: the largest score difference allowed")
    p.add_argument("--int8-flips", type=float, default=0.1,
                   help="with --quantization int8: the fraction of labels that may differ")
    p.add_argument("--tolerance", type=float, default=1e-3,
                   help="largest score difference from hone accepted")
    p.add_argument("--hone-bin", type=Path, default=ROOT / "target/release/hone")
    p.add_argument("--oha", type=Path, default=ROOT / ".deps/tools/bin/oha")
    p.add_argument("--database", required=True, help="a Postgres database name to create")
    p.add_argument("--work-dir", type=Path, required=True,
                   help="the data directory, logs, bodies and the ONNX file")
    p.add_argument("--out", type=Path, default=ROOT / "bench/results/serve.json")
    args = parser.parse_args()
    for name in ("seconds", "batch_texts", "load_texts", "threads", "train_per_class",
                 "epochs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup_seconds < 0:
        parser.error("--warmup-seconds must be >= 0")
    args.texts_per_request = {"both": [1, args.batch_texts], "single": [1],
                              "batch": [args.batch_texts]}[args.passes]
    # bench/run-serve stops this driver with SIGTERM: stop the servers on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("serve: terminated"))
    run(args)


if __name__ == "__main__":
    main()
