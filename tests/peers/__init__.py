"""Real peers for the tests: shell scripts that start them, and the pytest glue around them."""
