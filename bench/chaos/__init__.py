"""Chaos bench: real runs of the job killed, paused past their lease or run on skewed clocks.

Usage (from the repository root, with the project's venv):

    python -m bench.chaos [--trials 50] [--seed 1] [-v] [--keep --work DIR]
                          [--faults kill,pause,skew] [--scenarios fresh,overwrite,pair]

It starts its own moto S3 server on 127.0.0.1 (tests/support/s3server.py), writes a small
raw lake (DAYS x PARTITIONS, collector-shaped, compressor/demo/) and makes a
reference compaction with one clean run. Then, per trial, in a fresh compact bucket,
one fault (kinds are dealt in blocks of five: kill, kill, kill, pause, skew, shuffled):

- ``kill``: SIGKILL, in one of three scenarios:
  - ``fresh``: a catch-up over every raw day, nothing compacted yet;
  - ``overwrite``: a backfill ``--overwrite`` over a bucket that already holds the
    reference outputs (exercises the replace order of data.parquet and meta.json);
  - ``pair``: two catch-up runs started together, one of them killed; the survivor
    must finish everything alone (same-host dead-pid lease takeover).
  The run is killed either after a random delay drawn over the duration of an
  unkilled run of the same scenario, or at the n-th S3 request of one kind (lease,
  state, raw GET, and the publish phase: meta.json delete, data.parquet upload,
  meta.json put), the request either applied or dropped. Some of the leases the
  dead run left are rewritten as leases of another host that already expired.
- ``pause``: SIGSTOP (``fresh`` or ``overwrite``), at a random moment or at the n-th
  S3 request of one kind, that request either applied at once or held at the proxy
  until the run is continued (so it lands after a takeover: "just before the
  data.parquet upload / meta.json put"). The runs get a short lease TTL
  (``QLC_LEASE_TTL_S``, --lease-ttl). A second run is started at once, waits for the
  paused run's lease to expire, takes it over and publishes; in most trials a late
  raw file is first added to the partition the paused run was working on, so the
  two runs hold different listings. The paused run is continued (SIGCONT) either as
  soon as its lease was taken over or once the second run is done; both finish.
- ``skew``: two runs started together, as two hosts (their own host names), with
  their clocks skewed by libfaketime (-300 s and +360 s). Neither may take over the
  other's live lease: no "took over lease" in their logs, no partition's
  data.parquet or meta.json written twice (counted at the proxies), no meta.json
  published twice (seen by the reader), no state entry with an extra attempt.

Each trial ends with a clean re-run (catch-up, or a backfill without --overwrite) in
the same tmp dir. Every job run talks to the store through a proxy
(tests/support/s3proxy.py) that sees each request and fires the kill or the pause; half the
trials upload data.parquet multipart.

While the runs work, a reader reads the compact bucket over and over: for every
visible meta.json, the data.parquet beside it must be the one it names (cheap check:
``data_etag`` and ``size_bytes`` against the data object's ETag and size) and, the
first time each meta.json version is seen (always, for a meta.json without
``data_etag``), its bytes must have the sha256, size and row count meta.json states
(deep check, compressor.meta.check_data_file). A writer may replace the pair between
the reader's GET of meta.json and its read of data.parquet, so a disagreement is an
*inconsistent pair* only when meta.json still has the same ETag after the data read.
``_state.json`` and every lock must parse. After the re-run: every data.parquet is
byte-identical to the reference (to a second reference with the late file, where one
was added), every meta.json agrees with it on everything but timings, every state
entry is success with the right rows, last_compacted_date is right, no lease is left
and no temp dir of a dead run remains; any difference is a *divergence*.

It prints counts per fault kind, the reader's counts, inconsistent pairs and
divergences (both must be 0), and exits 1 on any of them. With --keep, the work
directory stays, and with it every failing trial's logs (trial-NNN/<run>/stderr).
"""
