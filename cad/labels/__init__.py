"""Labels: the label store (SQLite/PostgreSQL), the review service and the image archive."""
