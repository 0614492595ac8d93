"""Test-only emulations of the platforms enclave-infer attests on: nothing here ships in the package.

- :mod:`.pseudofs`: fake Gramine ``/dev/attestation`` and configfs-tsm trees built from FIFOs.
"""
