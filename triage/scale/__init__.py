"""Archive scale: the cascade on a cluster (Ray Data, the `scale` extra), imported lazily."""
