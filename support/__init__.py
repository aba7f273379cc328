"""What the tests and the benchmarks both start for real: a throwaway PostgreSQL, Orthanc, tiny
published models and server settings. Neither imports the other; both import this."""
