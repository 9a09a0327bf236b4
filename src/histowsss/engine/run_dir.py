"""The run folder: resolved config, versions, per-step status records; every write atomic."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import time
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Callable, Iterator

from histowsss.config import RunConfig, dump_config
from histowsss.engine.atomic import remove_partial_files, write_json, write_text
from histowsss.engine.run_paths import record_invocation


class StepError(RuntimeError):
    """A step cannot run (missing inputs, stale inputs, finished result without --overwrite)."""


LOCK_FILE = ".lock"


def require_folder(path: Path) -> None:
    """FileExistsError naming ``path`` when it is a file where a run folder is meant to be."""
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} is a file, not a run folder; choose another --run")


@contextmanager
def run_lock(folder: Path | str, what: str, create: bool = True, look_only: bool = False,
             place: str = "run folder") -> Iterator[None]:
    """Hold ``folder/.lock`` while ``what`` works in the run folder: a second histowsss process on the same folder
    (whose cleanup of a killed run's temporary files would delete the first one's writes in flight) is refused with
    a clear error. The lock goes with the process, so a killed run leaves none behind. Under torchrun only the first
    process locks. Where the file system has no locks (some network mounts), nothing is checked. ``create``: make the
    folder if missing (else a missing folder is not locked). ``look_only`` (a dry run): refused the same, but
    nothing is written, not even the lock file."""
    if os.environ.get("RANK", "0") != "0":
        yield
        return
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks here
        yield
        return
    folder = Path(folder)
    if not folder.is_dir() and not create:  # nothing to guard: the command reports the missing folder itself
        yield
        return
    if look_only and not (folder / LOCK_FILE).is_file():  # (no process ever locked it: none holds it now)
        yield
        return
    require_folder(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_FILE, os.O_RDONLY if look_only else os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
            raise StepError(f"{folder}: {holder} is working in this {place}; wait for it to finish (or stop it) "
                            "before starting another command that writes here") from None
        except OSError:  # no locking on this file system
            pass
        if not look_only:
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()} ({what})".encode())
        yield
    finally:
        os.close(fd)


def read_json_or_none(path: Path) -> Any:
    """A JSON file's content, or None when it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


