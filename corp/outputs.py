"""Output folders committed as a whole: what a reader loads is always one complete run.

A command that writes derived artifacts into a run folder (`consolidation.json`, `adapter/`,
`merged-lowrank/`, ...) stages each of them beside its target (`.adapter.partial-<run id>`), and
only when every one is complete commits them:

1. each staged folder gets a manifest (`corp_manifest.json`: the run id and every file's size and
   SHA-256), written last;
2. the run folder's record (`corp_outputs.json`) is marked `committing` (the run, the names it
   owns and the identity of each staged artifact): from here readers check every owned name;
3. each artifact the command owns is moved aside (`.adapter.retired-<run id>`) and the staged one
   renamed into its place; an owned artifact this run did not produce (the adapter of an earlier
   run when this run's gate kept the base model) is retired, not left behind;
4. the record (for each artifact the run id and the SHA-256 of its manifest or file, the names
   corp manages, no `committing` mark) is replaced atomically. This is the commit point;
5. the retired copies are deleted.

One command commits into a run folder at a time: a `Commit` holds an exclusive `fcntl.flock` on
`<run folder>/.corp_outputs.lock` (the file holds its pid and host) from its start, where it
recovers the folder, to the end of `commit()` or `abort()`; a second command is refused at once.

Readers (`verify_folder`, `read_json`, `corp.models.load_model`) refuse an artifact whose manifest
is missing or does not match its files, or that the record does not name as committed: a process
killed between steps 2 and 4 leaves renamed folders that the record does not vouch for. `recover`
puts back what the record names, and an artifact no corp run managed (one an older corp wrote)
that the killed commit had moved aside; it runs at the start of every commit, and a reader that
finds a killed commit's leftovers runs it first when it can take the lock (`settle`), so a rerun
or a reader after a kill sees the last committed run. Folders without a manifest outside a corp
run folder (a user's model directory) are read as they are. A commit may mark fields of a committed
JSON artifact it does not own as no longer true (`Commit.supersede`: `consolidate --streaming`
replacing the adapter that `consolidation.json` describes); `read_json` leaves them out.

This guards against a killed process (SIGKILL, OOM, a lost node), not against a power cut: large
files are not fsynced. The population log (`population.jsonl`) is not an artifact: it is appended
to in place and resumed (corp.method.population).

For tests, `CORP_TEST_KILL_AT=<point>` makes `kill_point(<point>)` SIGKILL the process; every
write point of a commit is named (`staged:<name>`, `retired:<name>`, `placed:<name>`,
`recorded`, `cleaned`), and `CORP_TEST_TRACE_POINTS=<file>` appends each point passed to <file>.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import time
import uuid

MANIFEST = "corp_manifest.json"
RECORD = "corp_outputs.json"
LOCK = ".corp_outputs.lock"
KILL_ENV = "CORP_TEST_KILL_AT"
TRACE_ENV = "CORP_TEST_TRACE_POINTS"
_HASH_CHUNK = 8 << 20  # bytes read at a time when hashing


log = logging.getLogger("corp")


class OutputError(ValueError):
    """An output folder or file that is not one complete, committed run."""


class OutputLocked(OutputError):
    """Another process is committing into the run folder."""


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
    if record is None:
        return {}, ""
    pending = record.get("committing") or {}
    if name not in record.get("managed", []) and name not in pending.get("names", []):
        return {}, ""
    entry = record.get("artifacts", {}).get(name)
    if entry is not None:
        return entry, ""
    if name not in record.get("managed", []):
        return None, (f"run {pending.get('run_id')} ({pending.get('command')}) started to commit "
                      f"it and has not finished (it is still running, or was killed; the next "
                      f"command that commits into this folder puts back what it replaced)")
    retired = record.get("retired", {}).get(name)
    why = (f"run {retired['run_id']} ({retired['command']}) retired it: {retired['why']}"
           if retired else "no committed run wrote it")
    return None, why


def why_missing(path: str) -> str:
    """Why a managed artifact is absent (', retired by run ...'), or '' if nothing says."""
    settle(path)
    if os.path.lexists(path):
        return (": a command killed while committing into its folder had moved it aside; it is "
                "back in place now, run this command again")
    entry, why = _committed(path)
    return f": {why}" if entry is None else ""


def verify_folder(folder: str, required: bool = False, hashes: bool = True) -> dict | None:
    """The manifest of `folder` if the folder is one complete committed run; raises OutputError
    if it is not. A folder without a manifest is accepted (None returned) only when it is not a
    managed artifact of a corp run folder and `required` is false (a user's model directory).
    `hashes=False` checks sizes only."""
    settle(folder)
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
    settle(path)
    entry, why = _committed(path)
    if entry is None:
        raise OutputError(f"{path} is not part of the committed run of "
                          f"{os.path.dirname(os.path.abspath(path))}: {why}")
    if entry and entry.get("sha256") != _identity(path):
        raise OutputError(f"{path} is not the file its run folder committed (run "
                          f"{entry.get('run_id')}): a run killed while committing; rerun it")
    with open(path) as f:
        obj = json.load(f)
    superseded = (entry or {}).get("superseded")
    if superseded and isinstance(obj, dict):  # fields that describe artifacts a later run replaced
        for field in superseded["fields"]:
            obj.pop(field, None)
        obj["superseded"] = superseded
    return obj


def _aside(out_dir: str, name: str, kind: str, run_id: str) -> str:
    return os.path.join(out_dir, f".{name}.{kind}-{run_id}")


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.remove(path)


def exclusive_lock(lock_path: str, refusal) -> int:
    """An exclusive flock on `lock_path`, held until the returned descriptor is closed (a holder
    that dies releases it: no stale locks). The file holds the holder's pid and host; when another
    process holds it, raises refusal(holder) (an exception naming the holder and what to do)."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 256, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise refusal(holder) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()} on {socket.gethostname()}\n".encode(), 0)
    return fd


