"""Test-only emulations of the platforms enclave-infer attests on: nothing here ships in the package.

- :mod:`.dcap`: an emulated Intel DCAP platform (a test root CA, PCK and TCB signing certificates,
  CRLs, TCB info, QE identity, SGX v3 and TDX v4/v5 quotes signed as real ones are);
- :mod:`.pccs`: a fake PCCS, a real HTTP server on loopback serving Intel PCS API v4 paths;
- :mod:`.snp`: an emulated AMD SEV-SNP chip (a test ARK and ASK, a VCEK with AMD's extensions,
  version-3 attestation reports signed by it, and Azure HCL reports that wrap one);
- :mod:`.swtpm`: not an emulation but a real TPM 2.0 emulator process (swtpm) on loopback, with
  tpm2-tools aimed at it;
- :mod:`.kds`: a fake AMD KDS, a real HTTP server on loopback serving the VCEK and its chain;
- :mod:`.pseudofs`: fake Gramine ``/dev/attestation`` and configfs-tsm trees built from FIFOs;
- :mod:`.uki`: small, valid PE32+ images and a unified kernel image (UKI) made of them;
- :mod:`.ccel`: a TDX trust domain booting a UKI: the CC event log TDVF and the UKI's loaders would
  write, and the RTMRs it replays to (for :mod:`.dcap`'s TDX quotes);
- :mod:`.run_enclave`, :mod:`.run_host`: launchers that start the enclave process on a fake tree
  and the host under test roots as separate processes (``tests/e2e/test_hardware_paths.py``).
"""
