"""The tuning database: records of tuned kernel schedules, one JSON file, no TVM needed.

    db = TuneDB.load("~/.cache/ember/tune/records.json")   # a damaged file: warning, empty db
    db.put(record); db.prune(older_than_s=30 * 86400); db.save()

A record is keyed by (workload, target): the structural hash of the unscheduled kernel and the
target as canonical JSON (targets/tune.py makes both). It keeps the tuned schedule (a MetaSchedule
trace, or the rule's own knob values that the knob search found), its time and the time of the
schedule rule's default code measured side by side; only a record faster than
the rule is applied. `ember tune-db list/prune` reads and edits this file; it imports no TVM.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import os
import tempfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from ember.compiler.errors import EmberError

log = logging.getLogger(__name__)

DEFAULT_DB = Path("~/.cache/ember/tune/records.json")
FORMAT = "ember-tune-db"
FORMAT_VERSION = 1


# --- options and records ---------------------------------------------------------------------

# A record is used only where it measured this much faster than the rule's code. With no
# margin, 2-minute searches put 28 of MobileNetV2's 33 kernels on records (most of them knob
# values that won the final side-by-side by noise) and left the model as fast or slower.
RECORD_MARGIN = 0.03


@dataclass(frozen=True)
class TuneOptions:
    """How a compile tunes.

    `budget_s`: wall-clock seconds of search; None reuses the database's records only.
    `db_path`: the database file (default ~/.cache/ember/tune/records.json).
    `progress`: a progress bar on stderr while searching.
    `threads`: the thread count kernels are measured at (default: every CPU this process may
    use); tune at the deployment thread count.
    """

    budget_s: float | None = None
    db_path: Path = DEFAULT_DB
    progress: bool = True
    threads: int | None = None

    @property
    def path(self) -> Path:
        """The database file, `~` expanded."""
        return Path(self.db_path).expanduser()


@dataclass
class Record:
    """One kernel's best tuned schedule on one target, and the rule's time it has to beat."""

    workload: str  # structural hash of the unscheduled PrimFunc (hex)
    target: str  # the target as canonical JSON
    kernel: str  # the kernel's name where it was tuned (for people; not part of the key)
    rule: str  # the rule that scheduled it ("" = TVM's default code)
    rule_s: float | None  # the rule's schedule, measured side by side with the tuned one
    tuned_s: float
    trials: int
    threads: int
    date: str  # ISO 8601, UTC
    trace: Any  # the schedule's trace as JSON (Trace.as_json), replayed by apply_records
    func: str  # tvm.ir.save_json of the unscheduled PrimFunc (guards against hash collisions)
    rule_hash: str = ""  # structural hash of the rule's scheduled kernel that rule_s timed
    knobs: dict[str, int] | None = None  # a knob record: the rule's own schedule with these choices (no trace)
    # The model's time with this run's records over its time without them, measured side by
    # side when the records were made (None: not measured, e.g. symbolic input sizes).
    in_model: float | None = None

    @property
    def speedup(self) -> float:
        """rule time / tuned time (inf when there was no rule time)."""
        return self.rule_s / self.tuned_s if self.rule_s else math.inf

    @property
    def faster(self) -> bool:
        """Whether the tuned schedule beat the rule's by RECORD_MARGIN, alone and (where it was
        measured) inside the model it was tuned in: only then is it used (a smaller gain,
        measured alone, is within the noise of a kernel inside a model)."""
        if self.in_model is not None and self.in_model >= 1.0 - RECORD_MARGIN:
            return False
        return self.rule_s is None or self.tuned_s < (1.0 - RECORD_MARGIN) * self.rule_s

    @property
    def when(self) -> datetime.datetime:
        """`date` parsed (the epoch when unreadable, so such records prune first)."""
        try:
            return datetime.datetime.fromisoformat(self.date)
        except ValueError:
            return datetime.datetime.fromtimestamp(0, datetime.timezone.utc)


_FIELDS = tuple(f.name for f in fields(Record))


def warn(text: str) -> None:
    # logging's last-resort handler prints a bare WARNING line on stderr when nothing is set up.
    log.warning("warning: %s", text)


class TuneDB:
    """The records of one database file, keyed by (workload, target).

    `load` never raises for a missing or damaged file (a warning, then an empty database);
    `save` writes atomically and raises EmberError when the file cannot be written.
    """

    def __init__(self, path: Path, records: dict[tuple[str, str], Record] | None = None) -> None:
        self.path = path
        self.records: dict[tuple[str, str], Record] = records or {}
        self.damaged = False  # the file exists but could not be read: `save` keeps it aside

    @classmethod
    def load(cls, path: str | Path) -> TuneDB:
        """The database at `path` (empty if the file does not exist or cannot be read)."""
        path = Path(path).expanduser()
        if not path.exists():
            return cls(path)
        try:
            data = json.loads(path.read_text())
            if not isinstance(data, dict) or data.get("format") != FORMAT:
                raise ValueError("not an ember tuning database")
            if data.get("version") != FORMAT_VERSION:
                raise ValueError(f"version {data.get('version')}, this ember reads {FORMAT_VERSION}")
            records = {}
            for item in data["records"]:
                record = Record(**{k: item[k] for k in _FIELDS if k in item or k not in ("rule_hash", "knobs", "in_model")})
                if record.knobs is not None and not (isinstance(record.knobs, dict)
                                                     and all(isinstance(v, int) for v in record.knobs.values())):
                    raise ValueError(f"record {record.kernel}: knobs must map names to integers")
                records[(record.workload, record.target)] = record
        except OSError as err:
            warn(f"tuning database {path} cannot be read ({err.strerror or err}); ignoring it "
                 "(the schedule rules' code is used)")
            return cls(path)
        except (ValueError, KeyError, TypeError) as err:
            warn(f"tuning database {path} is damaged ({type(err).__name__}: {str(err)[:200]}); "
                  "ignoring it (the schedule rules' code is used; a tuning run moves it aside to "
                 f"{path.name}.damaged)")
            db = cls(path)
            db.damaged = True
            return db
        return cls(path, records)

    def save(self, merge: bool = False) -> None:
        """Write the file atomically (temp file beside it, then rename). `merge`: first take in
        the records another process wrote to the file since it was loaded (put's rule decides
        between two records of one kernel), so concurrent tuning runs do not drop each other's."""
        if merge and self.path.exists() and not self.damaged:
            for record in TuneDB.load(self.path).records.values():
                self.put(record)
        data = {"format": FORMAT, "version": FORMAT_VERSION,
                "records": [asdict(r) for r in sorted(self.records.values(), key=lambda r: (r.target, r.kernel, r.workload))]}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.damaged and self.path.exists():
                os.replace(self.path, self.path.with_name(f"{self.path.name}.damaged"))
                self.damaged = False
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
            with os.fdopen(fd, "w") as out:
                json.dump(data, out)
            os.replace(tmp, self.path)
        except OSError as err:
            raise EmberError(f"cannot write the tuning database {self.path}: {err.strerror or err}; "
                             "give a writable file with --tune-db") from None

    def lookup(self, workload: str, target: str) -> Record | None:
        """The record of a kernel on a target, if any."""
        return self.records.get((workload, target))

    def put(self, record: Record) -> bool:
        """Keep `record` if its kernel has none yet or it beats the stored one by speedup over
        the rule (times taken side by side; raw times from different runs are not comparable).
        Whether it was kept."""
        key = (record.workload, record.target)
        old = self.records.get(key)
        if old is not None and old.rule_hash == record.rule_hash and old.speedup >= record.speedup:
            return False  # (a record timed against another version of the rule is replaced)
        self.records[key] = record
        return True

    def prune(self, target: str | None = None, older_than_s: float | None = None, slower: bool = False,
              now: datetime.datetime | None = None) -> list[Record]:
        """Remove records matching every given condition: target (its name or JSON as listed,
        substring match), age, slower than the rule's schedule. The removed records."""
        now = now or datetime.datetime.now(datetime.timezone.utc)

        def matches(r: Record) -> bool:
            if target is not None and target not in r.target:
                return False
            if older_than_s is not None and (now - r.when).total_seconds() <= older_than_s:
                return False
            return not (slower and r.faster)

        gone = [r for r in self.records.values() if matches(r)]
        for r in gone:
            del self.records[(r.workload, r.target)]
        return gone

    def for_target(self, target: str) -> list[Record]:
        """The records of one target."""
        return [r for r in self.records.values() if r.target == target]


