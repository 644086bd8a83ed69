"""What the trials found, counted, and the summary the bench prints."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from bench.chaos.lake import DEFAULT_LEASE_TTL_S, FAULTS, SKEWS


@dataclass
class Totals:
    trials: Counter[str] = field(default_factory=Counter)
    scenarios: Counter[str] = field(default_factory=Counter)
    #: per fault kind: trials with a divergence, divergences, inconsistent pairs
    diverged_trials: Counter[str] = field(default_factory=Counter)
    divergence_count: Counter[str] = field(default_factory=Counter)
    inconsistent: Counter[str] = field(default_factory=Counter)
    divergences: list[str] = field(default_factory=list)
    inconsistent_pairs: list[str] = field(default_factory=list)
    # kill
    kills: int = 0
    timed_kills: int = 0
    request_kills: int = 0
    publish_kills: int = 0
    finished_before_kill: int = 0
    leases_left: int = 0
    leases_made_foreign: int = 0
    tmp_dirs_left: int = 0
    # pause
    pauses: int = 0
    timed_pauses: int = 0
    request_pauses: int = 0
    publish_pauses: int = 0
    held_requests: int = 0
    finished_before_pause: int = 0
    takeovers: int = 0
    late_files: int = 0
    paused_exits: Counter[int] = field(default_factory=Counter)
    lease_ttl_s: float = DEFAULT_LEASE_TTL_S
    # skew
    skew_runs: int = 0
    stolen: int = 0
    compacted_twice: int = 0
    # reader
    rounds: int = 0
    pairs: int = 0
    deep: int = 0
    raced: int = 0
    seconds: float = 0.0
    kept: list[str] = field(default_factory=list)



def summary(t: Totals) -> str:
    def tail(kind: str) -> str:
        return (f"{t.divergence_count[kind]} divergences"
                + (f" (in {t.diverged_trials[kind]} trials)" if t.divergence_count[kind] else "")
                + f", {t.inconsistent[kind]} inconsistent pairs")

    kinds = ", ".join(f"{t.trials[k]} {k}" for k in FAULTS if t.trials[k])
    scenarios = ", ".join(f"{n} {s}" for s, n in sorted(t.scenarios.items()))
    exits = ", ".join(f"{n} exit {c}" for c, n in sorted(t.paused_exits.items())) or "none"
    lines = [f"chaos: {sum(t.trials.values())} trials ({kinds}; scenarios: {scenarios}) "
             f"in {t.seconds:.0f}s"]
    if t.trials["kill"]:
        lines.append(
            f"kill: {t.trials['kill']} trials, {t.kills} SIGKILL ({t.timed_kills} after a random "
            f"delay, {t.request_kills} at an S3 request, {t.publish_kills} of them in the publish "
            f"phase); {t.finished_before_kill} runs finished before their kill; {tail('kill')}")
    if t.trials["pause"]:
        lines.append(
            f"pause: {t.trials['pause']} trials, {t.pauses} SIGSTOP ({t.timed_pauses} after a "
            f"random delay, {t.request_pauses} at an S3 request, {t.publish_pauses} of them in "
            f"the publish phase, {t.held_requests} holding that request until SIGCONT), lease "
            f"TTL {t.lease_ttl_s:g}s; {t.takeovers} leases taken over by the second run, "
            f"{t.late_files} late raw files; paused runs: {exits}; {t.finished_before_pause} "
            f"runs finished before their pause; {tail('pause')}")
    if t.trials["skew"]:
        lines.append(
            f"skew: {t.trials['skew']} trials, {t.skew_runs} runs as two hosts with clocks at "
            f"{SKEWS[0]:+.0f}s / {SKEWS[1]:+.0f}s: {t.stolen} live leases taken over, "
            f"{t.compacted_twice} partitions compacted twice; {tail('skew')}")
    lines += [
        f"left by the killed and paused runs: {t.leases_left} leases ({t.leases_made_foreign} "
        f"turned into expired leases of another host), {t.tmp_dirs_left} temp dirs"
        + ("; all gone after the re-runs" if not t.divergences else ""),
        f"reader: {t.rounds} rounds, {t.pairs} meta.json read with their data.parquet "
        f"({t.deep} deep checks of the bytes), {t.raced} replaced by a writer during the read",
        f"inconsistent pairs: {len(t.inconsistent_pairs)}",
        f"divergences: {len(t.divergences)}"
        + (f" (in {sum(t.diverged_trials.values())} trials)" if t.divergences else ""),
    ]
    return "\n".join(lines)


