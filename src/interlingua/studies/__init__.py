"""Studies: one subpackage per experiment built on the channels (study 2: kv_alignment)."""
