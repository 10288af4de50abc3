"""``Preprocessor``: how a task's raw inputs become the network's float tensor, fitted on the
train split once and applied to every other row (validation, test, and new rows at prediction)."""

from __future__ import annotations

import csv
import io
import logging
import math
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hporl.exceptions import ConfigError, TaskError

__all__ = ["Preprocessor"]

logger = logging.getLogger(__name__)

_MISSING_STRINGS = {"", "na", "nan", "null", "none", "?"}
KINDS = ("table", "array")


class Preprocessor:
    """The fitted preprocessing of a task's inputs; :meth:`Task.from_arrays` fits one on the
    train split and applies it to the validation and test rows, and a saved model applies it
    to new rows. It is plain numbers and strings (:meth:`to_dict` / :meth:`from_dict`, JSON).

    Tables (2-D): a column whose present values are all numbers is *numeric*: a missing value
    becomes the train median, then the column is standardised with the train mean and standard
    deviation (a constant column is only centred). Every other column is *categorical*: a
    missing value becomes the most frequent train value, then the column is one-hot encoded over
    the train categories (a category not seen in training encodes as all zeros). The output is
    the numeric columns, then the one-hot blocks, each in column order (:attr:`feature_names`).
    Missing means empty, ``NaN``, ``None`` or one of ``na``, ``nan``, ``null``, ``none``, ``?``.

    Arrays of 3 or more dimensions (sequences ``(n, C, L)``, images ``(n, C, H, W)``): each
    channel is standardised with its train mean and standard deviation; missing values are
    refused.

    Make one with :meth:`fit` or :meth:`from_dict` (the constructor takes the fitted state).

    Attributes:
        kind: ``"table"`` or ``"array"``.
        columns: the table's column names, in the order a numpy array must follow.
        input_shape: the shape of one raw sample (``(n_columns,)`` for a table).
    """

    def __init__(self, kind: str, state: Mapping[str, Any]) -> None:
        if kind not in KINDS:
            raise TaskError(f"preprocessing kind must be one of {KINDS}, got {kind!r}")
        self.kind = kind
        self._state = dict(state)
        if kind == "table":
            s = self._state
            self.columns: list[str] | None = list(s["columns"])
            self.numeric: list[str] = list(s["numeric"])
            self.categorical: list[str] = list(s["categorical"])
            self._num_idx = [self.columns.index(c) for c in self.numeric]
            self._cat_idx = [self.columns.index(c) for c in self.categorical]
            self._median = np.asarray(s["median"], dtype=np.float64)
            self._mean = np.asarray(s["mean"], dtype=np.float64)
            self._scale = np.asarray(s["scale"], dtype=np.float64)
            self._fill: list[str] = list(s["fill"])
            self._categories: list[list[str]] = [list(c) for c in s["categories"]]
            self.input_shape: tuple[int, ...] = (len(self.columns),)
        else:
            self.columns = None
            self.numeric, self.categorical = [], []
            self.input_shape = tuple(int(v) for v in self._state["input_shape"])
            shape = (1, len(self._state["mean"])) + (1,) * (len(self.input_shape) - 1)
            self._cmean = np.asarray(self._state["mean"], dtype=np.float32).reshape(shape)
            self._cstd = np.asarray(self._state["std"], dtype=np.float32).reshape(shape)
        self.frac_missing = float(self._state.get("frac_missing", 0.0))
        self.frac_categorical = float(self._state.get("frac_categorical", 0.0))

    # -- fitting ----------------------------------------------------------------------------
    @classmethod
    def fit(cls, X: Any, columns: Sequence[str] | None = None) -> Preprocessor:
        """Fit on the train rows ``X`` (2-D table, or an array of 3+ dimensions).

        Raises:
            TaskError: a column is entirely empty, holds inf, or the array is not numeric.
        """
        X, columns = _as_rows(X, columns)
        if X.ndim == 2:
            return cls("table", _fit_table(X, columns))
        if X.ndim < 2:
            raise TaskError(f"X must have one row per sample (2 or more dimensions), got {X.shape}")
        Xf = _as_float_array(X)
        axes = (0, *range(2, Xf.ndim))
        mean = Xf.mean(axis=axes)
        std = Xf.std(axis=axes) + np.float32(1e-8)
        return cls(
            "array",
            {
                "input_shape": list(Xf.shape[1:]),
                "mean": [float(v) for v in mean],
                "std": [float(v) for v in std],
            },
        )

    # -- applying ---------------------------------------------------------------------------
    def transform(self, X: Any, columns: Sequence[str] | None = None) -> np.ndarray:
        """The network's input (float32) for the rows ``X``.

        ``X`` is a pandas DataFrame (columns matched by name, in any order), or an array whose
        columns follow :attr:`columns` (``columns=`` names them when they come in another order).

        Raises:
            ConfigError: a column the model needs is missing, one it does not know is present, or
                the array has the wrong shape; the message names them.
            TaskError: a numeric column holds text or inf.
        """
        X, columns = _as_rows(X, columns)
        if self.kind == "array":
            if tuple(X.shape[1:]) != self.input_shape:
                raise ConfigError(
                    f"the input has samples of shape {tuple(X.shape[1:])}; the model takes "
                    f"{self.input_shape}"
                )
            Xf = _as_float_array(X)
            if not np.isfinite(Xf).all():
                row = int(np.argwhere(~np.isfinite(Xf))[0][0])
                raise TaskError(f"the input contains NaN or inf (first at row {row})")
            return np.ascontiguousarray((Xf - self._cmean) / self._cstd, dtype=np.float32)
        X = self._align(X, columns)
        return np.ascontiguousarray(self._transform_table(X), dtype=np.float32)

    def _align(self, X: np.ndarray, columns: Sequence[str] | None) -> np.ndarray:
        """The rows with their columns in training order, or a ConfigError naming the
        columns that are missing or unexpected."""
        assert self.columns is not None
        want = self.columns
        if X.ndim != 2:
            raise ConfigError(
                f"the input must be a table (rows x columns), got an array of shape {X.shape}"
            )
        if columns is None:
            if X.shape[1] != len(want):
                raise ConfigError(
                    f"the input has {X.shape[1]} columns; the model takes {len(want)}, in this "
                    f"order: {_names(want)}"
                )
            return X
        columns = [str(c) for c in columns]
        if len(columns) != X.shape[1]:
            raise ConfigError(f"{len(columns)} column names for {X.shape[1]} columns")
        dup = sorted({c for c in columns if columns.count(c) > 1})
        if dup:
            raise ConfigError(f"the input names column(s) {_names(dup)} more than once")
        missing = [c for c in want if c not in columns]
        extra = [c for c in columns if c not in want]
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing column(s) {_names(missing)}")
            if extra:
                parts.append(f"unexpected column(s) {_names(extra)} (drop them)")
            raise ConfigError(
                f"the input does not have the model's columns: {'; '.join(parts)}; the model "
                f"takes {_names(want)}"
            )
        order = [columns.index(c) for c in want]
        return X[:, order]

    def _transform_table(self, X: np.ndarray) -> np.ndarray:
        """Impute, standardise and one-hot encode (the arithmetic of sklearn's SimpleImputer,
        StandardScaler and OneHotEncoder(handle_unknown="ignore"), which fitted them)."""
        assert self.columns is not None
        n = len(X)
        blocks = []
        if self._num_idx:
            num = np.empty((n, len(self._num_idx)), dtype=np.float64)
            for k, j in enumerate(self._num_idx):
                col = _as_float(X[:, j])
                name = self.columns[j]
                if col is None:
                    i, value = _first_text(X[:, j])
                    raise TaskError(
                        f"feature column {name!r} is numeric but row {i} holds text ({value!r})"
                    )
                if np.isinf(col).any():
                    i = int(np.flatnonzero(np.isinf(col))[0])
                    raise TaskError(f"feature column {name!r} contains inf (row {i})")
                num[:, k] = col
            num = np.where(np.isnan(num), self._median, num)
            num -= self._mean
            num /= self._scale
            blocks.append(num)
        for k, j in enumerate(self._cat_idx):
            col = X[:, j]
            miss = _missing_mask(col)
            values = [self._fill[k] if m else str(v) for v, m in zip(col, miss, strict=True)]
            index = {c: i for i, c in enumerate(self._categories[k])}
            onehot = np.zeros((n, len(index)), dtype=np.float64)
            for i, v in enumerate(values):
                pos = index.get(v)
                if pos is not None:
                    onehot[i, pos] = 1.0
            blocks.append(onehot)
        return np.hstack(blocks)

    # -- description --------------------------------------------------------------------------
    @property
    def feature_names(self) -> list[str]:
        """Names of the output features (``column`` or ``column=category``); tables only."""
        if self.kind != "table":
            return [f"x{i}" for i in range(int(math.prod(self.input_shape)))]
        cats = [
            f"{c}={v}" for c, vs in zip(self.categorical, self._categories, strict=True) for v in vs
        ]
        return [*self.numeric, *cats]

    @property
    def numeric_only(self) -> bool:
        """Every step is arithmetic on floats (no categorical column): what an ONNX graph of
        the preprocessing can take as one float tensor."""
        return not self.categorical

    def to_dict(self) -> dict[str, Any]:
        """Everything fitted, as JSON-ready values (floats round-trip exactly)."""
        return {"kind": self.kind, **self._state}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Preprocessor:
        """The inverse of :meth:`to_dict`."""
        try:
            state = {k: v for k, v in d.items() if k != "kind"}
            return cls(d["kind"], state)
        except (KeyError, TypeError, ValueError) as err:
            raise TaskError(f"not a saved preprocessing: {type(err).__name__}: {err}") from None

    def __repr__(self) -> str:
        if self.kind == "table":
            return (
                f"Preprocessor(table, {len(self.numeric)} numeric + {len(self.categorical)} "
                f"categorical columns -> {len(self.feature_names)} features)"
            )
        return f"Preprocessor(array {self.input_shape}, per-channel standardisation)"


