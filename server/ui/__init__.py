"""The web UI: a static bundle (`static/`) served next to the API; it reads and acts only through
`/graphql`."""
