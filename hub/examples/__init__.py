"""Complete example apps, runnable as they are (see the README)."""