class RunDir:
    """A self-describing run folder: ``config.yaml``, ``versions.json``, ``invocation.json`` (the working folder
    relative paths are read from), ``status/<step>.json`` and outputs."""

    def __init__(self, path: Path | str, cfg: RunConfig):
        self.path = Path(path)
        self.cfg = cfg
        self.config_file: str | None = None  # set by init(): the config_history file of this invocation
        self._overlay: dict[str, dict] = {}  # records read instead of the folder's (restored_view)

    def init(self) -> "RunDir":
        """Create the folder and write the resolved config of this invocation as ``config.yaml``.

        A later invocation with other settings (``--set``, another YAML) rewrites ``config.yaml``; every config
        the folder has seen is also kept, by content, as ``config_history/<sha>.yaml``, and each step's status
        names the one it ran with (``run_config``), beside the hash of the sections it used. Networks record
        their input settings, checked by ``predict``.
        """
        text = dump_config(self.cfg)
        self.config_file = f"config_history/{hashlib.sha256(text.encode()).hexdigest()[:12]}.yaml"
        if os.environ.get("RANK", "0") != "0":  # under torchrun the first process writes the run's records
            return self
        require_folder(self.path)
        self.path.mkdir(parents=True, exist_ok=True)
        if not (self.path / self.config_file).exists():
            (self.path / "config_history").mkdir(exist_ok=True)
            write_text(self.path / self.config_file, text)
        write_text(self.path / "config.yaml", text)
        if not (self.path / "versions.json").exists():  # (else written when a step runs: the code that made it)
            write_json(self.path / "versions.json", versions())
        record_invocation(self.path, self.cfg)  # where config.yaml's relative paths are read from (engine/run_paths.py)
        return self

    def sub(self, *parts: str) -> Path:
        p = self.path.joinpath(*parts)
        p.mkdir(parents=True, exist_ok=True)
        return p

    def status_path(self, step: str) -> Path:
        return self.path / "status" / f"{step}.json"

    def status(self, step: str) -> dict[str, Any] | None:
        """The step's status record, or None if it never started; an unreadable record is a StepError."""
        if step in self._overlay:
            return self._overlay[step]
        p = self.status_path(step)
        if not p.exists():
            return None
        try:
            return json.loads(p.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise StepError(f"{p}: unreadable status record ({e}; a machine stopped while writing it?); delete it, "
                            f"then `histowsss run CONFIG --run {self.path} --from {step} --to {step}` runs that step "
                            "again (without --overwrite, which would redo every step of the range)") from None

    def is_done(self, step: str, config_hash: str) -> bool:
        st = self.status(step)
        return bool(st and st.get("state") == "done" and st.get("config_hash") == config_hash)

    def require(self, step: str, config_hash: str, for_step: str) -> None:
        """Raise a clear StepError unless ``step`` finished with the same config hash."""
        st = self.status(step)
        if st is None or st.get("state") != "done":
            raise StepError(f"{for_step} needs the outputs of {step}, which has not finished in {self.path}; "
                            f"run `histowsss run CONFIG --run {self.path} --to {step}` first")
        if st.get("config_hash") != config_hash:
            diff = self.settings_diff(st)
            raise StepError(f"{for_step}: the {step} outputs in {self.path} come from another configuration "
                            f"(hash {st.get('config_hash')} != {config_hash})"
                            + (f"; {step} ran with {diff}: give those settings again (the --set values of that run) "
                               f"or re-run {step} with --overwrite" if diff else f"; re-run {step} with --overwrite"))

    def made_again_after(self, step: str, key: str, training: bool = False) -> str | None:
        """The time ``step`` finished when that is after the record ``key`` started (its first session, for a step
        taken up again: the outputs of ``key`` were made from files since replaced); None otherwise, or when either
        time is unknown. For a step that records what later steps read of it (``handoff``: eval_cam's choices,
        make_cam's CAMs by image and network), the time that last changed (``handoff_since``): made again with the
        same, its readers stand. ``training``: ``key`` reads the training splits' part alone (``train_handoff``:
        test images added re-make make_cam for them, not the IRN). Times within one second are told apart by the
        records' nanosecond clock (``*_ns``) where both have it (a fast step made again in the second its reader
        started)."""
        st = self.status(key) or {}
        began = st.get("first_started") or st.get("started")
        began_ns = st.get("first_started_ns") if st.get("first_started") else st.get("started_ns")
        made = self.status(step) or {}
        prior = made.get("prior_handoff")
        if made.get("state") in ("running", "failed") and isinstance(prior, dict):  # stopped: what it carries on
            side = "train_" if training and prior.get("train_since") else ""
            made = {"finished": prior.get(side + "since"), "finished_ns": prior.get(side + "since_ns")}
        field = next((f for f in ("train_handoff_since" if training else "", "handoff_since", "finished")
                      if f and made.get(f)), "finished")
        finished, finished_ns = made.get(field), made.get(field + "_ns")
        b, t = status_time(began), status_time(finished)
        if b is None or t is None:
            return None
        if t > b or (t == b and isinstance(finished_ns, int) and isinstance(began_ns, int) and finished_ns > began_ns):
            return finished
        return None

    def settings_diff(self, status: dict, most: int = 6, step_hash: Callable[[RunConfig], str] | None = None) -> str:
        """``key = old (now new)`` for the settings where the config a step ran with (its status record's
        ``config_history`` file) differs from this invocation's; "" when unknown. With ``step_hash`` (the step's
        ``config_hash``), only the settings the step's hash reads are named (each set back alone to its old value
        changes the hash), so that a gate setting of eval_seg is not given as why train_seg runs again; all of
        them when no one alone does."""
        import yaml

        run_config = status.get("run_config")
        if not run_config or self.cfg is None:
            return ""
        try:
            then = yaml.safe_load((self.path / run_config).read_text())
        except (OSError, yaml.YAMLError):
            return ""
        now = yaml.safe_load(dump_config(self.cfg))

        def flat(d: Any, prefix: str = "") -> dict[str, Any]:
            if not isinstance(d, dict):
                return {prefix[:-1]: d}
            out: dict[str, Any] = {}
            for k, v in d.items():
                out.update(flat(v, f"{prefix}{k}."))
            return out

        a, b = flat(then), flat(now)
        keys = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k) and k != "name"]
        if step_hash is not None and len(keys) > 1:
            base = step_hash(self.cfg)  # (the hash of now, once)
            # (a setting the old config lacks came with a later version: its default is what the step read then)
            read = [k for k in keys if k in a and _changes_hash(now, k, a.get(k), step_hash, base)]
            keys = read or keys
        shown = [f"{k} = {a.get(k)!r} (now {b.get(k)!r})" for k in keys[:most]]
        return ", ".join(shown) + (f" and {len(keys) - most} more" if len(keys) > most else "")

    def weights_changed(self, step: str, status: dict) -> bool:
        """Whether the local weights file step ``step`` reads (``WEIGHTS_FILE_STEPS``) differs from the one it read,
        as far as its record says (a file not there now, or a record without the field, says nothing)."""
        key = WEIGHTS_FILE_STEPS.get(step)
        if self.cfg is None or key is None or weights_field(key) not in status:
            return False
        now = self.cfg.weights_file_digest(key)
        return now is not None and now != status[weights_field(key)]

    def clicks_changed(self, status: dict) -> bool:
        """Whether the clicks (``points.file``, the manifest's points cells) differ from those a step ran with, as
        far as its record says (records of steps run before clicks were recorded say nothing)."""
        if self.cfg is None:
            return False
        if "clicks_used" in status:  # the clicks themselves, of the manifest's images
            return status["clicks_used"] != self.cfg.clicks_used_digest()
        return "clicks" in status and status["clicks"] != self.cfg.clicks_digest()  # (records of before: the bytes)

    @contextmanager
    def step(self, step: str, config_hash: str, overwrite: bool = False) -> Iterator[dict[str, Any]]:
        """Context for running a step: writes 'running', then 'done' (with wall time) or 'failed'.

        Yields a dict the step fills with extra status fields (outputs, counts...). A step taken up again after a
        failed or killed session (same configuration) adds that session's time: ``wall_s`` is the step's time over
        all its sessions (``sessions``, ``session_wall_s`` this one's); a session killed hard (SIGKILL, power) wrote
        no time, so the sum is then a lower bound (``wall_s_incomplete``).
        """
        st = self.status(step)
        if st and st.get("state") == "done" and not overwrite:
            if st.get("config_hash") == config_hash:
                raise StepError(f"{step} already finished in {self.path}; pass --overwrite to redo it")
            raise StepError(f"{step} in {self.path} finished with another configuration; pass --overwrite to redo it")
        info: dict[str, Any] = {}
        t0 = time.time()
        earlier_s, sessions, incomplete = 0.0, 1, False
        if st and st.get("state") in ("running", "failed") and st.get("config_hash") == config_hash and not overwrite:
            sessions = int(st.get("sessions", 1)) + 1
            earlier_s = float(st.get("wall_s") or 0.0)  # failed: its sessions; running: the sessions before it
            incomplete = st.get("state") == "running" or st.get("wall_s") is None or bool(st.get("wall_s_incomplete"))
        if st and st.get("state") in ("running", "failed") and os.environ.get("RANK", "0") == "0":
            # a killed run may have left half-written temporary files: its finished files are kept and reused
            removed = remove_partial_files(self.path, older_than=t0)
            if removed:
                info["partial_files_removed"] = removed
        if st and st.get("state") == "done" and os.environ.get("RANK", "0") == "0":
            from histowsss.engine import kept_records

            if st.get("config_hash") != config_hash:  # finished with other settings: kept (engine/kept_records.py)
                kept_records.keep(self, step, st)
            kept_records.discard(self, step, config_hash)  # (these settings made again: a kept record of them is old)
        # the first session's start by the file clock: files changed since are this step's outputs too (listed in
        # status/files/<step>.json when it finishes, engine/kept_records.py)
        since_ns = int(st.get("since_ns") or 0) if sessions > 1 else 0
        since_ns = since_ns or self.file_clock_ns()
        started_ns = time.time_ns()
        record = {"step": step, "state": "running", "config_hash": config_hash, "started": _now(started_ns),
                  "started_ns": started_ns, "since_ns": since_ns}
        if (prior := _prior_handoff(st)) is not None:  # what later steps read of the outputs this run replaces
            record["prior_handoff"] = prior
        if sessions > 1:  # (``started``: this session's start; ``first_started``: the first session's)
            record.update(sessions=sessions, wall_s=round(earlier_s, 2), first_started=st.get("first_started")
                          or st.get("started"), **({"wall_s_incomplete": True} if incomplete else {}))
            first_ns = st.get("first_started_ns") if st.get("first_started") else st.get("started_ns")
            if first_ns is not None:
                record["first_started_ns"] = first_ns
        if self.config_file:
            record["run_config"] = self.config_file
        code = versions()
        record["versions"] = code  # the code that made this step's outputs (versions.json: that of the last step run)
        if os.environ.get("RANK", "0") == "0" and read_json_or_none(self.path / "versions.json") != code:
            write_json(self.path / "versions.json", code)
        clicks = self.cfg.clicks_used_digest() if self.cfg is not None else None
        if clicks is not None:  # so that a step made again for its clicks can say so (clicks_changed)
            record["clicks_used"] = clicks
        manifest = self.manifest_digests()
        if manifest is not None:  # so that a step is made again when the manifest is edited in place
            record["manifest"] = manifest
        key = WEIGHTS_FILE_STEPS.get(step)
        weights = self.cfg.weights_file_digest(key) if self.cfg is not None and key is not None else None
        if weights is not None:  # so that a step that read the file is made again when it changes (weights_changed)
            record[weights_field(key)] = weights
        write_json(self.status_path(step), record)

        def times() -> dict[str, float]:
            now = time.time() - t0
            return {"wall_s": round(earlier_s + now, 2), **({"session_wall_s": round(now, 2)} if sessions > 1 else {})}

        try:
            yield info
        except BaseException as e:
            why = str(e) or ("Ctrl-C (SIGINT)" if isinstance(e, KeyboardInterrupt) else "")
            record.update(state="failed", error=f"{type(e).__name__}: {why}", **times())
            write_json(self.status_path(step), record)
            raise
        finished_ns = time.time_ns()
        record.update(state="done", finished=_now(finished_ns), finished_ns=finished_ns, **times(), **info)
        prior = record.pop("prior_handoff", None) or {}
        for side in ("", "train_"):  # readers stand while what they read is the same (made_again_after)
            if info.get(side + "handoff") is not None:
                same = prior.get(side + "handoff") == info[side + "handoff"] and prior.get(side + "since")
                record[side + "handoff_since"] = prior[side + "since"] if same else record["finished"]
                since_ns = prior.get(side + "since_ns") if same else finished_ns
                if since_ns is not None:
                    record[side + "handoff_since_ns"] = since_ns
        from histowsss.engine.kept_records import listing_path, write_listing

        outputs = info.get("outputs") if isinstance(info.get("outputs"), list) else []
        try:
            record["outputs_listed"] = write_listing(self, step, config_hash, since_ns, outputs)
        except OSError as e:  # the step's work is done: only its record cannot come back after other settings
            record["outputs_listed"] = f"not listed: {e}"
            with suppress(OSError):  # (an older listing must not stand for these outputs)
                listing_path(self, step).unlink(missing_ok=True)
        write_json(self.status_path(step), record)

    # -------------------------------------------------------------------- records kept across other settings
    def file_clock_ns(self) -> int:
        """Now, by the clock that stamps the run folder's files (a file server's, on a network mount): the
        modification time of a file written now (``status/.clock``)."""
        clock = self.path / "status" / ".clock"
        clock.parent.mkdir(parents=True, exist_ok=True)
        clock.write_bytes(b"")
        return os.stat(clock).st_mtime_ns

    def restorable(self, step: str, config_hash: str) -> dict | None:
        """The kept finished record of ``step`` with ``config_hash`` whose outputs are there unchanged
        (:func:`histowsss.engine.kept_records.restorable`), or None."""
        from histowsss.engine import kept_records

        return kept_records.restorable(self, step, config_hash)

    def restore(self, step: str, config_hash: str) -> dict | None:
        """Make that kept record the step's record again (:func:`histowsss.engine.kept_records.restore`)."""
        from histowsss.engine import kept_records

        return kept_records.restore(self, step, config_hash)

    def restored_view(self, records: dict[str, dict]) -> "RunDir":
        """This folder as it will be once ``records`` (status key -> kept record) are restored: for a dry run, the
        checks before a run, and the processes of torchrun other than the first (which restores them)."""
        view = RunDir(self.path, self.cfg)
        view.config_file = self.config_file
        view._overlay = dict(records)
        return view

    def manifest_digests(self, keep: bool = True) -> dict[str, str] | None:
        """:meth:`RunConfig.manifest_digests` of this invocation's config, its image and mask fingerprints kept in
        ``status/cache/fingerprints.json`` between processes (written when new ones were made, by the first process
        only, unless ``keep`` is False: a dry run, a report); None without a config."""
        from histowsss.config.run import keep_fingerprints, read_fingerprints

        if self.cfg is None:
            return None
        cache = self.path / "status" / "cache" / "fingerprints.json"
        read_fingerprints(cache)
        digests = self.cfg.manifest_digests()
        if keep and os.environ.get("RANK", "0") == "0" and (self.path / "status").is_dir():
            keep_fingerprints(cache, self.cfg.data.manifest)
            self._keep_image_prints()
        return digests

    IMAGE_PRINTS = Path("status") / "cache" / "image_prints.json"
    KEEP_PRINTS = 3  # the image sets kept (the latest), each under its image_files digest

    def _keep_image_prints(self) -> None:
        """Keep each image's fingerprint under the digest the steps record (``image_files``), for the last
        :attr:`KEEP_PRINTS` image sets, so that a step made again for a replaced image file can name it."""
        from histowsss.config.run import image_prints

        now = image_prints(self.cfg)
        path = self.path / self.IMAGE_PRINTS
        kept = self._image_prints()
        if now is None or now[0] in kept:
            return
        kept[now[0]] = {"at": time.time(), "images": now[1]}
        newest = sorted(kept, key=lambda d: kept[d].get("at", 0))[-self.KEEP_PRINTS:]
        write_json(path, {d: kept[d] for d in newest})

    def _image_prints(self) -> dict:
        try:
            kept = json.loads((self.path / self.IMAGE_PRINTS).read_text())
        except (OSError, ValueError):
            return {}
        return kept if isinstance(kept, dict) else {}

    def replaced_images(self, then: str | None, splits: set[str] | None = None) -> list[str]:
        """The images (of ``splits``) whose file was replaced since the image set whose ``image_files`` digest is
        ``then`` (a step's record): same name, other fingerprint; empty when that set was not kept."""
        from histowsss.config.run import image_prints

        old = (self._image_prints().get(then) or {}).get("images") if then else None
        now = image_prints(self.cfg) if self.cfg is not None and old else None
        if not isinstance(old, dict) or now is None:
            return []
        return sorted(n for n, (split, fp) in now[1].items()
                      if n in old and old[n][1] != fp and (splits is None or split in splits))

    def with_record(self, step: str, record: dict) -> "RunDir":
        """This folder as it reads, with ``record`` as ``step``'s status (the finished record a stopped run
        replaced, to judge what it will make: engine/decisions.py ``handoff_stands``)."""
        return self.restored_view({**self._overlay, step: record})

    def forget_restored(self, step: str) -> None:
        """Read ``step``'s record from the folder again (it ran: its record there is the newer)."""
        self._overlay.pop(step, None)


