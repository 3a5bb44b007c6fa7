"""Output folders committed as a whole: what a reader loads is always one complete run.

A command that writes derived artifacts into a run folder (`consolidation.json`, `adapter/`,
`merged-lowrank/`, ...) stages each of them beside its target (`.adapter.partial-<run id>`), and
only when every one is complete commits them:

1. each staged folder gets a manifest (`corp_manifest.json`: the run id and every file's size and
   SHA-256), written last;
2. each artifact the command owns is moved aside (`.adapter.retired-<run id>`) and the staged one
   renamed into its place; an owned artifact this run did not produce (the adapter of an earlier
   run when this run's gate kept the base model) is retired, not left behind;
3. the run folder's record (`corp_outputs.json`: for each artifact the run id and the SHA-256 of
   its manifest or file) is replaced atomically. This is the commit point;
4. the retired copies are deleted.

Readers (`verify_folder`, `read_json`, `corp.models.load_model`) refuse an artifact whose manifest
is missing or does not match its files, or that the record does not name as committed: a process
killed between steps 2 and 3 leaves renamed folders that the record does not vouch for. The next
commit into the same run folder first puts back what the record names (`recover`), so a rerun
after a kill starts from the last committed run. Folders without a manifest outside a corp run
folder (a user's model directory) are read as they are.

This guards against a killed process (SIGKILL, OOM, a lost node), not against a power cut: large
files are not fsynced. The population log (`population.jsonl`) is not an artifact: it is appended
to in place and resumed (corp.method.population).

For tests, `CORP_TEST_KILL_AT=<point>` makes `kill_point(<point>)` SIGKILL the process; every
write point of a commit is named (`staged:<name>`, `retired:<name>`, `placed:<name>`,
`recorded`, `cleaned`), and `CORP_TEST_TRACE_POINTS=<file>` appends each point passed to <file>.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import time
import uuid

MANIFEST = "corp_manifest.json"
RECORD = "corp_outputs.json"
KILL_ENV = "CORP_TEST_KILL_AT"
TRACE_ENV = "CORP_TEST_TRACE_POINTS"
_HASH_CHUNK = 8 << 20  # bytes read at a time when hashing


class OutputError(ValueError):
    """An output folder or file that is not one complete, committed run."""


def kill_point(name: str) -> None:
    """A named write point: SIGKILL here when CORP_TEST_KILL_AT names it (tests only)."""
    trace = os.environ.get(TRACE_ENV)
    if trace:
        with open(trace, "a") as f:
            f.write(name + "\n")
    if os.environ.get(KILL_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def write_atomic(path: str, data: bytes | str) -> None:
    """Write `path` through a temporary name and a rename: readers see the old or the new file."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json_atomic(path: str, obj) -> None:
    write_atomic(path, json.dumps(obj, indent=2, default=str))


def _files(folder: str) -> list[str]:
    """Every file under `folder`, as sorted '/'-separated relative paths, the manifest excluded."""
    out = []
    for root, _, names in os.walk(folder):
        for name in names:
            rel = os.path.relpath(os.path.join(root, name), folder).replace(os.sep, "/")
            if rel != MANIFEST:
                out.append(rel)
    return sorted(out)


def write_manifest(folder: str, run_id: str, known: dict[str, str] | None = None) -> str:
    """Write `folder`'s manifest (run id, size and SHA-256 of every file), last. `known` maps
    relative paths to SHA-256s already computed while writing (so large shards are not read
    again). Returns the manifest's own SHA-256, the folder's identity."""
    known = known or {}
    files = {rel: {"bytes": os.path.getsize(os.path.join(folder, rel)),
                   "sha256": known.get(rel) or file_sha256(os.path.join(folder, rel))}
             for rel in _files(folder)}
    text = json.dumps({"run_id": run_id, "files": files}, indent=1, sort_keys=True)
    write_atomic(os.path.join(folder, MANIFEST), text)
    return hashlib.sha256(text.encode()).hexdigest()


def _identity(path: str) -> str | None:
    """SHA-256 of a file artifact, or of a folder artifact's manifest; None if there is none."""
    target = os.path.join(path, MANIFEST) if os.path.isdir(path) else path
    return file_sha256(target) if os.path.isfile(target) else None


