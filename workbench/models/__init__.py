"""Models: where they come from (catalog), how they are named inside (adapter), how they load (loader)."""
