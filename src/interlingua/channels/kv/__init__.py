"""The KV channel: model-agnostic cache plumbing, rotary embedding, and cache translators."""