def read_record(out_dir: str) -> dict | None:
    path = os.path.join(out_dir, RECORD)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _committed(path: str) -> tuple[dict | None, str]:
    """(the record's entry for `path` or None, why there is none) when `path`'s run folder has a
    record that manages `path`'s name; ({}, "") when it is not managed (no record, other name)."""
    out_dir, name = os.path.split(os.path.abspath(path))
    record = read_record(out_dir)
    if record is None or name not in record.get("managed", []):
        return {}, ""
    entry = record.get("artifacts", {}).get(name)
    if entry is not None:
        return entry, ""
    retired = record.get("retired", {}).get(name)
    why = (f"run {retired['run_id']} ({retired['command']}) retired it: {retired['why']}"
           if retired else "no committed run wrote it")
    return None, why


def why_missing(path: str) -> str:
    """Why a managed artifact is absent (', retired by run ...'), or '' if nothing says."""
    entry, why = _committed(path)
    return f": {why}" if entry is None else ""


def verify_folder(folder: str, required: bool = False, hashes: bool = True) -> dict | None:
    """The manifest of `folder` if the folder is one complete committed run; raises OutputError
    if it is not. A folder without a manifest is accepted (None returned) only when it is not a
    managed artifact of a corp run folder and `required` is false (a user's model directory).
    `hashes=False` checks sizes only."""
    entry, why = _committed(folder)
    if entry is None:
        raise OutputError(f"{folder} is not part of the committed run of "
                          f"{os.path.dirname(os.path.abspath(folder))}: {why}")
    manifest_path = os.path.join(folder, MANIFEST)
    if not os.path.exists(manifest_path):
        if required or entry:
            raise OutputError(f"{folder} has no {MANIFEST}: it was not written to the end (a "
                              f"killed run?); rerun the command that writes it")
        return None
    with open(manifest_path) as f:
        try:
            manifest = json.load(f)
        except json.JSONDecodeError as e:
            raise OutputError(f"{manifest_path} is not valid JSON ({e})") from None
    if entry and entry.get("sha256") != _identity(folder):
        raise OutputError(f"{folder} holds run {manifest.get('run_id')}, but its run folder "
                          f"committed run {entry.get('run_id')} (a run killed while committing); "
                          f"rerun the command that writes it")
    listed = manifest.get("files", {})
    extra = sorted(set(_files(folder)) - set(listed))
    if extra:
        raise OutputError(f"{folder}: files {extra[:5]} are not in its manifest (run "
                          f"{manifest.get('run_id')}): left over from another run")
    for rel, info in listed.items():
        path = os.path.join(folder, rel)
        if not os.path.isfile(path):
            raise OutputError(f"{folder}: {rel} of run {manifest.get('run_id')} is missing")
        if os.path.getsize(path) != info["bytes"] or (hashes and
                                                     file_sha256(path) != info["sha256"]):
            raise OutputError(f"{folder}: {rel} does not match its manifest (run "
                              f"{manifest.get('run_id')}): changed after it was written")
    return manifest


def read_json(path: str):
    """A JSON artifact, refused if its run folder's record says another run committed it."""
    entry, why = _committed(path)
    if entry is None:
        raise OutputError(f"{path} is not part of the committed run of "
                          f"{os.path.dirname(os.path.abspath(path))}: {why}")
    if entry and entry.get("sha256") != _identity(path):
        raise OutputError(f"{path} is not the file its run folder committed (run "
                          f"{entry.get('run_id')}): a run killed while committing; rerun it")
    with open(path) as f:
        return json.load(f)


def _aside(out_dir: str, name: str, kind: str, run_id: str) -> str:
    return os.path.join(out_dir, f".{name}.{kind}-{run_id}")


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.remove(path)


def recover(out_dir: str, names) -> None:
    """Undo what a killed commit left in `out_dir` for `names`: put back the committed copies it
    had moved aside, and delete staged and uncommitted ones. Runs before every commit."""
    if not os.path.isdir(out_dir):
        return
    record = read_record(out_dir) or {}
    committed = record.get("artifacts", {})
    for entry_name in os.listdir(out_dir):
        if entry_name.startswith(RECORD + ".tmp-"):
            _remove(os.path.join(out_dir, entry_name))
    leftovers = sorted(e for e in os.listdir(out_dir) if e.startswith("."))
    for name in names:
        target = os.path.join(out_dir, name)
        entry = committed.get(name)
        for entry_name in leftovers:
            if not entry_name.startswith(f".{name}."):
                continue
            path = os.path.join(out_dir, entry_name)
            restore = (entry_name.startswith(f".{name}.retired-") and entry is not None
                       and _identity(path) == entry["sha256"]
                       and _identity(target) != entry["sha256"])
            if restore:
                _remove(target)
                os.rename(path, target)
            elif entry_name.startswith((f".{name}.retired-", f".{name}.partial-")):
                _remove(path)
        if os.path.lexists(target) and name in record.get("managed", []) and (
                entry is None or _identity(target) != entry["sha256"]):
            _remove(target)  # placed by a killed commit, never committed


