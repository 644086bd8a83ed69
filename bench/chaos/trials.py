"""The trials: which fault next, and one kill, pause or skew trial from start to re-run."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.chaos.bench import Bench, Calibration, _log_has, _log_lines, _tail
from bench.chaos.lake import (
    DECK,
    LATE_FILE_P,
    PUBLISH,
    RUN_TIMEOUT_S,
    SCENARIOS,
    SKEWS,
    TAKEOVER_MARKS,
    TARGETS,
    Bucket,
    _pid_of_key,
    _pids,
)
from bench.chaos.proxy import KillingProxy, Target, writes_of
from bench.chaos.reader import Reader
from bench.chaos.skew import lease_skew
from compressor.layout import LOCKS_PREFIX, STATE_KEY, PartitionId
from compressor.lease import LeaseRecord
from compressor.state import parse_document
from compressor.text import utc_iso
from tests.support.s3proxy import S3Proxy


@dataclass
class TrialRecord:
    """One trial under way: its name, work dir and what went wrong."""

    n: int
    fault: str
    scenario: str
    name: str
    dir: Path
    problems: list[str] = field(default_factory=list)


class Chaos(Bench):
    """Deals the faults and runs the trials (see the package docstring)."""

    # -- choosing a trial --------------------------------------------------------

    def next_fault(self) -> str:
        """The next kind from the deck: every aligned block of len(DECK) trials holds each."""
        if not self._deck:
            deck = [f for f in DECK if f in self.faults] or list(self.faults)
            self.rng.shuffle(deck)
            self._deck = deck
        return self._deck.pop(0)

    def draw_scenario(self, fault: str) -> str:
        choices = [s for s in SCENARIOS[fault] if self.scenarios is None or s in self.scenarios]
        return self.rng.choice(choices or list(SCENARIOS[fault]))

    def draw_moment(self, calibration: Calibration, action: str
                    ) -> tuple[Target | None, float, str]:
        """(request target, or None and a delay) of a kill or pause, and its description."""
        rng = self.rng
        if rng.random() < 0.5:  # over the part of the run that talks to the store
            delay = rng.uniform(calibration.first_request_s, calibration.seconds)
            return None, delay, f"{action} after {delay:.2f}s"
        kinds = [k for k in TARGETS if calibration.kinds[k]]
        publish = [k for k in kinds if k in PUBLISH]
        kind = rng.choice(publish if publish and rng.random() < 0.6 else kinds)
        target = Target(kind, rng.randint(1, calibration.kinds[kind]), rng.random() < 0.5)
        return target, 0.0, f"{action} at {target.describe(action)}"

    # -- one trial -----------------------------------------------------------------

    def trial(self, n: int, proxy: KillingProxy, plain: S3Proxy) -> None:
        fault = self.next_fault()
        proxy.arm(None, None)
        plain.reset_counts()
        if fault == "kill":
            self.kill_trial(n, proxy, plain)
        elif fault == "pause":
            self.pause_trial(n, proxy, plain)
        else:
            self.skew_trial(n, proxy, plain)

    def _begin(self, n: int, fault: str, scenario: str, detail: str) -> TrialRecord:
        self.totals.trials[fault] += 1
        self.totals.scenarios[scenario] += 1
        trial_dir = self.work / f"trial-{n:03d}"
        (trial_dir / "tmp").mkdir(parents=True)
        return TrialRecord(n, fault, scenario, f"trial {n} ({fault}: {scenario}, {detail})",
                           trial_dir)

    def _end(self, rec: TrialRecord, reader: Reader, outcome: str, final: list[str]) -> None:
        t = self.totals
        t.rounds += reader.rounds
        t.pairs += reader.pairs
        t.deep += reader.deep
        t.raced += reader.raced
        inconsistent = sorted(set(reader.inconsistent))  # one line per distinct finding
        problems = rec.problems + sorted(set(reader.violations)) + final
        self.log(f"{rec.name}: {outcome}; {reader.rounds} reader rounds, {reader.pairs} pairs "
                 f"read; {'OK' if not problems and not inconsistent else 'FAILED'}")
        t.inconsistent[rec.fault] += len(inconsistent)
        for p in inconsistent:
            line = f"{rec.name}: {p}"
            t.inconsistent_pairs.append(line)
            print(f"INCONSISTENT PAIR {line}", flush=True)
        t.diverged_trials[rec.fault] += bool(problems)
        t.divergence_count[rec.fault] += len(problems)
        for p in problems:
            line = f"{rec.name}: {p}"
            t.divergences.append(line)
            print(f"DIVERGENCE {line}", flush=True)
        if problems or inconsistent:
            t.kept.append(str(rec.dir))
        elif not self.keep_all:
            shutil.rmtree(rec.dir, ignore_errors=True)

    def _rerun(self, rec: TrialRecord, bucket: Bucket, raw: Bucket | None = None) -> None:
        rerun = self._spawn(self.command(rec.scenario, rec.dir / "tmp", rerun=True),
                            self.env(bucket, raw=raw), rec.dir / "rerun")
        code = self._wait(rerun)
        if code != 0:
            rec.problems.append(f"re-run exit {code}: {_tail(rec.dir / 'rerun')}")

    def _leftovers(self, bucket: Bucket, tmp: Path) -> tuple[int, int]:
        """Leases and temp dirs a killed or paused run left; some leases made foreign."""
        left_locks = bucket.keys(LOCKS_PREFIX)
        left_tmp = list(tmp.glob("qlc-part-*"))
        self.totals.leases_left += len(left_locks)
        self.totals.tmp_dirs_left += len(left_tmp)
        for key in left_locks:
            if self.found_rng.random() < 0.3:
                self._make_foreign_and_expired(bucket, key)
        return len(left_locks), len(left_tmp)

    # .. kill .....................................................................

    def kill_trial(self, n: int, proxy: KillingProxy, plain: S3Proxy) -> None:
        rng = self.rng
        scenario = self.draw_scenario("kill")
        multipart = rng.random() < 0.5
        calibration = self.calibrate(scenario, multipart, proxy)
        target, delay, plan = self.draw_moment(calibration, "kill")
        rec = self._begin(n, "kill", scenario, f"{'multipart, ' if multipart else ''}{plan}")
        bucket = self.prepare(scenario)
        tmp = rec.dir / "tmp"
        t = self.totals
        with Reader(bucket, rec.dir / "reader") as reader:
            survivor = None
            if scenario == "pair":
                survivor = self._spawn(self.command(scenario, tmp),
                                       self.env(bucket, plain.endpoint, multipart),
                                       rec.dir / "survivor")
            victim = self._spawn(self.command(scenario, tmp),
                                 self.env(bucket, proxy.endpoint, multipart), rec.dir / "victim")
            proxy.arm(target, victim)
            timer = None
            if target is None:
                timer = threading.Timer(delay, proxy.kill_now, args=(plan,))
                timer.start()
            code = self._wait(victim)
            if timer is not None:
                timer.cancel()
            killed_at = proxy.killed_at
            if killed_at is not None:
                if code != -signal.SIGKILL:
                    rec.problems.append(f"victim exit {code} after the kill, not SIGKILL")
                t.kills += 1
                if target is None:
                    t.timed_kills += 1
                else:
                    t.request_kills += 1
                    t.publish_kills += target.kind in PUBLISH
            else:
                t.finished_before_kill += 1
                if code != 0:
                    rec.problems.append(f"unkilled run exit {code}: {_tail(rec.dir / 'victim')}")
            proxy.arm(None, None)
            if survivor is not None:
                code = self._wait(survivor)
                if code != 0:
                    rec.problems.append(f"survivor exit {code}: {_tail(rec.dir / 'survivor')}")
                else:  # the survivor alone must have done everything; a lease the dead run
                    # held when it was killed (say on a partition the survivor had already
                    # published) stays until the next run's start-up reaps it
                    dead = victim.pid if killed_at is not None else None
                    rec.problems += [f"after the survivor: {p}" for p in self.check_final(
                        bucket, self.expected_lcd(scenario), None, leases_of_dead=dead)]
            leases, tmps = self._leftovers(bucket, tmp)
            self._rerun(rec, bucket)
        final = self.check_final(bucket, self.expected_lcd(scenario), tmp)
        outcome = f"killed ({killed_at})" if killed_at else "finished first"
        self._end(rec, reader, f"{outcome}; leftovers: {leases} leases, {tmps} temp dirs", final)

    # .. pause ....................................................................

    def pause_trial(self, n: int, proxy: KillingProxy, plain: S3Proxy) -> None:
        rng = self.rng
        t = self.totals
        scenario = self.draw_scenario("pause")
        multipart = rng.random() < 0.5
        calibration = self.calibrate(scenario, multipart, proxy)
        target, delay, plan = self.draw_moment(calibration, "pause")
        late = rng.random() < LATE_FILE_P
        after = rng.choice(("takeover", "second run done"))
        # a catch-up waits for a busy partition of a ready day (same host); a backfill
        # leaves it, so its second run starts once the paused run's leases expired
        at_once = scenario == "fresh" and rng.random() < 0.5
        rec = self._begin(n, "pause", scenario, f"{'multipart, ' if multipart else ''}{plan}, "
                          f"second run {'at once' if at_once else 'after the expiry'}, "
                          f"continued once the {after}{', late file' if late else ''}")
        raw = self.raw_copy() if late else self.raw
        bucket = self.prepare(scenario)
        tmp = rec.dir / "tmp"
        ttl = self.lease_ttl_s
        cap = RUN_TIMEOUT_S + 3 * ttl + 60
        ref = self.reference
        outcome = "finished first"
        with Reader(bucket, rec.dir / "reader") as reader:
            victim = self._spawn(self.command(scenario, tmp),
                                 self.env(bucket, proxy.endpoint, multipart, raw=raw, ttl_s=ttl),
                                 rec.dir / "paused")
            proxy.arm(target, victim, action="pause")
            timer = None
            if target is None:
                timer = threading.Timer(delay, proxy.pause_now, args=(plan,))
                timer.start()
            while not proxy.paused.wait(0.05) and victim.poll() is None:
                pass
            if timer is not None:
                timer.cancel()
            if proxy.paused_at is None:
                t.finished_before_pause += 1
                code = self._wait(victim)
                if code != 0:
                    rec.problems.append(f"unpaused run exit {code}: {_tail(rec.dir / 'paused')}")
            else:
                t.pauses += 1
                if target is None:
                    t.timed_pauses += 1
                else:
                    t.request_pauses += 1
                    t.publish_pauses += target.kind in PUBLISH
                    t.held_requests += not target.forward
                time.sleep(0.3)  # a request it sent just before the SIGSTOP lands
                held = self._leases_of(bucket, victim.pid)
                honoured = self._check_ttl(rec, held, ttl)
                late_pid = None
                if late:
                    late_pid = self._late_target(held, proxy.paused_path)
                    raw.put(*self.late_file(late_pid))
                    ref = self.late_reference(late_pid)
                    t.late_files += 1
                deadline = time.monotonic() + cap
                if honoured and held and not at_once:  # expired for anyone, skew margin too
                    expiry = max(r.expires_at for r in held.values()) + lease_skew(ttl) + 2
                    self._wait_until(lambda: time.time() > expiry, deadline)
                second = self._spawn(self.command(scenario, tmp),
                                     self.env(bucket, plain.endpoint, multipart, raw=raw,
                                              ttl_s=ttl), rec.dir / "second")
                if honoured and after == "takeover" and held:
                    self._wait_taken_over(bucket, held, second, deadline)
                elif honoured:
                    self._wait_until(lambda: second.poll() is not None, deadline)
                proxy.resume()
                paused_code = self._wait(victim, cap)
                t.paused_exits[paused_code] += 1
                if paused_code not in (0, 1):  # 1: it lost its lease (it says so)
                    rec.problems.append(f"paused run exit {paused_code}: "
                                        f"{_tail(rec.dir / 'paused')}")
                code = self._wait(second, cap)
                if code != 0:
                    rec.problems.append(f"second run exit {code}: {_tail(rec.dir / 'second')}")
                took = any(_log_has(rec.dir / "second", mark) for mark in TAKEOVER_MARKS)
                t.takeovers += took
                outcome = (f"paused ({proxy.paused_at}) holding {len(held)} leases"
                           f"{f', late file in {late_pid.state_key}' if late_pid else ''}; "
                           f"{'taken over' if took else 'no takeover'}; paused run exit "
                           f"{paused_code}")
            proxy.arm(None, None)
            leases, tmps = self._leftovers(bucket, tmp)
            self._rerun(rec, bucket, raw)
        assert ref is not None
        final = self.check_final(bucket, self.expected_lcd(scenario), tmp, ref)
        self._end(rec, reader, f"{outcome}; leftovers: {leases} leases, {tmps} temp dirs", final)

    def _leases_of(self, bucket: Bucket, pid: int) -> dict[str, LeaseRecord]:
        """The leases process `pid` holds (lock key -> its record), read now."""
        out = {}
        for key in bucket.keys(LOCKS_PREFIX):
            got = bucket.get(key)
            if got is None:
                continue
            try:
                record = LeaseRecord.from_bytes(got[0])
            except ValueError:
                continue
            if record.owner.pid == pid:
                out[key] = record
        return out

    def _check_ttl(self, rec: TrialRecord, held: dict[str, LeaseRecord], ttl: float) -> bool:
        """Whether the paused run's leases have the TTL the bench asked for."""
        for key, record in held.items():
            left = record.expires_at - time.time()
            if left > ttl + 5:
                rec.problems.append(f"QLC_LEASE_TTL_S={ttl:g} not honoured: the paused run's "
                                    f"lease {key} expires in {left:.0f}s")
                return False
        return True

    def _late_target(self, held: dict[str, LeaseRecord], path: str | None) -> PartitionId:
        """The partition the paused run was working on (its lease, or the request's path)."""
        for key in sorted(held):
            for pid in _pids():
                if key == pid.lock_key:
                    return pid
        found = None if path is None else _pid_of_key(path)
        return found if found is not None else self.found_rng.choice(_pids())

    def _wait_taken_over(self, bucket: Bucket, held: dict[str, LeaseRecord],
                         second: subprocess.Popen[bytes], deadline: float) -> None:
        def taken() -> bool:
            for key, record in held.items():
                got = bucket.get(key)
                if got is not None:
                    try:
                        if LeaseRecord.from_bytes(got[0]).token == record.token:
                            return False
                    except ValueError:
                        pass
            return True

        self._wait_until(lambda: second.poll() is not None or taken(), deadline)

    @staticmethod
    def _wait_until(done: Callable[[], bool], deadline: float) -> None:
        while not done() and time.monotonic() < deadline:
            time.sleep(0.1)

    # .. skew .....................................................................

    def skew_trial(self, n: int, proxy: KillingProxy, plain: S3Proxy) -> None:
        rng = self.rng
        t = self.totals
        scenario = self.draw_scenario("skew")
        multipart = rng.random() < 0.5
        skews = list(SKEWS)
        rng.shuffle(skews)
        rec = self._begin(n, "skew", scenario, f"{'multipart, ' if multipart else ''}clocks "
                          f"{skews[0]:+.0f}s / {skews[1]:+.0f}s")
        bucket = self.prepare(scenario)
        tmp = rec.dir / "tmp"
        before_state = self._attempts(bucket)
        before_meta = {k: bucket.etag(k) for k in bucket.keys("exchange=")
                       if k.endswith("/meta.json")}
        with Reader(bucket, rec.dir / "reader") as reader:
            runs = []
            for i, (skew, via) in enumerate(zip(skews, (proxy, plain), strict=True)):
                name = f"host-{'ab'[i]}"
                runs.append((name, self._spawn(
                    self.command(scenario, tmp, host=f"chaos-{name}"),
                    self.env(bucket, via.endpoint, multipart, skew_s=skew, host=f"chaos-{name}"),
                    rec.dir / name)))
            for name, proc in runs:
                code = self._wait(proc)
                t.skew_runs += 1
                if code != 0:
                    rec.problems.append(f"{name} exit {code}: {_tail(rec.dir / name)}")
                for mark in TAKEOVER_MARKS:
                    lines = _log_lines(rec.dir / name, mark)
                    t.stolen += len(lines)
                    rec.problems += [f"{name} took a live lease of the other run: {line}"
                                     for line in lines]
            requests = proxy.requests + plain.requests
            for what in ("data.parquet", "meta.json"):
                for skey, count in sorted(writes_of(requests, what).items()):
                    if count > 1:
                        t.compacted_twice += what == "data.parquet"
                        rec.problems.append(f"{skey}: {what} written {count} times by the two "
                                            "runs (compacted twice)")
            for key, etags in sorted(reader.meta_etags.items()):
                new = etags - {before_meta.get(key)}
                if len(new) > 1:
                    rec.problems.append(f"{key}: the reader saw {len(new)} meta.json versions "
                                        "published by the two runs")
            for skey, attempts in sorted(self._attempts(bucket).items()):
                if attempts > before_state.get(skey, 0) + 1:
                    rec.problems.append(f"state {skey}: {attempts} attempts after the two runs, "
                                        f"{before_state.get(skey, 0)} before")
            self._rerun(rec, bucket)
        final = self.check_final(bucket, self.expected_lcd(scenario), tmp)
        self._end(rec, reader, "both runs done", final)

    @staticmethod
    def _attempts(bucket: Bucket) -> dict[str, int]:
        got = bucket.get(STATE_KEY)
        if got is None:
            return {}
        entries = parse_document(got[0])["partitions"]
        return {k: int(v.get("attempts", 0)) for k, v in entries.items()}

    def _make_foreign_and_expired(self, bucket: Bucket, key: str) -> None:
        """Turn a dead run's lease into one of another host that expired a while ago."""
        got = bucket.get(key)
        if got is None:
            return
        doc = json.loads(got[0])
        doc["owner"]["host"] = "some-other-host"
        doc["expires_at"] = utc_iso(time.time() - 3600)
        bucket.put(key, json.dumps(doc).encode())
        self.totals.leases_made_foreign += 1

