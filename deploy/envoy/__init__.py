"""The Envoy edge: its configuration, generated from the descriptor set (`generate`)."""