class Commit:
    """Stage a command's artifacts beside their targets and commit them as one run.

        with Commit(out_dir, owns=("consolidation.json", "adapter", "merged-lowrank"),
                    command="consolidate", run_id=run_id) as c:
            write_adapter(c.folder("adapter"), ...)
            c.write_json("consolidation.json", {...})
        # committed here; on an exception nothing is committed and the staged copies are removed

    Every name in `owns` that the run did not stage is retired by the commit.
    """

    def __init__(self, out_dir: str, owns, command: str, run_id: str | None = None):
        self.out_dir, self.owns, self.command = out_dir, tuple(owns), command
        self.run_id = run_id or new_run_id()
        self.staged: dict[str, str] = {}
        self.known: dict[str, dict[str, str]] = {}
        self.why_retired = "not written by this run"
        os.makedirs(out_dir, exist_ok=True)
        recover(out_dir, self.owns)

    def folder(self, name: str) -> str:
        """A fresh, empty staging folder for artifact `name`."""
        path = self._stage(name)
        os.makedirs(path)
        return path

    def file(self, name: str) -> str:
        """The staging path for file artifact `name`."""
        return self._stage(name)

    def write_json(self, name: str, obj: dict) -> str:
        path = self.file(name)
        write_json_atomic(path, {"run_id": self.run_id, **obj})
        return path

    def add_hashes(self, name: str, known: dict[str, str]) -> None:
        """SHA-256s of files of staged folder `name` computed while writing them."""
        self.known.setdefault(name, {}).update(known)

    def _stage(self, name: str) -> str:
        if name not in self.owns:
            raise ValueError(f"{name!r} is not one of this commit's artifacts {self.owns}")
        path = _aside(self.out_dir, name, "partial", self.run_id)
        _remove(path)
        self.staged[name] = path
        return path

    def commit(self) -> dict:
        """Seal, place, record, clean up (see the module docstring). Returns the new record."""
        identities = {}
        for name, path in self.staged.items():
            if not os.path.lexists(path):
                raise FileNotFoundError(f"staged artifact {name} was never written ({path})")
            identities[name] = (write_manifest(path, self.run_id, self.known.get(name))
                                if os.path.isdir(path) else file_sha256(path))
            kill_point(f"staged:{name}")
        record = read_record(self.out_dir) or {"artifacts": {}, "retired": {}}
        managed = sorted(set(record.get("managed", [])) | set(self.owns))
        if managed != record.get("managed"):  # from here readers check every owned name
            record["managed"] = managed
            write_json_atomic(os.path.join(self.out_dir, RECORD), record)
        retired = {}
        for name in self.owns:
            target = os.path.join(self.out_dir, name)
            if os.path.lexists(target):
                retired[name] = _aside(self.out_dir, name, "retired", self.run_id)
                os.rename(target, retired[name])
                kill_point(f"retired:{name}")
            if name in self.staged:
                os.rename(self.staged[name], target)
                kill_point(f"placed:{name}")
        artifacts, gone = dict(record.get("artifacts", {})), dict(record.get("retired", {}))
        for name in self.owns:
            previous = artifacts.pop(name, None)
            if name in self.staged:
                gone.pop(name, None)
                artifacts[name] = {"run_id": self.run_id, "command": self.command,
                                   "sha256": identities[name]}
            elif previous is not None or name in retired:
                gone[name] = {"run_id": self.run_id, "command": self.command,
                              "why": self.why_retired}
        record.update(artifacts=artifacts, retired=gone, last_run={
            "run_id": self.run_id, "command": self.command,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        write_json_atomic(os.path.join(self.out_dir, RECORD), record)
        kill_point("recorded")
        for path in retired.values():
            _remove(path)
        kill_point("cleaned")
        self.staged = {}
        return record

    def abort(self) -> None:
        for path in self.staged.values():
            _remove(path)
        self.staged = {}

    def __enter__(self) -> "Commit":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()
