"""The dataset manifest: a CSV with one row per image (path, split, patient, labels, optional mask/points)."""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PureWindowsPath

import numpy as np

from histowsss.config import ClassMap, DataConfig

REQUIRED_COLUMNS = ("image", "split", "patient")
PATH_COLUMNS = ("image", "mask", "mask_cc")  # the columns that hold file paths (relative to the manifest's folder)


class ManifestError(ValueError):
    """The manifest cannot be used; the message lists every problem with row numbers and fixes."""


@dataclass(frozen=True)
class Sample:
    """One manifest row, resolved."""

    name: str
    image: Path
    split: str
    patient: str
    labels: tuple[str, ...]
    mask: Path | None = None
    points: str | None = None
    row: int = 0
    extra: dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    def target(self, classes: ClassMap) -> np.ndarray:
        """Multi-hot vector over all class names (float32)."""
        t = np.zeros(len(classes.names), dtype=np.float32)
        for lab in self.labels:
            t[classes.index(lab)] = 1.0
        return t


def _delimiter(header: str) -> str:
    """The separator of a CSV header line: ``,`` unless ``;`` (Excel in many European locales) or tabs separate more
    of its names than commas do (``image;split;patient;comment, free text``)."""
    counts = {d: header.count(d) for d in (",", ";", "\t")}
    best = max(counts, key=lambda d: (counts[d], d == ","))  # (a tie: comma)
    return best if counts[best] else ","


def read_table(path: Path, lines: list[int] | None = None, read: tuple[str | None, ...] = ()
               ) -> tuple[list[str], list[dict[str, str]]]:
    """(columns, rows) of a CSV file, columns stripped, values as written; a BOM (Excel) is tolerated and a file
    separated by ``;`` or tabs instead of commas is read too. Text that is not UTF-8 raises ManifestError naming
    the file and the fix. ``lines``, when given, receives each row's line number in the file (blank lines and
    cells spanning several lines counted), for messages that name a row. A column the toolkit reads (the known
    ones, and ``read``: the config's label, mask, points columns) named twice in the header is a ManifestError (a
    CSV reader keeps the last silently); so is a row with more non-empty fields than the header."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:  # utf-8-sig: tolerate a BOM (Excel exports)
            header = f.readline()
            if "\x00" in header:  # UTF-16 without its byte-order mark reads as text with a NUL after every letter
                raise ManifestError(f"{path}: UTF-16 text (without a byte-order mark), not UTF-8; save it as 'CSV "
                                    "UTF-8' (Excel: Save As > CSV UTF-8; or `iconv -f utf-16le -t utf-8`)")
            f.seek(0)
            delimiter = _delimiter(header)
            reader = csv.DictReader(f, delimiter=delimiter)
            columns = [c.strip() for c in (reader.fieldnames or [])]
            known = set(NOT_CLASS_COLUMNS) | {c for c in read if c}
            twice = sorted({c for c in columns if c in known and columns.count(c) > 1})
            if twice:  # DictReader would keep the last of them and drop the others' values unseen
                raise ManifestError(f"{path}: column(s) {', '.join(map(repr, twice))} appear more than once in the "
                                    "header; rename or delete the extra column(s) so each name is used once")
            rows = []
            for r in reader:
                # line_num is the record's last line: back over newlines inside its cells
                line = reader.line_num - sum(v.count("\n") for v in r.values() if isinstance(v, str))
                extra = [v for v in (r.get(None) or []) if v.strip()]  # fields beyond the header's columns
                if extra:
                    raise ManifestError(
                        f"{path}: line {line} has {len(columns) + len(r[None])} fields but the header has "
                        f"{len(columns)} (extra: {', '.join(map(repr, extra))}); a value holding the separator "
                        f"({delimiter!r}, e.g. in a file name) must be in double quotes, or the row "
                        "has a cell too many")
                row = {(k or "").strip(): (v or "") for k, v in r.items() if k is not None}
                if not any(v.strip() for v in row.values()):  # ';;;;' (a spreadsheet's empty rows), as blank lines
                    continue
                rows.append(row)
                if lines is not None:
                    lines.append(line)
    except UnicodeDecodeError as e:
        utf16 = path.read_bytes()[:2] in (b"\xff\xfe", b"\xfe\xff")  # (Excel's "Unicode Text" export)
        raise ManifestError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}"
                            + ("; it is UTF-16" if utf16 else "") + "); save it as 'CSV UTF-8' (Excel: Save As > CSV "
                            + ("UTF-8; or `iconv -f utf-16 -t utf-8`)" if utf16 else "UTF-8; or `iconv -f cp1252 -t "
                               "utf-8`)")) from None
    except csv.Error as e:
        raise ManifestError(f"{path}: not a readable CSV ({e}); save it as UTF-8 CSV with a header row") from None
    return columns, rows


def manifest_path(root: Path, value: str) -> Path:
    """The file a manifest cell names, relative to ``root`` (absolute paths kept). A path written with Windows
    separators (``images\\a.png``, a manifest made on Windows) is read with ``/`` where the path as written names
    no file, so it is found on Linux and macOS too (a file whose name holds a backslash still is); a name written in
    another Unicode normalization than the file's (``é`` as one code point or as ``e`` + accent) is found too."""
    value = value.strip()
    path = Path(root) / value
    if "\\" in value and os.sep == "/" and not path.exists():
        value = PureWindowsPath(value).as_posix()
        path = Path(root) / value
    if not path.exists() and not value.isascii():  # é as one code point or as e + accent (macOS file names)
        import unicodedata

        for form in ("NFC", "NFD"):  # (the cell only: the root is a folder as it is)
            other = Path(root) / unicodedata.normalize(form, value)
            if other != path and other.exists():
                return other
    return path


