"""The head: membership, the cluster's resource view, the actor and name directory."""
