"""The e2ee domain."""