def rebase_paths(rows: list[dict[str, str]], src_folder: Path, dst_folder: Path,
                 columns: tuple[str, ...] = PATH_COLUMNS + ("annotations",)) -> int:
    """Rewrite, in place, the relative paths of ``columns`` that name a file from ``src_folder`` so that they name it
    from ``dst_folder``: a manifest written into another folder still names the same files. Paths naming no file
    from ``src_folder`` (relative to a ``data.root`` elsewhere, say) and absolute paths are kept. Returns the count
    rewritten."""
    src, dst = Path(os.path.abspath(src_folder)), Path(os.path.abspath(dst_folder))
    if src == dst:
        return 0
    n = 0
    for r in rows:
        for col in columns:
            value = (r.get(col) or "").strip()
            if not value or Path(value).is_absolute() or PureWindowsPath(value).is_absolute():
                continue
            target = manifest_path(src, value)
            if not target.exists():
                continue
            try:
                r[col] = Path(os.path.relpath(os.path.normpath(target), dst)).as_posix()
            except ValueError:  # another drive (Windows): no relative path exists
                r[col] = os.path.normpath(target)
            n += 1
    return n


def data_root(cfg: DataConfig) -> Path:
    """The folder manifest paths are relative to: ``data.root``, else the manifest's folder."""
    return Path(cfg.root) if cfg.root is not None else Path(cfg.manifest).parent


# cells that spreadsheets, pandas and R write for a missing value; read as empty unless a class is so named. 'None'
# is left out: a plausible class name ("no lesion"), which class inference would otherwise drop
MISSING_WORDS = ("nan", "na", "n/a", "#n/a", "null")


def is_missing(cell: str | None, class_names: list[str] | tuple[str, ...] = ()) -> bool:
    """True for an empty cell or one of MISSING_WORDS (``NaN``, ``N/A``, any case) that names no class."""
    v = (cell or "").strip()
    return v == "" or (v.lower() in MISSING_WORDS and v not in class_names)


_WHOLE_NUMBER = re.compile(r"[+-]?\d+(\.0*)?")


def patient_key(patient: str) -> str:
    """The patient id as compared across rows: as written, but a whole number written the ways a spreadsheet or
    pandas may write it (``2.0``, ``02``) is the number (``2``), so that one patient written two ways is one patient
    for splits, folds and leak checks (``data check`` names such ids)."""
    v = patient.strip()
    if _WHOLE_NUMBER.fullmatch(v):
        return str(int(v.split(".")[0]))
    return v


