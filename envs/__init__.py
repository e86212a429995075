"""Text environments (TextWorld, Crafter, BIG-Bench Hard) behind one gymnasium API."""
