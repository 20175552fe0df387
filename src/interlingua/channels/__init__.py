"""Communication channels: how one model hands its internal state to another (soft tokens, KV caches)."""
