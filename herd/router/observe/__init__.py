"""What the router records: access log, traces, Prometheus metrics, request tags."""
