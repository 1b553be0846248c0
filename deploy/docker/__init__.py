"""The container image: its Dockerfile and entry point (`python -m deploy.docker.entrypoint`)."""
