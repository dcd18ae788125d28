"""`"learning_rate": "auto"` on images, through the API: Fashion-MNIST (Debian's
fashion-mnist package, which scripts/setup installs; the first 20 training images of
each class to train on, the first 50 test images of each class held out), EfficientNet-
Lite0, `full` for 3 epochs, once at the default learning rate and once with
`"learning_rate": "auto"`, each a job of a fresh `hone all` (its own database, port
18777); prints each job's validation accuracy, its held-out accuracy through predict,
its time and the search's trials. Needs PIL (the bench's .venv has it).

    .venv/bin/python bench/learning_rate_images.py [path/to/hone]   (default target/debug/hone)
"""
import base64, gzip, io, json, os, shutil, subprocess, sys, threading, time, urllib.request, uuid
from pathlib import Path
from PIL import Image

ROOT = str(Path(__file__).resolve().parents[1])
HONE = sys.argv[1] if len(sys.argv) > 1 else ROOT + "/target/debug/hone"
def idx(path, images):
    data = gzip.open(path).read()
    if images:
        n, r, c = int.from_bytes(data[4:8], "big"), int.from_bytes(data[8:12], "big"), int.from_bytes(data[12:16], "big")
        return [data[16 + i*r*c: 16 + (i+1)*r*c] for i in range(n)], (r, c)
    return list(data[8:]), None
D = "/usr/share/datasets/fashion-mnist/"
tr_x, shape = idx(D + "train-images-idx3-ubyte.gz", True); tr_y, _ = idx(D + "train-labels-idx1-ubyte.gz", False)
te_x, _ = idx(D + "t10k-images-idx3-ubyte.gz", True); te_y, _ = idx(D + "t10k-labels-idx1-ubyte.gz", False)
def pick(xs, ys, per):
    out, count = [], {}
    for x, y in zip(xs, ys):
        if count.get(y, 0) < per:
            count[y] = count.get(y, 0) + 1; out.append((x, y))
    return out
def png(pixels):
    im = Image.frombytes("L", shape[::-1], pixels); b = io.BytesIO(); im.save(b, "PNG"); return base64.b64encode(b.getvalue()).decode()
train = pick(tr_x, tr_y, 20); test = pick(te_x, te_y, 50)
db = "hone_lrcheck_" + uuid.uuid4().hex[:8]
env = dict(os.environ, HONE_DATABASE_URL=f"postgres://postgres@127.0.0.1:5432/{db}", HONE_LISTEN="127.0.0.1:18777",
           HONE_DATA_DIR="/tmp/" + db, HONE_MODELS_DIR=ROOT + "/.deps/models", RUST_LOG="warn")

def request(base, key, method, path, body=None, ctype="application/json"):
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    r = urllib.request.Request(base + path, data=data, method=method,
                               headers={"Authorization": f"Bearer {key}", "Content-Type": ctype})
    with urllib.request.urlopen(r, timeout=600) as resp:
        return json.loads(resp.read())


def measure(proc):
    key = None
    for line in proc.stdout:
        line = line.strip()
        if line.startswith("export HONE_API_KEY="):
            key = line.split("=", 1)[1]
        if line.startswith("hone listening on"):
            break
    threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
    req = lambda *a, **k: request("http://127.0.0.1:18777", key, *a, **k)
    jsonl = "".join(json.dumps({"image": png(x), "label": str(y)}) + "\n" for x, y in train).encode()
    b = "----x" + uuid.uuid4().hex
    body = (f"--{b}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nfine-tune\r\n"
            f"--{b}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"fm.jsonl\"\r\n\r\n"
            ).encode() + jsonl + f"\r\n--{b}--\r\n".encode()
    f = req("POST", "/v1/files", body, f"multipart/form-data; boundary={b}")
    for name, hp in [("default", {"epochs": 3}), ("auto", {"epochs": 3, "learning_rate": "auto"})]:
        t0 = time.time()
        job = req("POST", "/v1/fine_tuning/jobs", {"base_model": "efficientnet-lite0", "training_file": f["id"],
                                                  "method": {"type": "full"}, "hyperparameters": hp, "seed": 0})
        while job["status"] not in ("succeeded", "failed", "cancelled"):
            time.sleep(2)
            job = req("GET", f"/v1/fine_tuning/jobs/{job['id']}")
        secs = time.time() - t0
        if job["status"] != "succeeded":
            print(name, job["status"], job.get("error"))
            continue
        model, correct = job["fine_tuned_model"], 0
        for i in range(0, len(test), 50):
            chunk = test[i:i + 50]
            out = req("POST", f"/v1/models/{model}/predict", {"inputs": [{"image": png(x)} for x, _ in chunk]})
            correct += sum(p["label"] == str(y) for p, (_, y) in zip(out["predictions"], chunk))
        r = job["result"]
        print(name, json.dumps({"validation_accuracy": r["validation"]["accuracy"],
                                "test_accuracy": correct / len(test), "seconds": round(secs, 1),
                                "search": r.get("learning_rate_search")}), flush=True)


proc = subprocess.Popen([HONE, "all"], env=env, stdout=subprocess.PIPE, text=True)
try:
    measure(proc)
finally:
    proc.terminate()
    proc.wait()
    subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-c",
                    f"DROP DATABASE IF EXISTS {db} WITH (FORCE)"], capture_output=True)
    shutil.rmtree("/tmp/" + db, ignore_errors=True)
