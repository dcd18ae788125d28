"""Loads a model downloaded from hone (`GET /v1/models/{model}/content`, unpacked) as
its README says, by running the README's own Python snippet, and prints as JSON what
the snippet's `predict` gives for the inputs: one {label: probability} per input.

usage: load_export.py MODEL_FOLDER INPUTS_JSON
  MODEL_FOLDER  the folder the archive unpacked into
  INPUTS_JSON   a file holding the list of `predict`'s arguments, e.g. [["a text"]]

Run with `.deps/export/bin/python` (scripts/setup): torch, transformers, safetensors,
numpy and Pillow, nothing of hone's.
"""

import json
import os
import re
import sys


def main():
    folder, inputs_path = sys.argv[1:3]
    with open(inputs_path) as f:
        args = json.load(f)
    with open(os.path.join(folder, "README.md")) as f:
        readme = f.read()
    snippets = re.findall(r"^```python\n(.*?)^```", readme, re.S | re.M)
    assert len(snippets) == 1, f"the README has {len(snippets)} Python snippets"
    # The snippet names the folder as the archive unpacks it, from its parent.
    os.chdir(os.path.dirname(os.path.abspath(folder)))
    scope = {"__name__": "readme"}
    exec(compile(snippets[0], "README.md", "exec"), scope)
    print(json.dumps(scope["predict"](*args)))


if __name__ == "__main__":
    main()
