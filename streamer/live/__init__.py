"""Live masks over ZeroMQ: the wire format (protocol) and the publisher (publish)."""
