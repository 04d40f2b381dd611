"""The gateway: the KServe v2 front door that routes each model to a backend sidecar."""
