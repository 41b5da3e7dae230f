"""Test infrastructure shared by tests, benchmarks and demos: KDC, test cell, relays."""
