"""The CAD inference server: the gRPC transport (``rpc``: server, servicers, converters,
interceptors, auth) and the wiring of a server over the domain in :mod:`cad`."""