def name_problem(name: str) -> str | None:
    """Why a manifest ``name`` cannot name a run's output files (``cams/<name>.npz``), or None: it must be a plain
    file name, no folders (``/``, ``\\``) and not ``.`` or ``..``, which would write outside the run folder."""
    if name in (".", "..") or any(c in name for c in "/\\\0"):
        return (f"name {name!r} is not a plain file name (it names the run's output files, cams/<name>.npz and "
                "others): remove '/', '\\' and '..' from it")
    return None


def _parse_labels(raw: str, cfg: DataConfig) -> tuple[str, ...]:
    raw = raw.strip()
    if is_missing(raw, cfg.classes.names):
        return ()
    parts = [p.strip() for p in raw.split(cfg.label_separator) if p.strip()] if cfg.multi_label else [raw]
    out = []
    for p in parts:
        if p not in cfg.classes.names and p.isdigit() and int(p) < len(cfg.classes.names):
            p = cfg.classes.names[int(p)]  # integer class indices are accepted too
        out.append(p)
    return tuple(out)


PRESENT_WORDS = ("true", "yes", "y", "x")
ABSENT_WORDS = ("false", "no", "n", "")


def class_mark(cell: str | None) -> bool | None:
    """A one-column-per-class cell read as a mark: True for 1 (1.0, ...), true, yes, y, x; False for 0, false, no,
    n, empty (any case, spaces ignored); None for anything else (a soft label 0.5, a typo 2)."""
    v = (cell or "").strip().lower()
    if v in PRESENT_WORDS:
        return True
    if v in ABSENT_WORDS:
        return False
    try:
        x = float(v)
    except ValueError:
        return None
    return True if x == 1.0 else False if x == 0.0 else None


def class_columns_labels(row: dict[str, str], columns: list[str]) -> tuple[tuple[str, ...], list[str]]:
    """(classes marked present, cells that are no mark, as ``column='value'``) of a row with one column per class
    (``data.label_columns``; :func:`class_mark`)."""
    labels, bad = [], []
    for c in columns:
        m = class_mark(row.get(c))
        if m:
            labels.append(c)
        elif m is None:
            bad.append(f"{c}={(row.get(c) or '').strip()!r}")
    return tuple(labels), bad


NOT_CLASS_COLUMNS = ("image", "split", "patient", "name", "mask", "mask_cc", "points", "label")


def class_columns_of(columns: list[str], rows: list[dict[str, str]]) -> list[str]:
    """The manifest's one-column-per-class labels, found: every column (other than the known ones) whose cells are
    marks (:func:`class_mark`), at least one present, but for a few typos (one row, or up to 5 % of the rows, which
    the readers then name by row); [] unless there are two or more (one such column is more likely a flag than a class
    set). Callers say which columns they took: two 0/1 flag columns look the same."""
    found = []
    for c in columns:
        if c in NOT_CLASS_COLUMNS or not rows:
            continue
        marks = [class_mark(r.get(c)) for r in rows]
        if sum(m is None for m in marks) <= max(1.0, 0.05 * len(rows)) and any(marks):
            found.append(c)
    twice = sorted({c for c in found if columns.count(c) > 1})
    if twice and len(set(found)) >= 2:  # a CSV reader kept only the last of them: the others' marks are lost
        raise ManifestError(f"class column(s) {', '.join(map(repr, twice))} appear more than once in the header; "
                            "rename or delete the extra column(s) so each class has one column")
    return found if len(found) >= 2 else []


