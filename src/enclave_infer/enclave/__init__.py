"""Internal: the enclave process, the only code that sees keys, images and the model in plaintext.
Started by the host as ``python -m enclave_infer.enclave``, never imported by it."""
