"""Stand-ins for hardware libraries; each mirrors the real library's API rather than mocking calls."""