def versions() -> dict[str, str]:
    """Versions of Python, torch and the main libraries, for the run record."""
    import importlib.metadata as md

    out = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("histowsss", "torch", "timm", "segmentation-models-pytorch", "numpy"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    if (commit := source_commit()) is not None:
        out["histowsss_commit"] = commit
    return out


@functools.lru_cache(maxsize=1)
def source_commit() -> str | None:
    """The git commit histowsss runs from when it is installed from a checkout (``pip install -e``), with
    ``+changes`` when its files differ from that commit; None otherwise (a wheel, no git)."""
    import subprocess

    here = Path(__file__).resolve().parents[1]  # (the package folder)
    try:  # (a wheel installed in a venv inside some other repository is not that repository's code)
        tracked = subprocess.run(["git", "-C", str(here), "ls-files", "--error-unmatch", "__init__.py"],
                                 capture_output=True, text=True, timeout=10)
        head = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10)
        if tracked.returncode != 0 or head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no", "--", "."],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+changes" if dirty.returncode == 0 and dirty.stdout.strip() else "")


# the steps that read a local weights file, and the config key naming it: backbone.weights (train_cam builds the CAM
# network from it; train_irn and make_sem_seg_labels rebuild IRN's frozen backbone from it) and
# train_seg.encoder_weights (train_seg's encoder); the others read checkpoints that hold their weights
WEIGHTS_FILE_STEPS = {"train_cam": "backbone.weights", "train_irn": "backbone.weights",
                      "make_sem_seg_labels": "backbone.weights", "train_seg": "train_seg.encoder_weights",
                      "train_seg_supervised": "train_seg.encoder_weights"}


