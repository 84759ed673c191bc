"""The stillroom proxy: OpenAI endpoints, capture, operations endpoints and the CLI."""
