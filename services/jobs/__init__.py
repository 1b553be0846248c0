"""The jobs service: every long-running operation's state, leases, retries and history."""
