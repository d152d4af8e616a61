"""A study: its grid of runs, and where they train (threads, Ray), then its results and report."""
