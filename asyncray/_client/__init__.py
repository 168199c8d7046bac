"""The client core shared by the sync facade, the asyncio API, and workers."""
