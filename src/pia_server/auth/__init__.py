"""Accounts and authentication: users, OAuth/OIDC and local logins, JWT and refresh tokens."""
