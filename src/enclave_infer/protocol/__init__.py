"""Internal: the wire formats both sides speak (RFC 9292, RFC 9458 and its chunked draft, the
host-enclave frames, the signed manifest, and the inner API). Pure logic on bytes, no I/O."""