def almost_class_columns(columns: list[str], rows: list[dict[str, str]], lines: list[int] | None = None) -> str:
    """A hint for a manifest in which no class columns were found (:func:`class_columns_of`) because of cells that
    are no 0/1 mark (``NaN`` from pandas, ``?``): the columns that are mostly marks and their first such cells, as
    ``; columns A, B hold 0/1 marks but for ...: write 1 or 0 there``; '' when there are none."""
    near, cells = [], []
    for c in columns:
        if c in NOT_CLASS_COLUMNS or not rows:
            continue
        marks = [class_mark(r.get(c)) for r in rows]
        bad = [k for k, m in enumerate(marks) if m is None]
        if any(marks) and len(bad) <= len(rows) // 2:
            near.append(c)
            cells += [f"row {lines[k] if lines else k + 2} {c}={(rows[k].get(c) or '').strip()!r}" for k in bad]
    if len(near) < 2 or not cells:
        return ""
    return (f"; columns {', '.join(near)} hold 0/1 marks but for {len(cells)} cell(s) ({', '.join(cells[:5])}"
            + (", ..." if len(cells) > 5 else "") + "): write 1 or 0 there to read them as one column per class")


def _missing_columns_message(path: Path, missing: list[str], columns: list[str], cfg: DataConfig) -> str:
    fixes = []
    lower = {c.lower(): c for c in columns}
    for col in missing:
        if col.lower() in lower:  # e.g. "Image" for "image"
            fixes.append(f"rename column {lower[col.lower()]!r} to {col!r}")
        elif col == "split":
            fixes.append("add a split column with `histowsss data split MANIFEST --out NEW.csv` "
                         "(patient-grouped, class-stratified)")
        elif col == "image":
            fixes.append("add an 'image' column of image paths (relative to the manifest's folder or data.root)")
        elif col == "patient":
            fixes.append("add a 'patient' column (one id per patient or slide; splits keep a patient's images "
                         "together; if unknown, use the image name)")
        elif col == cfg.label_column:
            fixes.append(f"set data.label_column to one of the columns ({', '.join(columns)}), e.g. "
                         f"--set data.label_column=COLUMN, or to null to take labels from the masks")
        elif cfg.label_columns and col in cfg.label_columns:
            if col == next(c for c in missing if c in cfg.label_columns):  # one fix for all the class columns
                gone = [c for c in missing if c in cfg.label_columns]
                fixes.append(f"data.label_columns names one 0/1 column per class; add column(s) "
                             f"{', '.join(map(repr, gone))} or set data.label_columns to class columns the header has")
        elif col == cfg.points_column:
            fixes.append(f"set data.points_column to the column of clicks (the header has: {', '.join(columns)}), "
                         "or to null to train without clicks")
    return (f"{path}: missing required column(s) {', '.join(repr(c) for c in missing)} "
            f"(the header has: {', '.join(columns) or 'nothing'}). Fix: " + "; ".join(fixes))


