"""Thin rclpy shell around the core: parameters, QoS, sync, conversions, publishing."""
