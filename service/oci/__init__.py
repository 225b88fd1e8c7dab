"""Pulling and pushing model bundles as OCI artifacts (SPEC section 12)."""