def _lock(out_dir: str) -> int:
    """The run folder's commit lock, `<out_dir>/.corp_outputs.lock`."""
    lock_path = os.path.join(out_dir, LOCK)
    return exclusive_lock(lock_path, lambda holder: OutputLocked(
        f"{out_dir} is being written by another corp command (pid {holder}, which holds "
        f"{lock_path}): two commands committing into one folder would destroy each other's "
        f"outputs. Wait for it to finish (or stop it), or give this command another "
        f"--output-dir"))


def recover(out_dir: str, names=()) -> None:
    """Undo what a killed commit left in `out_dir`: put back the committed copies it had moved
    aside, and an artifact no corp run managed (an older corp's) that it had retired; delete
    staged copies and ones placed but never committed. Covers `names`, every name the record
    manages and every name a killed commit was committing. Call it holding the folder's lock
    (`Commit` does; `settle` takes it)."""
    if not os.path.isdir(out_dir):
        return
    record = read_record(out_dir) or {}
    committed = record.get("artifacts", {})
    managed = set(record.get("managed", []))
    pending = record.get("committing") or {}
    placed = pending.get("placed", {})
    for entry_name in os.listdir(out_dir):
        if entry_name.startswith(RECORD + ".tmp-"):
            _remove(os.path.join(out_dir, entry_name))
    leftovers = sorted(e for e in os.listdir(out_dir) if e.startswith("."))
    for name in sorted(set(names) | managed | set(pending.get("names", []))):
        target = os.path.join(out_dir, name)
        entry = committed.get(name)
        if os.path.lexists(target):
            current = _identity(target)
            if (current != entry["sha256"] if entry is not None else
                    name in managed or (name in placed and current == placed[name])):
                _remove(target)  # placed by a killed commit, never committed
        for entry_name in leftovers:
            if not entry_name.startswith(f".{name}."):
                continue
            path = os.path.join(out_dir, entry_name)
            restore = (entry_name.startswith(f".{name}.retired-")
                       and not os.path.lexists(target)
                       and (_identity(path) == entry["sha256"] if entry is not None
                            else name not in managed))
            if restore:
                os.rename(path, target)
            elif entry_name.startswith((f".{name}.retired-", f".{name}.partial-")):
                _remove(path)
    if pending:
        del record["committing"]
        write_json_atomic(os.path.join(out_dir, RECORD), record)


