"""Internal: evidence, its verifiers and the constraint language. Pure logic on bytes, used on
both sides of the boundary; users import what they need from :mod:`enclave_infer`."""
