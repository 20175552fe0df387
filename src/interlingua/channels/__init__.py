"""Communication channels between models: how one model's internal state reaches another."""
