"""The trained modules speculative methods draft with, and their loaders: the Kangaroo adapter,
the Medusa heads (and their trees), the EAGLE head. Methods decode with them (methods/), trainers
fit them (train/); neither imports the other."""
