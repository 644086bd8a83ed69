"""What one merge is told and what it reports: MergeSettings (the tuning, from the
defaults, the environment and the command line, docs/operations.md "Configuration") and
MergeResult (the figures meta.json records under `merge`).

Separate because every step of the merge reads the one and adds to the other, and
the command line builds settings without loading the merge itself.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from compressor.merge.inputs import FileInfo

#: Rows per batch read from a spill run during the k-way merge (upper bound).
MERGE_BATCH_SIZE = 65_536
#: Rows per output row group; every row group has exactly this many rows but the last.
MERGE_OUTPUT_BUFFER_SIZE = 1_048_576
#: Log a progress line every this many output rows.
MERGE_LOG_INTERVAL = 5_000_000
#: Most spill runs open at once: the fan-in of each merge pass.
MAX_OPEN_FILES = 64
#: zstd level of data.parquet (1-22).
MERGE_ZSTD_LEVEL = 3
#: Default memory budget for buffered rows, bytes.
DEFAULT_MEMORY_BUDGET = 512 * 1024 * 1024
#: Fewest inputs worth slice processes: below this, starting them costs more than it saves.
PARALLEL_MIN_FILES = 1_500


#: Environment variable -> (MergeSettings field, smallest allowed, largest allowed).
ENVIRONMENT = {
    "MERGE_BATCH_SIZE": ("batch_size", 1, None),
    "MERGE_OUTPUT_BUFFER_SIZE": ("output_buffer_size", 1, None),
    "MERGE_LOG_INTERVAL": ("log_interval", 1, None),
    "MAX_OPEN_FILES": ("max_open_files", 2, None),
    "MERGE_ZSTD_LEVEL": ("zstd_level", 1, 22),
    "MERGE_PARALLEL_MIN_FILES": ("parallel_min_files", 2, None),
}
_LIMITS = {name: (low, high) for name, low, high in ENVIRONMENT.values()} | {
    "memory_budget": (1, None), "processes": (1, None),
}


@dataclass(frozen=True)
class MergeSettings:
    """Tuning of one merge; defaults are the module constants."""

    memory_budget: int = DEFAULT_MEMORY_BUDGET
    batch_size: int = MERGE_BATCH_SIZE
    output_buffer_size: int = MERGE_OUTPUT_BUFFER_SIZE
    log_interval: int = MERGE_LOG_INTERVAL
    max_open_files: int = MAX_OPEN_FILES
    zstd_level: int = MERGE_ZSTD_LEVEL
    #: Processes that read and sort slices of the inputs (1: this process does it all).
    processes: int = 1
    parallel_min_files: int = PARALLEL_MIN_FILES

    def __post_init__(self) -> None:
        for name, (low, high) in _LIMITS.items():
            value = getattr(self, name)
            if value < low or (high is not None and value > high):
                bounds = f"from {low} to {high}" if high else f">= {low}"
                raise ValueError(f"{name} must be {bounds}, got {value}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str], **overrides: int) -> MergeSettings:
        """The defaults, overridden by ENVIRONMENT variables, then by `overrides`.

        A bad value raises ValueError naming the variable.
        """
        values: dict[str, int] = {}
        for variable, (name, low, high) in ENVIRONMENT.items():
            text = environ.get(variable)
            if text is None:
                continue
            try:
                values[name] = int(text)
                cls(**{name: values[name]})
            except ValueError:
                bounds = f"from {low} to {high}" if high else f">= {low}"
                raise ValueError(f"{variable}={text!r}: want an integer {bounds}") from None
        return cls(**{**values, **overrides})


@dataclass
class MergeResult:
    """Figures of one merge."""

    rows: int = 0
    #: Rows the inputs' footers declare (each file's data is checked against its footer).
    input_rows: int = 0
    ts_event_min: int | None = None
    ts_event_max: int | None = None
    input_files: int = 0
    empty_files: int = 0
    #: Rows whose ts_event is below the previous row's in the same input file.
    unsorted_rows_in_files: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    passes: int = 0
    spill_runs: int = 0
    spill_bytes: int = 0
    peak_buffered_rows: int = 0
    row_groups: int = 0
    columns: list[str] = field(default_factory=list)

    def note_buffered(self, rows: int) -> None:
        self.peak_buffered_rows = max(self.peak_buffered_rows, rows)


def input_figures(infos: Sequence[FileInfo]) -> MergeResult:
    return MergeResult(
        input_files=len(infos),
        empty_files=sum(1 for info in infos if info.rows == 0),
        input_rows=sum(info.rows for info in infos),
        bytes_in=sum(info.size for info in infos),
    )
