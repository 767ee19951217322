"""The trained modules speculative methods draft with, and their loaders: the Kangaroo adapter,
the Medusa and Hydra heads (and their trees), the EAGLE and EAGLE-3 heads, REST's datastore.
Methods decode with them (methods/), trainers fit them (train/); neither imports the other."""
