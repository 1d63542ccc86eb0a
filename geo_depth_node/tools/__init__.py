"""Offline tools behind the geo-depth CLI (scene bags, demo, pictures)."""
