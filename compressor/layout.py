"""Key layout of both buckets (BRIEF §1, §2): one place that builds and parses keys."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime

DATA_FILE = "data.parquet"
META_FILE = "meta.json"
STATE_KEY = "compacted/_state.json"
LOCKS_PREFIX = "compacted/locks/"
#: Short-lived objects of Store.check_conditional_writes (deleted by the probing run).
PROBE_PREFIX = "compacted/probes/"

_PREFIX_RE = re.compile(
    r"^exchange=(?P<exchange>[^/]+)/stream=(?P<stream>[^/]+)/"
    r"symbol=(?P<symbol>[^/]+)/date=(?P<date>\d{8})/$"
)


def parse_day(text: str) -> date:
    """YYYYMMDD -> date; ValueError with the offending text otherwise."""
    try:
        if not re.fullmatch(r"\d{8}", text):
            raise ValueError
        return datetime.strptime(text, "%Y%m%d").date()
    except ValueError:
        raise ValueError(f"not a YYYYMMDD date: {text!r}") from None


def format_day(day: date) -> str:
    return day.strftime("%Y%m%d")


@dataclass(frozen=True, order=True)
class PartitionId:
    """One exchange/stream/symbol/day; `date` is YYYYMMDD, symbol lower-case as in keys."""

    exchange: str
    stream: str
    symbol: str
    date: str

    @property
    def prefix(self) -> str:
        """Key prefix shared by the raw files and the compact outputs, ending with '/'."""
        return (
            f"exchange={self.exchange}/stream={self.stream}/"
            f"symbol={self.symbol}/date={self.date}/"
        )

    @property
    def state_key(self) -> str:
        """Key of this partition in _state.json's `partitions` map."""
        return f"{self.exchange}/{self.stream}/{self.symbol}/{self.date}"

    @property
    def data_key(self) -> str:
        return self.prefix + DATA_FILE

    @property
    def meta_key(self) -> str:
        return self.prefix + META_FILE

    @property
    def lock_key(self) -> str:
        return f"{LOCKS_PREFIX}{self.exchange}/{self.stream}/{self.symbol}/{self.date}.lock"

    @classmethod
    def from_prefix(cls, prefix: str) -> PartitionId:
        match = _PREFIX_RE.match(prefix)
        if not match:
            raise ValueError(f"not a partition prefix: {prefix!r}")
        return cls(**match.groupdict())


def raw_file_name(unix_s: int, counter: int) -> str:
    """The collector's file name: flush time in seconds and a per-process counter."""
    return f"part-{unix_s}-{counter:06d}.parquet"


def is_raw_data_key(key: str) -> bool:
    """True for a collector data file; False for `._*`, `.tmp` and other strays."""
    name = key.rsplit("/", 1)[-1]
    return name.endswith(".parquet") and not name.startswith(".")
