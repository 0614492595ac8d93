"""Internal: the SDK and the owner's tooling, on the user's machine. Untrusted by the enclave, trusted
by its user; never imports the enclave. Users import :class:`enclave_infer.Client`."""
