"""Gongji (共济): the command line, the infrastructure launcher, audit, docs and load generator."""
