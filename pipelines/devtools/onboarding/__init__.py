"""`pipelines init`: a model folder from a user's own data file in one command."""