def weights_field(key: str) -> str:
    """The status field of the fingerprint of the file config key ``key`` names: backbone_weights, encoder_weights."""
    return key.split(".")[-1] if key != "backbone.weights" else "backbone_weights"


def _prior_handoff(st: dict | None) -> dict | None:
    """What later steps read of a step's outputs before it runs again (``handoff``, and ``since``: when that last
    changed; ``train_handoff``, ``train_since``: the training splits' part) from its record: a finished one's own,
    or the one a stopped run carried; None when unknown."""
    if not st:
        return None
    if st.get("state") == "done":
        out = {}
        for side in ("", "train_"):
            if st.get(side + "handoff") is not None:
                since = st.get(side + "handoff_since")
                out.update({side + "handoff": st[side + "handoff"], side + "since": since or st.get("finished"),
                            side + "since_ns": st.get(side + "handoff_since_ns") if since else st.get("finished_ns")})
        if out:  # (the finished record itself: a dry run of the stopped step can tell whether it will be the same)
            out["record"] = {k: v for k, v in st.items() if k != "prior_handoff"}
        return out or None
    prior = st.get("prior_handoff")
    return prior if isinstance(prior, dict) else None


TIME_FORMAT = "%Y-%m-%dT%H:%M:%S%z"  # of a status record's "started" / "finished"


def _now(ns: int | None = None) -> str:
    """A status record's time: now, or the ``time.time_ns()`` given."""
    return time.strftime(TIME_FORMAT, time.localtime(None if ns is None else ns / 1e9))


def status_time(text: str | None):
    """A status record's time as a datetime, or None (absent, or written in another format)."""
    from datetime import datetime

    try:
        return datetime.strptime(text, TIME_FORMAT) if text else None
    except ValueError:
        return None


def _changes_hash(now: dict, key: str, old: Any, step_hash: Callable[[RunConfig], str], base: str) -> bool:
    """Whether setting the dotted ``key`` of the config dict ``now`` back to ``old`` changes ``step_hash`` from
    ``base`` (its value for ``now``; True too when that config is not valid alone: the key is then named)."""
    import copy

    changed = copy.deepcopy(now)
    *path, last = key.split(".")
    node = changed
    for part in path:
        node = node.setdefault(part, {})
    if old is None and last not in node:
        return True
    node[last] = old
    try:
        return step_hash(RunConfig.model_validate(changed)) != base
    except Exception:  # (a config that holds this value alone is not valid: keep the key)
        return True

