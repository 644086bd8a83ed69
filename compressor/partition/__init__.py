"""The steps of one partition: fetch, merge, verify, publish (docs/guarantees.md "How a run works").

`compact.compact_partition` runs them in order; each step has its own module and errors.
"""


def never() -> bool:
    """The default should_stop: never asked to stop."""
    return False
