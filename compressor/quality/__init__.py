"""Data quality: figures from the merge, the collector's day verdict, the report."""
