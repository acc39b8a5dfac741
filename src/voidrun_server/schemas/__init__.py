"""Wire models shared by the API and the CLI. Field names on the wire are camelCase."""
