"""geo_depth_node: stereo depth with provenance and honest sigma (see README.md)."""
