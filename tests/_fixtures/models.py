"""Model fixtures: a tiny random Llama for fast tests, the real SmolLM2 for integration."""
