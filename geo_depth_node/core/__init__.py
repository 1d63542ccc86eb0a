"""ROS-free algorithmic core: numpy/OpenCV/torch only, never rclpy or message types."""
