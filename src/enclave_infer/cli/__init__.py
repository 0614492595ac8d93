"""Internal: the ``enclave-infer`` command. Untrusted side: it never imports the enclave."""
