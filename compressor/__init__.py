"""quantlab-compact: nightly compaction of collector Parquet files."""

__version__ = "1.0.0"
