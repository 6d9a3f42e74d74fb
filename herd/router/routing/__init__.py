"""Choosing and reaching a node: scoring, queues, upstream client, retries, relay."""
