"""Training what the methods need (Kangaroo adapters, Medusa heads) on a frozen target."""
