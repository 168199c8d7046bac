"""Actors: class handles and method calls (client side), and the host that runs an instance."""