def scan_manifest(cfg: DataConfig, check_files: bool = False, rejected: list[dict] | None = None
                  ) -> tuple[list[Sample], list[str]]:
    """Read the manifest named in ``cfg``: (usable samples, one message per problem row).

    A missing manifest or missing required columns raise ManifestError (nothing can be read then);
    row problems (empty fields, unknown classes, duplicate names, missing files with ``check_files``)
    are collected so that every one of them can be reported at once. ``rejected``, when given, receives the
    rows left out for a problem (``{"row", "image", "mask", "split"}``), so that their files can be checked too.
    """
    path = Path(cfg.manifest)
    if not path.exists():
        where = "" if path.is_absolute() else f" (a relative path is read from the current folder, {Path.cwd()})"
        wanted = REQUIRED_COLUMNS + ((cfg.label_column,) if cfg.label_column else ()) + tuple(cfg.label_columns or ())
        raise ManifestError(f"{path}: manifest not found{where}; pass the path of a CSV with columns "
                            f"{', '.join(wanted)}")
    if path.is_dir():
        raise ManifestError(f"{path}: is a folder; pass the manifest CSV file inside it")
    root = data_root(cfg)
    lines: list[int] = []
    columns, rows = read_table(path, lines, read=(cfg.label_column, cfg.mask_column, cfg.points_column,
                                                  *(cfg.label_columns or ())))
    # a points column that is named but absent would silently give no clicks at all
    required = (list(REQUIRED_COLUMNS) + ([cfg.label_column] if cfg.label_column else [])
                + list(cfg.label_columns or []) + ([cfg.points_column] if cfg.points_column else []))
    missing = [c for c in required if c not in columns]
    if missing:
        raise ManifestError(_missing_columns_message(path, missing, columns, cfg))
    problems: list[str] = []
    samples: list[Sample] = []
    names_seen: dict[str, int] = {}
    files_seen: dict[str, tuple[int, str]] = {}
    for i, r in zip(lines, rows):
        img_rel = r["image"].strip()
        if not img_rel:
            problems.append(f"row {i}: empty image path; fill it in or delete the row")
            continue
        row_problems = []
        split, patient = r["split"].strip(), r["patient"].strip()
        if not split:
            row_problems.append(f"row {i} ({img_rel}): empty split; fill it in or make a split with "
                                "`histowsss data split`")
        if not patient:
            row_problems.append(f"row {i} ({img_rel}): empty patient id; fill it in (use the image name if "
                                "the patient is unknown)")
        labels = _parse_labels(r[cfg.label_column], cfg) if cfg.label_column else ()
        unknown = [lab for lab in labels if lab not in cfg.classes.names]
        if cfg.label_columns:
            labels, bad = class_columns_labels(r, cfg.label_columns)
            if bad:
                row_problems.append(f"row {i} ({img_rel}): class column value(s) {', '.join(bad)} are neither "
                                    "present (1, true, yes, x) nor absent (0, false, no, empty); write 1 or 0")
            elif len(labels) > 1 and not cfg.multi_label:
                row_problems.append(f"row {i} ({img_rel}): {len(labels)} classes marked ({', '.join(labels)}) but "
                                    "data.multi_label is false; set data.multi_label=true or mark one class per row")
            elif not labels and cfg.classes.background is None:
                row_problems.append(f"row {i} ({img_rel}): no class column marked and no background class is "
                                    "configured (mark a class or set data.classes.background)")
            elif not labels:  # none marked: the background / normal class, as a label column naming it
                labels = (cfg.classes.background,)
        if unknown:
            hint = ""
            for sep in dict.fromkeys((cfg.label_separator, ";", ",", "|", "+")):  # several labels, another separator?
                parts = [p.strip() for u in unknown for p in u.split(sep) if p.strip()]
                if any(sep in u for u in unknown) and all(p in cfg.classes.names for p in parts):
                    fix = [] if cfg.multi_label else ["data.multi_label=true"]
                    fix += [] if sep == cfg.label_separator else [f"data.label_separator='{sep}'"]
                    hint = (f"; it reads as several classes separated by {sep!r}: set {' and '.join(fix)}"
                            if fix else "")
                    break
            row_problems.append(
                f"row {i} ({img_rel}): unknown class {', '.join(map(repr, unknown))} in column "
                f"{cfg.label_column!r}; known classes: {', '.join(cfg.classes.names)}"
                + (hint or " (fix the row or add the class to data.classes.names)")
            )
        elif cfg.label_column and not labels:  # a forgotten label must not make a normal (background) example
            written = r[cfg.label_column].strip()
            what = f"missing label ({written!r})" if written else "empty label"
            bg = cfg.classes.background
            row_problems.append(f"row {i} ({img_rel}): {what} in column {cfg.label_column!r}; write the image's class"
                                + (f" ({bg!r} for a normal image)" if bg is not None else
                                   " (no background class is configured: set data.classes.background for images "
                                   "with none of the classes)"))
        image = manifest_path(root, img_rel)
        # (a Windows path's file name, not 'folder\\file'); 'a.ome' for a.ome.tif, as run folders made before
        # image_stem existed name its files (predict's outputs drop the '.ome': image_stem)
        name = r.get("name", "").strip() or image.stem
        bad_name = name_problem(name) if r.get("name", "").strip() else None  # (a file's stem holds no '/')
        if bad_name:
            row_problems.append(f"row {i} ({img_rel}): {bad_name}")
        key = os.path.normcase(os.path.realpath(image))  # (two links to one file are one image)
        if key in files_seen:  # e.g. manifests of two sources joined: a test image also in train leaks
            j, other_split = files_seen[key]
            link = ", through a link" if Path(image).is_symlink() else ""
            row_problems.append(f"row {i} ({img_rel}, split {split or '?'}): the same image file as row {j} (split "
                                f"{other_split or '?'}{link}); an image may appear once: delete one of the rows")
        elif name in names_seen:
            row_problems.append(f"row {i} ({img_rel}): duplicate image name {name!r} (also row {names_seen[name]}); "
                                "names must be unique: add a unique 'name' column or rename the file")
        files_seen.setdefault(key, (i, split))
        mask = None
        if cfg.mask_column and cfg.mask_column in r and r[cfg.mask_column].strip():
            mask = manifest_path(root, r[cfg.mask_column])
        if check_files:
            if not image.exists():
                row_problems.append(f"row {i}: image {image}: file not found; fix the path in the manifest or "
                                    "restore the file")
            if mask is not None and not mask.exists():
                row_problems.append(f"row {i}: mask {mask}: file not found; fix the path in the manifest or "
                                    "restore the file")
        names_seen.setdefault(name, i)
        if row_problems:
            problems.extend(row_problems)
            if rejected is not None:
                rejected.append({"row": i, "image": image, "mask": mask, "split": split})
            continue
        extra = {k: v for k, v in r.items() if k not in ("image", "split", "patient", "name")}
        points = (r.get(cfg.points_column, "").strip() or None) if cfg.points_column else None
        samples.append(Sample(name=name, image=image, split=split, patient=patient,
                              labels=labels, mask=mask, points=points, row=i, extra=extra))
    return samples, problems


