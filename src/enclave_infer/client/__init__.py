"""Internal: the SDK and the owner's tooling, on the user's machine. Untrusted by the enclave, trusted
by its user; never imports the enclave. Users import :class:`enclave_infer.Client` and the rest of
``enclave_infer.__all__``; the modules here are private (underscore names), as httpx's are, except
the owner's model export tools."""
