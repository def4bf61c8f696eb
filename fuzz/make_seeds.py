"""Write the seed corpora of the fuzz targets: fuzz/run.sh calls this once (into $OUT/seeds).

  json/         the config.json that `cosyfast export-bundle` writes for the tiny synthetic model,
                the safetensors header of a small bundle, and a few hand-written documents
  safetensors/  a small bundle's weights.safetensors, and hand-written files with other dtypes
  bundle/       small bundles (CosyVoice2 and CosyVoice3) packed as the bundle target reads them:
                [config length, 4 bytes little-endian][config.json][weights.safetensors]

The tiny synthetic model is exported through the real CLI; its weights are 40 MB (151,936 text
rows), too large to fuzz, so the bundle seeds are exported from a micro model (hidden 2, one
layer) with the text embedding cut to the rows the layout needs. Needs torch and numpy; runs with
the package installed or from the source tree (PYTHONPATH=python).
Usage: python3 fuzz/make_seeds.py OUT_DIR
"""
from __future__ import annotations

import dataclasses
import json
import struct
import sys
import tempfile
from pathlib import Path

import numpy as np

from cosyfast import cli
from cosyfast.bundle import export_cpu_bundle, write_safetensors
from cosyfast.checkpoint import load_checkpoint
from cosyfast.synthetic import write_model_dir


def pack(bundle: Path) -> bytes:
    config = (bundle / "config.json").read_bytes()
    return struct.pack("<I", len(config)) + config + (bundle / "weights.safetensors").read_bytes()


def raw_safetensors(header: dict, data: bytes) -> bytes:
    blob = json.dumps(header).encode()
    return struct.pack("<Q", len(blob)) + blob + data


def main(out: Path) -> None:
    for name in ("json", "safetensors", "bundle"):
        (out / name).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        # The real exporter on the tiny model: its config.json seeds the JSON target.
        write_model_dir(t / "tiny", kind="cosyvoice2", size="tiny")
        if cli.main(["export-bundle", str(t / "tiny"), str(t / "tiny-bundle")]) != 0:
            raise SystemExit("cosyfast export-bundle failed")
        (out / "json" / "tiny_config.json").write_bytes((t / "tiny-bundle" / "config.json").read_bytes())

        micro = dict(layers=1, hidden=2, heads=1, kv_heads=1, ffn=2)
        for kind in ("cosyvoice2", "cosyvoice3"):
            write_model_dir(t / f"micro-{kind}", kind=kind, size=micro)
            w = load_checkpoint(t / f"micro-{kind}")
            rows = max(w.vocab["required_text_id"], 0) + 1  # the fewest the layout accepts
            w = dataclasses.replace(w, text_embedding=np.ascontiguousarray(w.text_embedding[:rows]))
            b = export_cpu_bundle(w, t / f"bundle-{kind}")
            (out / "bundle" / f"{kind}.bin").write_bytes(pack(b))
            if kind == "cosyvoice2":
                weights = (b / "weights.safetensors").read_bytes()
                (out / "safetensors" / "bundle_cv2.safetensors").write_bytes(weights)
                (n,) = struct.unpack("<Q", weights[:8])
                (out / "json" / "safetensors_header.json").write_bytes(weights[8:8 + n].rstrip(b" "))

    # Small hand-made files: other dtypes, a scalar, an empty tensor, metadata.
    write_safetensors(out / "safetensors" / "two_f32.safetensors",
                      {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.float32(1.5).reshape(())},
                      metadata={"k": "v"})
    (out / "safetensors" / "mixed.safetensors").write_bytes(raw_safetensors(
        {"x": {"dtype": "BF16", "shape": [2], "data_offsets": [0, 4]},
         "y": {"dtype": "I64", "shape": [1, 1], "data_offsets": [4, 12]},
         "z": {"dtype": "F32", "shape": [0, 5], "data_offsets": [12, 12]}},
        bytes(range(12))))
    (out / "safetensors" / "empty.safetensors").write_bytes(raw_safetensors({}, b""))
    docs = {
        "values.json": '[null, true, false, 0, -0, 1.5e-3, -12E+2, 9223372036854775807, "", {}]',
        "escapes.json": r'{"s": "a\"b\\c\/d\b\f\n\r\t\u00e9\ud83d\ude00", "n": -9223372036854775808}',
        "nested.json": '{"a": [[[{"b": [1, 2, {"c": []}]}]]]}',
    }
    for name, text in docs.items():
        (out / "json" / name).write_text(text, encoding="utf-8")
    for d in ("json", "safetensors", "bundle"):
        files = sorted((out / d).iterdir())
        print(f"seeds/{d}: {len(files)} files, largest {max(f.stat().st_size for f in files)} bytes")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    main(Path(sys.argv[1]))
