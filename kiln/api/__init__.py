"""HTTP routers of Kiln's shell (tenants, users, tokens, audit, health)."""
