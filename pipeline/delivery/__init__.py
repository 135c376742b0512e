"""What the build hands over: the report and the release archive."""