def settle(path: str) -> None:
    """Recover the run folder of artifact `path` before it is read, if a killed commit left it
    unsettled (its record marked `committing`, or a retired copy of `path` lies beside it) and
    its lock is free. A folder being committed, or one this process cannot write, is left as it
    is: the reader's checks then refuse what the record does not vouch for."""
    out_dir, name = os.path.split(os.path.abspath(path))
    record = read_record(out_dir) if os.path.isdir(out_dir) else None
    if record is None:
        return
    if not record.get("committing") and not any(
            e.startswith(f".{name}.retired-") for e in os.listdir(out_dir)):
        return
    try:
        fd = _lock(out_dir)
    except (OutputLocked, OSError):
        return
    try:
        recover(out_dir)
    except OSError as e:
        log.warning("%s: could not put back what a killed commit left (%s)", out_dir, e)
    finally:
        os.close(fd)


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
        self.supersedes: dict[str, dict] = {}
        self._lock_fd: int | None = None
        os.makedirs(out_dir, exist_ok=True)
        self._lock_fd = _lock(out_dir)  # held to the end of commit() or abort()
        try:
            recover(out_dir, self.owns)
        except BaseException:
            self._release()
            raise

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

    def supersede(self, name: str, fields, why: str) -> None:
        """Mark `fields` of committed JSON artifact `name` (which this run does not own) as no
        longer true once this run commits: `read_json` leaves them out and says why."""
        self.supersedes[name] = {"fields": list(fields), "why": why}

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
        """Seal, mark, place, record, clean up (see the module docstring). Returns the new
        record. On an error nothing is committed: the folder is recovered to the last committed
        run. Releases the folder's lock."""
        if self._lock_fd is None:
            raise OutputError(f"this commit into {self.out_dir} has already ended")
        try:
            return self._commit()
        except BaseException:
            try:
                recover(self.out_dir, self.owns)
            except Exception as e:  # the next commit recovers; the first error is the one to see
                log.warning("%s: could not undo the failed commit (%s)", self.out_dir, e)
            raise
        finally:
            self.staged = {}
            self._release()

    def _commit(self) -> dict:
        identities = {}
        for name, path in self.staged.items():
            if not os.path.lexists(path):
                raise FileNotFoundError(f"staged artifact {name} was never written ({path})")
            identities[name] = (write_manifest(path, self.run_id, self.known.get(name))
                                if os.path.isdir(path) else file_sha256(path))
            kill_point(f"staged:{name}")
        record = read_record(self.out_dir) or {"artifacts": {}, "retired": {}}
        # from here readers check every owned name, and recovery knows what this run placed
        record["committing"] = {"run_id": self.run_id, "command": self.command,
                                "names": list(self.owns), "placed": identities}
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
        for name, what in self.supersedes.items():
            if name in artifacts and name not in self.owns:
                artifacts[name] = {**artifacts[name], "superseded": {
                    "run_id": self.run_id, "command": self.command, **what}}
        del record["committing"]
        record.update(managed=sorted(set(record.get("managed", [])) | set(self.owns)),
                      artifacts=artifacts, retired=gone, last_run={
                          "run_id": self.run_id, "command": self.command,
                          "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        write_json_atomic(os.path.join(self.out_dir, RECORD), record)
        kill_point("recorded")
        for path in retired.values():
            _remove(path)
        kill_point("cleaned")
        return record

    def abort(self) -> None:
        """Remove the staged copies; nothing is committed. Releases the folder's lock."""
        try:
            for path in self.staged.values():
                _remove(path)
            self.staged = {}
        finally:
            self._release()

    def _release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def __del__(self):
        if getattr(self, "_lock_fd", None) is not None:
            self._release()

    def __enter__(self) -> "Commit":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()
