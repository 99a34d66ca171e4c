"""stepaudio: audio reasoning with Step-Audio-R1 from the command line."""

__version__ = "0.1.0"
