"""The m3edge service: configuration, database, pipeline, API, command line."""
