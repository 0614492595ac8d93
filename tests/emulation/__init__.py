"""Test-only emulations of the platforms enclave-infer attests on: nothing here ships in the package.

- :mod:`.dcap`: an emulated Intel DCAP platform (a test root CA, PCK and TCB signing certificates,
  CRLs, TCB info, QE identity, SGX v3 and TDX v4/v5 quotes signed as real ones are);
- :mod:`.pccs`: a fake PCCS, a real HTTP server on loopback serving Intel PCS API v4 paths;
- :mod:`.pseudofs`: fake Gramine ``/dev/attestation`` and configfs-tsm trees built from FIFOs.
"""
