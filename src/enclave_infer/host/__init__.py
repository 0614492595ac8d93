"""Internal: the operator's HTTP host. Untrusted: it relays ciphertext, stores sealed blobs, and
starts the enclave process; it never imports the enclave."""
