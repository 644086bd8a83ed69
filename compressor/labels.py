"""The day's quality label: the strings downstream readers compare literally (BRIEF §2).

`day_quality` in meta.json and `day_quality_post` in a `_state.json` entry hold one
of these values; research scripts select `day_quality_post == "GOOD"`, or
`in {"GOOD", "DEGRADED"}`, or `!= "BAD"`. `post_filter_version` names the version
of the rules that produced the label (`RULES_VERSION`), so a reader can tell labels
made by different rules apart.

Why here, at the bottom next to `layout`, and not in `compressor.quality`: the label
and its rules version are words of the data contract that every layer stores or
compares. The state validates `day_quality_post`, the plan relabels a day whose
`post_filter_version` is not `RULES_VERSION`, the job and the publish write them into
meta.json, and `quality` computes them. Kept in `quality`, planning and the state
would import from a package that itself reads the state (the report), an arrow back
up the layers; here every one of them imports downward, and this module imports
nothing of the project.
"""

from __future__ import annotations

import enum

#: Version of the window and day rules (compressor.quality.windows). "1.0.0" was the
#: previous implementation's rules, which read a window key's HHMM as the window's END;
#: "2.0.0" places every window by its own `window_start`, as the collector names them.
#: A label made under another version is relabelled by the next run that covers its
#: day (docs/quality.md "Collector health windows"), without recompacting.
RULES_VERSION = "2.0.0"


class Label(enum.StrEnum):
    """A collector day verdict. The value is the stored string."""

    GOOD = "GOOD"
    DEGRADED = "DEGRADED"
    BAD = "BAD"
    #: Some windows were partial and too few full windows exist to judge the day.
    PARTIAL = "PARTIAL"
    #: No usable window at all: nothing is known about the collector that day.
    UNKNOWN = "UNKNOWN"

    @property
    def final(self) -> bool:
        """False for labels that must be scored again when the day comes round again
        (late windows may still arrive)."""
        return self not in (Label.PARTIAL, Label.UNKNOWN)


LABELS = tuple(label.value for label in Label)
