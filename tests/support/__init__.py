"""Test support shared by the tests and the benches: real servers and a fault proxy.

`s3server` starts a moto S3 server in its own process, `rgwserver` a real Ceph RADOS
Gateway, `s3proxy` a counting, fault-injecting HTTP proxy in front of either. They
need the standard library, moto, boto3 and the Ceph binaries only: no pytest and no
fixtures (those are in tests/conftest.py), so `bench/` imports them as they are.
"""
