"""Tests of `coreason serve`."""
