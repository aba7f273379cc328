"""The transport: the gRPC server, servicers, protobuf converters, the interceptor, authorisation and the container health probe."""
