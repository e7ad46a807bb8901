"""openaifs: an OpenAI account's files as a directory (FUSE), and a local Files API server."""

__version__ = "0.1.0"