def check_writable(path: Path) -> None:
    """EmberError before any search when the database file cannot be written."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            if not os.access(path, os.W_OK) or path.is_dir():
                raise PermissionError(13, "Permission denied" if not path.is_dir() else "Is a directory")
        else:
            probe = path.with_name(f".{path.name}.probe")
            probe.write_text("")
            probe.unlink()
    except OSError as err:
        raise EmberError(f"cannot write the tuning database {path}: {err.strerror or err}; "
                         "give a writable file with --tune-db") from None


def target_label(target: str) -> str:
    """A short name for a target key: `mcpu, N cores` (the JSON itself when unreadable)."""
    try:
        data = json.loads(target)
    except ValueError:
        return target
    if not isinstance(data, dict):
        return target
    parts = [str(data.get("mcpu") or data.get("kind") or "?")]
    if data.get("num-cores"):
        parts.append(f"{data['num-cores']} cores")
    return ", ".join(parts)


# --- parsing user text ---------------------------------------------------------------------------

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str, what: str = "--tune") -> float:
    """'90s', '10m', '1h', '30d' (or bare seconds) -> seconds; EmberError otherwise."""
    raw = text.strip().lower()
    unit = raw[-1:] if raw[-1:] in _UNITS else "s"
    number = raw[:-1] if raw[-1:] in _UNITS else raw
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if not math.isfinite(value) or value <= 0:
        raise EmberError(f"{what} {text!r} is not a duration; give a positive number with s, m, h or d, e.g. 90s, 10m, 1h")
    return value * _UNITS[unit]
