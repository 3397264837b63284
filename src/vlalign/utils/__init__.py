"""Small shared utilities (atomic files, hashing, logging) used by every stage."""
