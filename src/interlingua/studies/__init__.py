"""Studies: experiments built on the channels (study 2: K-V cache alignment)."""
