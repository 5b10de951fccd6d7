"""The security regression suite: one test per finding of issue 15 (docs/security.md)."""