def read_manifest(cfg: DataConfig, splits: list[str] | None = None, check_files: bool = False) -> list[Sample]:
    """Read and validate the manifest named in ``cfg``; optionally keep only ``splits``.

    Raises ManifestError listing every problem (missing columns, unknown classes, missing files...).
    """
    samples, problems = scan_manifest(cfg, check_files=check_files)
    if problems:
        raise ManifestError(f"{cfg.manifest}: {len(problems)} problem(s):\n  " + "\n  ".join(problems))
    if splits is not None:
        samples = [s for s in samples if s.split in splits]
    return samples


def patient_spellings(samples: list[Sample]) -> dict[str, list[str]]:
    """Patient ids written more than one way (``2`` and ``2.0``, ``03`` and ``3``) -> those spellings, sorted: they
    are read as one patient (:func:`patient_key`), which ``data check`` says so the manifest can be made consistent."""
    by_key: dict[str, set[str]] = {}
    for s in samples:
        by_key.setdefault(patient_key(s.patient), set()).add(s.patient.strip())
    return {k: sorted(v) for k, v in sorted(by_key.items()) if len(v) > 1}


def patients_in_several_splits(samples: list[Sample]) -> dict[str, list[str]]:
    """Patients that appear in more than one split -> sorted list of their splits."""
    by_patient: dict[str, set[str]] = {}
    for s in samples:
        by_patient.setdefault(patient_key(s.patient), set()).add(s.split)
    return {p: sorted(sp) for p, sp in sorted(by_patient.items()) if len(sp) > 1}


def read_csv_rows(path: Path, what: str = "manifest", fix: str = "pass the path of the manifest CSV",
                  lines: list[int] | None = None) -> tuple[list[str], list[dict[str, str]]]:
    """(columns, rows) of a CSV with a header, names and values stripped; a BOM (Excel) is tolerated.

    A missing file raises FileNotFoundError saying ``{path}: {what} not found; {fix}``. ``lines`` receives each
    row's line number (see :func:`read_table`).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} not found; {fix}")
    columns, rows = read_table(path, lines)
    return columns, [{k: v.strip() for k, v in r.items()} for r in rows]


def write_manifest(path: Path, rows: list[dict[str, str]]) -> None:
    """Write manifest rows (dicts with the same keys) atomically."""
    import io

    from histowsss.engine.atomic import write_text

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0].keys()), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    write_text(path, buf.getvalue())
