"""The reviewers' web page (``cad review-ui``): a gRPC client of the CAD server."""
