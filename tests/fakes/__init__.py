"""Fake external services the suite starts on 127.0.0.1, so the real client
libraries (openai, anthropic, ...) run against them over HTTP."""
