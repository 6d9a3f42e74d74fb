"""The routes: Ollama and OpenAI APIs, /fleet, /healthz, /metrics, heartbeats, /v2."""
