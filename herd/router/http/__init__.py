"""The front door: the gunicorn worker, HTTP/1.1 head and body, deadlines, the peer."""
