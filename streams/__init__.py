"""The built-in streams. Every module here is a plugin, loaded at start."""