# -- fitting a table ------------------------------------------------------------------------
def _fit_table(X: np.ndarray, columns: Sequence[str] | None) -> dict[str, Any]:
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    n_cols = X.shape[1]
    columns = list(columns) if columns is not None else [f"x{j}" for j in range(n_cols)]
    if len(columns) != n_cols:
        raise TaskError(f"{len(columns)} column names for {n_cols} columns")
    if n_cols == 0:
        raise TaskError("X has no feature columns")
    numeric, categorical = [], []
    missing_total = 0
    for j, name in enumerate(columns):
        col = X[:, j]
        miss = _missing_mask(col)
        if miss.all():
            raise TaskError(f"column {name!r} is entirely empty in the train split; drop it")
        missing_total += int(miss.sum())
        num = _as_float(col)
        if num is not None:
            if np.isinf(num).any():
                row = int(np.flatnonzero(np.isinf(num))[0])
                raise TaskError(f"feature column {name!r} contains inf (train row {row})")
            numeric.append(j)
        else:
            categorical.append(j)
    if missing_total:
        msg = f"{missing_total} missing feature value(s) in the train split were imputed"
        warnings.warn(msg, UserWarning, stacklevel=4)
        logger.info(msg)
    state: dict[str, Any] = {
        "columns": columns,
        "numeric": [columns[j] for j in numeric],
        "categorical": [columns[j] for j in categorical],
        "median": [],
        "mean": [],
        "scale": [],
        "fill": [],
        "categories": [],
    }
    if numeric:
        num = np.column_stack([_as_float(X[:, j]) for j in numeric]).astype(np.float64)
        imputer = SimpleImputer(strategy="median").fit(num)
        scaler = StandardScaler().fit(imputer.transform(num))
        state["median"] = [float(v) for v in imputer.statistics_]
        state["mean"] = [float(v) for v in scaler.mean_]
        state["scale"] = [float(v) for v in scaler.scale_]
    if categorical:
        cat = np.empty((len(X), len(categorical)), dtype=object)
        for k, j in enumerate(categorical):
            col = X[:, j]
            miss = _missing_mask(col)
            cat[:, k] = [np.nan if m else str(v) for v, m in zip(col, miss, strict=True)]
        imputer = SimpleImputer(strategy="most_frequent").fit(cat)
        encoder = OneHotEncoder(handle_unknown="ignore").fit(imputer.transform(cat))
        state["fill"] = [str(v) for v in imputer.statistics_]
        state["categories"] = [[str(v) for v in c] for c in encoder.categories_]
    n_out = len(numeric) + sum(len(c) for c in state["categories"])
    state["frac_missing"] = missing_total / max(X.size, 1)
    state["frac_categorical"] = (n_out - len(numeric)) / max(n_out, 1)
    return state


