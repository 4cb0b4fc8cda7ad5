"""The lossdsl grammar, kept at the top of the repository and installed as ``lossdsl.grammar``."""
