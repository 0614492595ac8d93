"""Internal: untrusted client tooling, the measurements a release's enclaves will report."""