# -- values ---------------------------------------------------------------------------------
def _as_rows(X: Any, columns: Sequence[str] | None) -> tuple[np.ndarray, Sequence[str] | None]:
    """A numpy array of the rows, and the column names (a DataFrame's, without importing
    pandas, unless ``columns`` names them)."""
    if hasattr(X, "columns") and hasattr(X, "to_numpy"):
        columns = columns or [str(c) for c in X.columns]
        X = X.to_numpy(dtype=object)
    elif hasattr(X, "detach") and hasattr(X, "cpu"):  # a torch tensor
        X = X.detach().cpu().numpy()
    return np.asarray(X), columns


def _as_float_array(X: np.ndarray) -> np.ndarray:
    try:
        return X.astype(np.float32)
    except (ValueError, TypeError) as err:
        raise TaskError(f"X with {X.ndim} dimensions must be numeric: {err}") from None


def _names(names: Sequence[str]) -> str:
    shown = [repr(c) for c in names[:20]]
    return ", ".join(shown) + (f", ... ({len(names)} in all)" if len(names) > 20 else "")


def _first_text(col: np.ndarray) -> tuple[int, Any]:
    missing = _missing_mask(col)
    for i, v in enumerate(col):
        if missing[i]:
            continue
        try:
            float(v)
        except (TypeError, ValueError):
            return i, v
    return 0, col[0]


