"""The review page's routes, one module per resource: signing in and out, what a reviewer
reads, what a reviewer decides."""
