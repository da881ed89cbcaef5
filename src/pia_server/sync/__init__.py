"""The sync domain."""