def _missing_mask(a: np.ndarray) -> np.ndarray:
    if a.dtype.kind == "f":
        return np.isnan(a)
    if a.dtype == object:
        return np.array(
            [
                v is None
                or (isinstance(v, float) and math.isnan(v))
                or (isinstance(v, str) and v.strip().lower() in _MISSING_STRINGS)
                for v in a.reshape(-1)
            ],
            dtype=bool,
        ).reshape(a.shape)
    if a.dtype.kind in "US":
        return (
            np.char.lower(np.char.strip(a.astype(str))) == "" if a.size else np.zeros(a.shape, bool)
        )
    return np.zeros(a.shape, dtype=bool)


def _as_float(col: np.ndarray) -> np.ndarray | None:
    """The column as floats (missing -> NaN) if every present value is a number, else None."""
    if col.dtype.kind in "fiub":
        return col.astype(np.float64)
    missing = _missing_mask(col)
    out = np.full(col.shape, np.nan)
    for i, v in enumerate(col):
        if missing[i]:
            continue
        try:
            out[i] = float(v)
        except (TypeError, ValueError):
            return None
    return out


# -- CSV ------------------------------------------------------------------------------------
MAX_CSV_BYTES = 2**30
"""The largest CSV file hporl reads (it is read into memory)."""


def read_csv(
    path: str | Path, delimiter: str | None = None
) -> tuple[list[str], list[list[str]], list[int]]:
    """The header, the non-blank rows and the file line each row ends on (for messages).

    Raises:
        TaskError: the file cannot be read, is binary, not UTF-8, not CSV, or empty.
    """
    path = Path(path)
    try:
        with path.open("rb") as handle:
            head = handle.read(1 << 16)
            if b"\x00" in head:  # /dev/zero, an image, a zip: refused before reading on
                raise TaskError(f"{path} is not a CSV file (it holds binary data)")
            raw = head + handle.read(MAX_CSV_BYTES + 1 - len(head))
    except OSError as err:
        raise TaskError(f"cannot read CSV file {str(path)!r}: {err.strerror}") from None
    if len(raw) > MAX_CSV_BYTES:
        raise TaskError(
            f"{path} is larger than {MAX_CSV_BYTES // 2**20:,} MiB; hporl reads CSV files up to that "
            "size into memory (sample it, or pass arrays to Task.from_arrays)"
        )
    if b"\x00" in raw:
        raise TaskError(f"{path} is not a CSV file (it holds binary data)")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise TaskError(f"{path} is not a UTF-8 text CSV file") from None
    if delimiter is None:
        try:
            delimiter = csv.Sniffer().sniff(text[:8192], delimiters=",;\t|").delimiter
        except csv.Error:
            delimiter = ","
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    rows: list[list[str]] = []
    lines: list[int] = []
    try:
        for r in reader:
            if any(cell.strip() for cell in r):
                rows.append(r)
                lines.append(reader.line_num)
    except csv.Error as err:
        raise TaskError(f"{path}, line {reader.line_num}: not valid CSV: {err}") from None
    if not rows:
        raise TaskError(f"{path} is empty")
    header = [h.strip() for h in rows[0]]
    twice = sorted({h for h in header if header.count(h) > 1})
    if twice:
        raise TaskError(
            f"{path}: column names appear more than once: {', '.join(map(repr, twice))}"
        )
    body = rows[1:]
    if delimiter != ",":
        _decimal_commas(path, header, body)
    return header, body, lines[1:]


_DECIMAL_COMMA = re.compile(r"^[+-]?\d*,\d+([eE][+-]?\d+)?$")
_INTEGER = re.compile(r"^[+-]?\d+$")


def _decimal_commas(path: Path, header: Sequence[str], body: list[list[str]]) -> None:
    """Columns whose numbers are written with a decimal comma (``3,14``; files separated by
    ``;`` usually are) are read as numbers, in place, and said in the log: read as text they
    would silently become categories."""
    for j, name in enumerate(header):
        cells = [r[j].strip() for r in body if j < len(r) and r[j].strip()]
        if not cells or not any(_DECIMAL_COMMA.match(c) for c in cells):
            continue
        if all(_DECIMAL_COMMA.match(c) or _INTEGER.match(c) for c in cells):
            for r in body:
                if j < len(r):
                    r[j] = r[j].replace(",", ".")
            logger.warning("%s: column %r has decimal commas; read as numbers", path, name)


def check_field_counts(
    path: str | Path, header: Sequence[str], body: Sequence[Sequence[str]], lines: Sequence[int]
) -> None:
    """Refuse a row whose number of fields differs from the header's."""
    for line, r in zip(lines, body, strict=True):
        if len(r) != len(header):
            raise TaskError(
                f"{path}, line {line}: {len(r)} fields where the header has {len(header)}; "
                "is this a CSV file with the right delimiter?"
            )
