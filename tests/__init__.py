"""The test suite: support/ holds the shared helpers, one folder per area holds the tests."""
