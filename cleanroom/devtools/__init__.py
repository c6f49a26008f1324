"""Development and demonstration tools, kept apart from the server.

Synthetic data with a known truth, the demo, the docker-compose roles and a throwaway certificate authority.
Nothing the server imports at runtime lives here. The demo's report needs matplotlib, which only the `demo` extra
installs (`pip install cleanroom[demo]`); the server's own install never pulls it.
"""
