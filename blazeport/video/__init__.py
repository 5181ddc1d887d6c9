"""Video: frames from files, cameras and streams, MediaPipe's tracking loop, smoothing and drawn videos."""
