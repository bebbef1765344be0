"""The Dash console, mounted into the same server as the API."""
