"""A real `coreason serve` subprocess on 127.0.0.1, used as the remote oracle in tests."""
