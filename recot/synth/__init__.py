"""Synthesis jobs: subjects planned from a split, candidate slates, rendered requests, the answer journal
(the content-addressed cache), parsing and Ray shards."""
