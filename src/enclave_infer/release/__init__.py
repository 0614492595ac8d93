"""Internal: client-side release tooling. Untrusted: it never runs in the enclave and is not in the
trusted code base. It derives, from the released artifacts alone (the UKI, the firmware), the values a
verifier compares: the measured-boot events and registers a boot of the release records."""
