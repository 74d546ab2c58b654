"""A third-party env package, as a user would write one: it knows gymnasium, not agentropy."""
